//! `/dashboard/api/…`: the JSON the dashboard needs beyond the core/v2 API — counts by state,
//! events sorted by severity with server-side filters and pages, entity health, the actions the
//! caller may take, and event detail with its matching silences.
//!
//! Every endpoint authenticates exactly as core/v2 does ([`api::auth::authenticate`]: bearer
//! JWT or API key) and asks the same RBAC decision ([`AppState::caller_can`]) for the verb and
//! resource the equivalent core/v2 request would need: an overview or event page is a `list`
//! of `events` in the namespace, entity pages a `list` of `entities`, an event detail a `get`.
//! So the dashboard never shows what the API would refuse.

use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kensa_types::selector::Selector;
use kensa_types::Kind;
use serde::Deserialize;
use serde_json::{json, Value};

use super::index::{Bucket, EventQuery, EventSummary, Problem};
use super::Dashboard;
use crate::api::{self, now_unix, ApiError, ApiResult, AppState};
use crate::auth::rbac::Request as RbacRequest;
use crate::auth::Caller;

/// Rows per page unless asked otherwise, and the most a page may hold.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// Problems shown on the overview.
const OVERVIEW_PROBLEMS: usize = 25;

/// How long a request waits for the index's first load before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for the index to catch up with the store's latest write, so that
/// a user reads their own writes (a silence they just created shows at once). Past that — the
/// follower is behind a burst of writes — the answer is a little stale rather than late.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(2);

/// Authenticates the request as core/v2 does.
pub async fn caller(state: &AppState, headers: &HeaderMap) -> ApiResult<Caller> {
    api::auth::authenticate(state, headers).await
}

/// The RBAC decision core/v2 makes for `verb` on `kind` in `namespace`, with its message.
pub fn authorize(
    state: &AppState,
    caller: &Caller,
    verb: &str,
    kind: Kind,
    namespace: &str,
    name: Option<&str>,
) -> ApiResult<()> {
    let wanted = RbacRequest {
        verb,
        resource: kind.resource(),
        namespace: Some(namespace),
        name,
    };
    if state.caller_can(caller, &wanted) {
        return Ok(());
    }
    state.telemetry.rbac_denials.inc();
    Err(ApiError::forbidden(format!(
        "user {:?} is not allowed to {verb} {} in namespace {namespace:?}",
        caller.username,
        kind.resource()
    )))
}

pub(super) fn require_namespace(state: &AppState, namespace: &str) -> ApiResult<()> {
    if namespace.is_empty() {
        return Err(ApiError::bad_request("namespace: must be given"));
    }
    api::crud::require_namespace(state, namespace)
}

/// Authenticates, authorizes `verb` on `kind` in `namespace`, checks the namespace exists and
/// that the index has loaded.
async fn admit(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    verb: &str,
    kind: Kind,
    namespace: &str,
) -> ApiResult<Caller> {
    let caller = caller(&dashboard.app, headers).await?;
    if namespace.is_empty() {
        return Err(ApiError::bad_request("namespace: must be given"));
    }
    authorize(&dashboard.app, &caller, verb, kind, namespace, None)?;
    require_namespace(&dashboard.app, namespace)?;
    catch_up(dashboard).await?;
    Ok(caller)
}

/// Waits for the index's first load (503 past [`READY_TIMEOUT`]) and for it to reflect the
/// store's latest write (see [`CATCH_UP_TIMEOUT`]).
async fn catch_up(dashboard: &Dashboard) -> ApiResult<()> {
    if !dashboard.index.wait_ready(READY_TIMEOUT).await {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            api::error::Code::Internal,
            "the dashboard index is still loading; try again",
        ));
    }
    let latest = dashboard.app.store.revision().await?;
    dashboard.index.wait_for(latest, CATCH_UP_TIMEOUT).await;
    Ok(())
}

/// Adds `Server-Timing: app;dur=<ms>` (what the benchmark reads as server time).
pub async fn server_timing(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={millis:.2}")) {
        response.headers_mut().insert("server-timing", value);
    }
    response
}

pub(super) fn respond(result: ApiResult<Value>) -> Response {
    match result {
        Ok(body) => {
            let mut response = Json(body).into_response();
            response.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(err) => err.into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct NamespaceParam {
    #[serde(default)]
    pub namespace: String,
}

/// `GET /dashboard/api/overview?namespace=`: counts by state, the worst problems first, entity
/// totals, and the counts of every other namespace the caller may list events in.
pub async fn overview(
    State(dashboard): State<Dashboard>,
    Query(params): Query<NamespaceParam>,
    headers: HeaderMap,
) -> Response {
    respond(overview_inner(&dashboard, &params.namespace, &headers).await)
}

async fn overview_inner(
    dashboard: &Dashboard,
    namespace: &str,
    headers: &HeaderMap,
) -> ApiResult<Value> {
    let caller = admit(dashboard, headers, "list", Kind::Event, namespace).await?;
    let now = now_unix();
    let problems_query = EventQuery {
        buckets: vec![Bucket::Critical, Bucket::Warning, Bucket::Unknown],
        ..Default::default()
    };
    let may_list_entities = dashboard.app.caller_can(
        &caller,
        &RbacRequest {
            verb: "list",
            resource: Kind::Entity.resource(),
            namespace: Some(namespace),
            name: None,
        },
    );
    let (revision, counts, problems, entities) = dashboard.index.read(namespace, |index| {
        let entities = may_list_entities.then(|| {
            let agents = index
                .entities
                .values()
                .filter(|e| e.entity_class == "agent")
                .count();
            json!({"total": index.entities.len(), "agents": agents, "proxies": index.entities.len() - agents})
        });
        (
            index.revision,
            index.counts(now),
            index.events(&problems_query, 0, OVERVIEW_PROBLEMS, now),
            entities,
        )
    });
    let mut others = Vec::new();
    for ns in dashboard.app.view.list("namespaces", Some("")) {
        let Some(name) = ns["name"].as_str() else {
            continue;
        };
        if name == namespace
            || !dashboard.app.caller_can(
                &caller,
                &RbacRequest {
                    verb: "list",
                    resource: Kind::Event.resource(),
                    namespace: Some(name),
                    name: None,
                },
            )
        {
            continue;
        }
        let counts = dashboard.index.read(name, |index| index.counts(now));
        others.push(json!({"name": name, "counts": counts}));
    }
    Ok(json!({
        "namespace": namespace,
        "revision": revision,
        "generated_at": now,
        "counts": counts,
        "problems": problems,
        "entities": entities,
        "other_namespaces": others,
    }))
}

#[derive(Debug, Deserialize)]
pub struct EventsParams {
    #[serde(default)]
    pub namespace: String,
    /// Comma-separated: critical, warning, unknown, ok, silenced, flapping, problem.
    pub status: Option<String>,
    pub entity: Option<String>,
    pub check: Option<String>,
    pub subscription: Option<String>,
    /// A label selector (`region == eu && tier in [web, db]`) or the shorthand `key=value`.
    pub label: Option<String>,
    /// Free text, matched in entity, check and output.
    pub q: Option<String>,
    /// `keepalive`, `missed_round` or `check`.
    pub problem: Option<String>,
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Parses the events page's filters; the error names the parameter.
pub fn event_query(params: &EventsParams) -> ApiResult<EventQuery> {
    let mut query = EventQuery::default();
    for word in given(&params.status)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        match word {
            "flapping" => query.flapping = true,
            "problem" | "problems" => {
                query
                    .buckets
                    .extend([Bucket::Critical, Bucket::Warning, Bucket::Unknown]);
            }
            other => query.buckets.push(Bucket::parse(other).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "status: unknown state {other:?} (critical, warning, unknown, ok, silenced, flapping, problem)"
                ))
            })?),
        }
    }
    query.entity = given(&params.entity);
    query.check = given(&params.check);
    query.subscription = given(&params.subscription);
    query.text = given(&params.q).map(|q| q.to_lowercase());
    if let Some(problem) = given(&params.problem) {
        query.problem = Some(Problem::parse(&problem).ok_or_else(|| {
            ApiError::bad_request(format!(
                "problem: unknown kind {problem:?} (keepalive, missed_round, check)"
            ))
        })?);
    }
    if let Some(label) = given(&params.label) {
        query.labels = Some(label_selector(&label)?);
    }
    Ok(query)
}

/// A label selector in the API's language, or the shorthand `key=value` people type.
pub fn label_selector(input: &str) -> ApiResult<Selector> {
    let has_operator = ["==", "!=", " in ", " notin ", " matches "]
        .iter()
        .any(|op| input.contains(op));
    let text = match input.split_once('=') {
        Some((key, value)) if !has_operator => {
            let value = value.trim().replace('\\', "\\\\").replace('"', "\\\"");
            format!("{} == \"{value}\"", key.trim())
        }
        _ => input.to_owned(),
    };
    Selector::parse_labels(&text, Kind::Event.field_prefix())
        .map_err(|err| ApiError::bad_request(format!("label: {err}")))
}

fn page_bounds(offset: Option<usize>, limit: Option<usize>) -> (usize, usize) {
    let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    (offset.unwrap_or(0), limit)
}

/// `GET /dashboard/api/events?namespace=&status=&entity=&check=&subscription=&label=&q=
/// &offset=&limit=`: one page of events, worst first.
pub async fn events(
    State(dashboard): State<Dashboard>,
    Query(params): Query<EventsParams>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        admit(&dashboard, &headers, "list", Kind::Event, &params.namespace).await?;
        let query = event_query(&params)?;
        let (offset, limit) = page_bounds(params.offset, params.limit);
        let now = now_unix();
        let (revision, page) = dashboard.index.read(&params.namespace, |index| {
            (index.revision, index.events(&query, offset, limit, now))
        });
        Ok(json!({
            "namespace": params.namespace,
            "revision": revision,
            "limit": limit,
            "total": page.total,
            "offset": page.offset,
            "items": page.items,
        }))
    }
    .await;
    respond(result)
}

#[derive(Debug, Deserialize)]
pub struct EventParams {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub entity: String,
    #[serde(default)]
    pub check: String,
}

/// `GET /dashboard/api/event?namespace=&entity=&check=`: the whole event (redacted as the API
/// shows it), whether it is silenced and by which silences.
pub async fn event(
    State(dashboard): State<Dashboard>,
    Query(params): Query<EventParams>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = caller(&dashboard.app, &headers).await?;
        let name = format!("{}/{}", params.entity, params.check);
        if params.namespace.is_empty() {
            return Err(ApiError::bad_request("namespace: must be given"));
        }
        authorize(
            &dashboard.app,
            &caller,
            "get",
            Kind::Event,
            &params.namespace,
            Some(&name),
        )?;
        let stored = dashboard
            .app
            .store
            .get(&api::crud::key(Kind::Event, &params.namespace, &name))
            .await?
            .ok_or_else(|| ApiError::not_found("not found"))?;
        catch_up(&dashboard).await?;
        let event = api::crud::present(Kind::Event, stored.value);
        let summary = EventSummary::from_value(event.clone())
            .ok_or_else(|| ApiError::internal("stored event has no entity or check"))?;
        let now = now_unix();
        let silences = dashboard.index.read(&params.namespace, |index| {
            index.matching_silences(&summary, now)
        });
        let silenced = !silences.is_empty();
        Ok(json!({
            "event": event,
            "severity": summary.severity(),
            "bucket": summary.bucket(silenced),
            "silenced": silenced,
            "silences": silences,
            "problem": summary.problem,
            "since": summary.since,
            // What the pipelines did with the last result this backend processed (kept in
            // memory by pipelined; empty after a restart or on another backend).
            "handler_outcomes": dashboard.app.outcomes.get(&params.namespace, &name),
        }))
    }
    .await;
    respond(result)
}

#[derive(Debug, Deserialize)]
pub struct EntitiesParams {
    #[serde(default)]
    pub namespace: String,
    pub q: Option<String>,
    pub class: Option<String>,
    pub subscription: Option<String>,
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

/// `GET /dashboard/api/entities?namespace=&q=&class=&subscription=&offset=&limit=`: a page of
/// entities by name, each with the worst state of its events.
pub async fn entities(
    State(dashboard): State<Dashboard>,
    Query(params): Query<EntitiesParams>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = admit(
            &dashboard,
            &headers,
            "list",
            Kind::Entity,
            &params.namespace,
        )
        .await?;
        let may_list_events = dashboard.app.caller_can(
            &caller,
            &RbacRequest {
                verb: "list",
                resource: Kind::Event.resource(),
                namespace: Some(&params.namespace),
                name: None,
            },
        );
        let (offset, limit) = page_bounds(params.offset, params.limit);
        let text = given(&params.q).map(|q| q.to_lowercase());
        let class = given(&params.class);
        let subscription = given(&params.subscription);
        let now = now_unix();
        let (revision, total, items) = dashboard.index.read(&params.namespace, |index| {
            let page = index.entities(
                text.as_deref(),
                class.as_deref(),
                subscription.as_deref(),
                offset,
                limit,
            );
            let items: Vec<Value> = page
                .items
                .iter()
                .map(|entity| {
                    let mut item = json!(entity);
                    if may_list_events {
                        let (worst, count) = index.entity_health(&entity.name, now);
                        item["worst"] = json!(worst);
                        item["events"] = json!(count);
                    }
                    item
                })
                .collect();
            (index.revision, page.total, items)
        });
        Ok(json!({
            "namespace": params.namespace,
            "revision": revision,
            "limit": limit,
            "offset": offset,
            "total": total,
            "items": items,
        }))
    }
    .await;
    respond(result)
}

/// The actions the dashboard offers, each with the RBAC request its core/v2 call needs.
const ACTIONS: [(&str, &str, Kind); 6] = [
    // PUT …/events/{entity}/{check} with status 0.
    ("resolve_events", "update", Kind::Event),
    ("delete_events", "delete", Kind::Event),
    ("create_silences", "create", Kind::Silenced),
    ("delete_silences", "delete", Kind::Silenced),
    // POST …/checks/{name}/execute.
    ("execute_checks", "create", Kind::CheckConfig),
    ("delete_entities", "delete", Kind::Entity),
];

/// `GET /dashboard/api/permissions?namespace=`: which action buttons to show. The API still
/// decides every action; this only keeps buttons that would fail off the page.
pub async fn permissions(
    State(dashboard): State<Dashboard>,
    Query(params): Query<NamespaceParam>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let caller = caller(&dashboard.app, &headers).await?;
        require_namespace(&dashboard.app, &params.namespace)?;
        let mut can = serde_json::Map::new();
        for (action, verb, kind) in ACTIONS {
            let allowed = dashboard.app.caller_can(
                &caller,
                &RbacRequest {
                    verb,
                    resource: kind.resource(),
                    namespace: Some(&params.namespace),
                    name: None,
                },
            );
            can.insert(action.to_owned(), Value::Bool(allowed));
        }
        Ok(json!({"namespace": params.namespace, "username": caller.username, "can": can}))
    }
    .await;
    respond(result)
}

/// Used by the stream endpoint: authenticate and authorize listing events in `namespace`.
pub async fn admit_stream(
    dashboard: &Dashboard,
    headers: &HeaderMap,
    namespace: &str,
) -> ApiResult<Caller> {
    admit(dashboard, headers, "list", Kind::Event, namespace).await
}

/// When the caller's access token expires (`None` for API keys, which do not).
pub fn token_expiry(state: &AppState, headers: &HeaderMap) -> Option<i64> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    crate::auth::jwt::verify(token.trim(), &state.jwt_secret, now_unix(), false)
        .ok()
        .map(|claims| claims.exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(status: &str, label: &str) -> EventsParams {
        EventsParams {
            namespace: "default".into(),
            status: Some(status.into()),
            entity: None,
            check: None,
            subscription: None,
            label: Some(label.into()),
            q: Some("  Disk Full ".into()),
            problem: None,
            offset: None,
            limit: None,
        }
    }

    #[test]
    fn filters_parse_with_named_errors() {
        let query = event_query(&params("critical, problem,flapping", "region=eu-west")).unwrap();
        assert_eq!(
            query.buckets,
            vec![
                Bucket::Critical,
                Bucket::Critical,
                Bucket::Warning,
                Bucket::Unknown
            ]
        );
        assert!(query.flapping);
        assert_eq!(query.text.as_deref(), Some("disk full"));
        let fields = vec![("event.labels.region".to_owned(), "eu-west".to_owned())];
        assert!(query.labels.as_ref().unwrap().matches(&fields));

        let cases = [
            ("bad", "", "status: unknown state \"bad\""),
            ("", "region ==", "label: "),
        ];
        for (status, label, message) in cases {
            let err = event_query(&params(status, label)).unwrap_err();
            assert!(err.message.starts_with(message), "{}", err.message);
        }
    }

    #[test]
    fn label_shorthand_and_selectors_mean_the_same() {
        let fields = vec![
            ("event.labels.tier".to_owned(), "web".to_owned()),
            ("event.labels.region".to_owned(), "eu".to_owned()),
        ];
        let cases = [
            ("tier=web", true),
            ("tier = db", false),
            ("tier == web", true),
            ("tier in [db, web] && region != us", true),
            ("region matches e", true),
        ];
        for (input, expected) in cases {
            assert_eq!(
                label_selector(input).unwrap().matches(&fields),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn pages_are_bounded() {
        assert_eq!(page_bounds(None, None), (0, DEFAULT_PAGE));
        assert_eq!(page_bounds(Some(100), Some(0)), (100, 1));
        assert_eq!(page_bounds(None, Some(100_000)), (0, MAX_PAGE));
    }
}
