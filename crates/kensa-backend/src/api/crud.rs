//! Generic create/replace/get/list/patch/delete for any kind whose name lives in
//! `metadata.name`, and the pieces the kind-specific handlers reuse: metadata agreement with
//! the URL, normalization, ETags, JSON merge patch, and streamed, paginated listings.

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use kensa_store::{Key, ListQuery, Precondition, StoreError, Stored};
use kensa_types::Kind;
use serde_json::{Map, Value};

use super::route::{ApiRequest, Query};
use super::{created, etag, no_content, parse_json, read_body, ApiError, ApiResult, AppState};
use crate::auth::Caller;

/// How a kind's stored value is shown to API clients (users lose their password hash,
/// entities and events their sensitive label values).
pub type Present = fn(Kind, Value) -> Value;

pub fn present(kind: Kind, mut value: Value) -> Value {
    // Stored values keep sensitive label values; every API read redacts them.
    kind.redact(&mut value);
    if kind == Kind::User {
        if let Some(object) = value.as_object_mut() {
            object.remove("password");
            object.remove("password_hash");
        }
    }
    value
}

pub fn key(kind: Kind, namespace: &str, name: &str) -> Key {
    Key::new(kind.resource(), namespace, name)
}

/// The namespace a namespaced route writes into must exist.
pub fn require_namespace(state: &AppState, namespace: &str) -> ApiResult<()> {
    if state
        .view
        .get(&Key::new("namespaces", "", namespace))
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "namespace {namespace:?} does not exist"
        )));
    }
    Ok(())
}

/// Fills the body's metadata from the URL where it is empty, refuses disagreement, sets
/// `created_by`, and returns the body normalized (defaults filled, validated).
pub fn prepare_metadata_body(
    kind: Kind,
    mut body: Value,
    url_namespace: &str,
    url_name: Option<&str>,
    caller: &Caller,
) -> ApiResult<Value> {
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    let meta = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if meta.is_null() {
        *meta = Value::Object(Map::new());
    }
    let Some(meta) = meta.as_object_mut() else {
        return Err(ApiError::bad_request(
            "resource is invalid: metadata: must be an object",
        ));
    };
    agree(meta, "namespace", url_namespace)?;
    if let Some(url_name) = url_name {
        agree(meta, "name", url_name)?;
    }
    meta.insert(
        "created_by".to_owned(),
        Value::String(caller.username.clone()),
    );
    let value = kind.normalize(body)?;
    validate_javascript(kind, &value)?;
    Ok(value)
}

/// Rejects JavaScript that does not parse — filter expressions, asset filters, proxy entity
/// attributes, JavaScript mutators — when the resource is written, naming the field and the
/// position, instead of failing on every event later.
pub fn validate_javascript(kind: Kind, value: &Value) -> ApiResult<()> {
    let strings = |v: &Value, field: &str| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, e)| e.as_str().map(|e| (format!("{field}[{i}]"), e.to_owned())))
            .collect()
    };
    let expressions = match kind {
        Kind::EventFilter => strings(&value["expressions"], "expressions"),
        Kind::CheckConfig => strings(
            &value["proxy_requests"]["entity_attributes"],
            "proxy_requests.entity_attributes",
        ),
        Kind::Asset => {
            let mut all = strings(&value["filters"], "filters");
            for (b, build) in value["builds"].as_array().into_iter().flatten().enumerate() {
                all.extend(strings(&build["filters"], &format!("builds[{b}].filters")));
            }
            all
        }
        Kind::Mutator if value["type"] == "javascript" => {
            let eval = value["eval"].as_str().unwrap_or_default();
            return kensa_eval::validate_mutator(eval)
                .map_err(|err| ApiError::bad_request(format!("resource is invalid: eval: {err}")));
        }
        _ => return Ok(()),
    };
    for (field, expression) in expressions {
        kensa_eval::validate_expression(&expression)
            .map_err(|err| ApiError::bad_request(format!("resource is invalid: {field}: {err}")))?;
    }
    Ok(())
}

/// Sets `meta[field]` to the URL's value when empty; errors when it differs (Sensu's message).
pub fn agree(meta: &mut Map<String, Value>, field: &str, url_value: &str) -> ApiResult<()> {
    match meta.get(field).and_then(Value::as_str).unwrap_or_default() {
        "" => {
            if !url_value.is_empty() {
                meta.insert(field.to_owned(), Value::String(url_value.to_owned()));
            }
            Ok(())
        }
        body_value if body_value == url_value => Ok(()),
        body_value => Err(ApiError::bad_request(format!(
            "the {field} of the resource ({body_value}) does not match the {field} of the URI ({url_value})"
        ))),
    }
}

/// Writes `value` and waits until the config view has it, so the caller reads its own write.
pub async fn write(
    state: &AppState,
    key: &Key,
    value: &Value,
    precondition: Precondition,
) -> ApiResult<i64> {
    // A revision conflict becomes 412 through `From<StoreError>`.
    let revision = state.store.put(key, value, precondition).await?;
    state.view.wait_for(revision).await;
    Ok(revision)
}

pub async fn create(state: &AppState, key: &Key, value: &Value) -> ApiResult<i64> {
    let revision = state.store.create(key, value).await?;
    state.view.wait_for(revision).await;
    Ok(revision)
}

pub async fn fetch(state: &AppState, key: &Key) -> ApiResult<Stored> {
    state
        .store
        .get(key)
        .await?
        .ok_or_else(|| ApiError::not_found("not found"))
}

/// Deletes and waits until the config view no longer has it, so a revoked API key or a
/// deleted binding stops working before the client hears 204.
pub async fn remove(state: &AppState, key: &Key, precondition: Precondition) -> ApiResult<()> {
    state.store.delete(key, precondition).await?;
    state.view.wait_for(state.store.revision().await?).await;
    Ok(())
}

/// Read-modify-write of one stored resource: `change` is applied to the stored value, the
/// result re-validated and written only if nobody wrote in between (retried a few times).
pub async fn update(
    state: &AppState,
    kind: Kind,
    key: &Key,
    change: impl Fn(&mut Value) -> ApiResult<()>,
) -> ApiResult<()> {
    for _ in 0..5 {
        let stored = fetch(state, key).await?;
        let mut value = stored.value;
        change(&mut value)?;
        let value = kind.normalize(value)?;
        match state
            .store
            .put(key, &value, Precondition::Revision(stored.revision))
            .await
        {
            Ok(revision) => {
                state.view.wait_for(revision).await;
                return Ok(());
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(ApiError::conflict(format!(
        "{key} is being changed concurrently; try again"
    )))
}

/// `200` with the resource and its ETag.
pub fn single(kind: Kind, stored: Stored) -> Response {
    let mut response = axum::Json(present(kind, stored.value)).into_response();
    if let Ok(tag) = HeaderValue::from_str(&etag(stored.revision)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let object = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Checks a PATCH request's content type: merge patch (or none) only.
pub fn check_patch_content_type(request: &ApiRequest) -> ApiResult<()> {
    let content_type = request
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "" | "application/merge-patch+json" | "application/json" => Ok(()),
        "application/json-patch+json" => {
            Err(ApiError::bad_request("JSON Patch is not supported yet"))
        }
        other => Err(ApiError::bad_request(format!(
            "unsupported PATCH content type {other:?}; use application/merge-patch+json"
        ))),
    }
}

/// The generic handler for kinds named by `metadata.name`.
pub async fn handle(state: &AppState, request: ApiRequest) -> ApiResult<Response> {
    let kind = request.route.kind;
    let namespace = request.route.namespace.clone().unwrap_or_default();
    if !request.route.sub.is_empty() {
        return Err(ApiError::not_found("not found"));
    }
    match (&request.method, request.route.name.clone()) {
        (&Method::GET, None) => {
            let listing_namespace = request
                .route
                .namespace
                .clone()
                .or_else(|| (!kind.is_namespaced()).then(String::new));
            list(
                state,
                kind,
                listing_namespace,
                None,
                &request.query,
                present,
            )
            .await
        }
        (&Method::GET, Some(name)) => Ok(single(
            kind,
            fetch(state, &key(kind, &namespace, &name)).await?,
        )),
        (&Method::POST, None) => {
            let body = parse_json(&read_body(state, request.body).await?)?;
            if kind.is_namespaced() {
                require_namespace(state, &namespace)?;
            }
            let value = prepare_metadata_body(kind, body, &namespace, None, &request.caller)?;
            let name = kind.name_of(&value).ok_or_else(|| {
                ApiError::bad_request("resource is invalid: metadata.name: must not be empty")
            })?;
            create(state, &key(kind, &namespace, &name), &value).await?;
            Ok(created())
        }
        (&Method::PUT, Some(name)) => {
            let precondition = super::if_match(&request.headers)?.unwrap_or(Precondition::None);
            let body = parse_json(&read_body(state, request.body).await?)?;
            if kind.is_namespaced() {
                require_namespace(state, &namespace)?;
            }
            let value =
                prepare_metadata_body(kind, body, &namespace, Some(&name), &request.caller)?;
            let key = key(kind, &namespace, &name);
            if request.headers.contains_key(header::IF_NONE_MATCH) {
                let current = state.store.get(&key).await?.map(|s| s.revision);
                super::check_if_none_match(&request.headers, current)?;
            }
            write(state, &key, &value, precondition).await?;
            Ok(created())
        }
        (&Method::PATCH, Some(name)) => {
            let key = key(kind, &namespace, &name);
            patch(state, request, key, |value, caller| {
                prepare_metadata_body(kind, value, &namespace, Some(&name), caller)
            })
            .await
        }
        (&Method::DELETE, Some(name)) => {
            let precondition = super::if_match(&request.headers)?.unwrap_or(Precondition::None);
            remove(state, &key(kind, &namespace, &name), precondition).await?;
            Ok(no_content())
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// PATCH: merge the body into the stored value, re-validate with `prepare`, and write it back
/// only if nobody wrote in between (retrying our own read-modify-write a few times; a client's
/// `If-Match` that no longer matches is a 412).
pub async fn patch(
    state: &AppState,
    request: ApiRequest,
    key: Key,
    prepare: impl Fn(Value, &Caller) -> ApiResult<Value>,
) -> ApiResult<Response> {
    check_patch_content_type(&request)?;
    let client_precondition = super::if_match(&request.headers)?;
    let patch_body = parse_json(&read_body(state, request.body).await?)?;
    if !patch_body.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    for _attempt in 0..5 {
        let stored = fetch(state, &key).await?;
        if let Some(Precondition::Revision(expected)) = client_precondition {
            if expected != stored.revision {
                return Err(ApiError::precondition_failed(
                    "the resource was changed since the given ETag",
                ));
            }
        }
        super::check_if_none_match(&request.headers, Some(stored.revision))?;
        let mut value = stored.value.clone();
        merge_patch(&mut value, &patch_body);
        let value = prepare(value, &request.caller)?;
        match state
            .store
            .put(&key, &value, Precondition::Revision(stored.revision))
            .await
        {
            Ok(revision) => {
                state.view.wait_for(revision).await;
                let mut response = axum::Json(present(kind_of_key(&key), value)).into_response();
                if let Ok(tag) = HeaderValue::from_str(&etag(revision)) {
                    response.headers_mut().insert(header::ETAG, tag);
                }
                return Ok(response);
            }
            Err(StoreError::Conflict(_)) if client_precondition.is_none() => continue,
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::precondition_failed(
                    "the resource was changed since the given ETag",
                ))
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        super::error::Code::Internal,
        "too many concurrent writers; try again",
    ))
}

fn kind_of_key(key: &Key) -> Kind {
    Kind::from_resource(&key.kind).expect("api keys are built from kinds")
}

/// A filter applied to listed values (selectors, expired silences, visible namespaces).
pub type ItemFilter = Box<dyn Fn(&Value) -> bool + Send + Sync>;

/// Lists `kind` (in `namespace`, or everywhere when `None`), honouring `limit`/`continue`
/// and the label/field selectors. With a limit, one page and a `Sensu-Continue` header; without,
/// the whole listing is streamed page by page from the store, never held in memory.
pub async fn list(
    state: &AppState,
    kind: Kind,
    namespace: Option<String>,
    name_prefix: Option<String>,
    query: &Query,
    present: Present,
) -> ApiResult<Response> {
    list_filtered(state, kind, namespace, name_prefix, query, present, None).await
}

pub async fn list_filtered(
    state: &AppState,
    kind: Kind,
    namespace: Option<String>,
    name_prefix: Option<String>,
    query: &Query,
    present: Present,
    extra_filter: Option<ItemFilter>,
) -> ApiResult<Response> {
    let selector = super::special::compile_selectors(kind, query)?;
    let filter: Option<ItemFilter> = match (selector, extra_filter) {
        (None, None) => None,
        (Some(s), None) => Some(s),
        (None, Some(f)) => Some(f),
        (Some(s), Some(f)) => Some(Box::new(move |v: &Value| s(v) && f(v))),
    };
    let base = ListQuery {
        kind: kind.resource().to_owned(),
        namespace,
        name_prefix,
        limit: 0,
        continue_token: query.continue_token.clone(),
    };
    if query.limit > 0 {
        return limited_page(state, kind, base, query.limit, present, filter.as_deref()).await;
    }
    // The first page is read now so that a bad continue token is a clean 400, not a cut stream.
    let first = state
        .store
        .list(&ListQuery {
            limit: STREAM_PAGE,
            ..base.clone()
        })
        .await?;
    let stream = futures::stream::unfold(
        StreamState {
            store: state.store.clone(),
            pending: Some(first),
            query: ListQuery {
                limit: STREAM_PAGE,
                ..base
            },
            filter,
            wrote_any: false,
            opened: false,
            finished: false,
        },
        move |mut st| async move {
            if st.finished {
                return None;
            }
            let page = match st.pending.take() {
                Some(page) => page,
                None => match st.store.list(&st.query).await {
                    Ok(page) => page,
                    Err(err) => {
                        // Headers are gone already: all we can do is cut the body short.
                        tracing::error!(%err, "listing failed mid-stream");
                        st.finished = true;
                        return Some((Err(std::io::Error::other(err.to_string())), st));
                    }
                },
            };
            let mut chunk = Vec::with_capacity(page.items.len() * 512 + 2);
            if !st.opened {
                chunk.push(b'[');
                st.opened = true;
            }
            for item in page.items {
                if st.filter.as_ref().is_some_and(|f| !f(&item.value)) {
                    continue;
                }
                if st.wrote_any {
                    chunk.push(b',');
                }
                st.wrote_any = true;
                serde_json::to_writer(&mut chunk, &present(kind, item.value))
                    .expect("values serialize");
            }
            match page.continue_token {
                Some(token) => st.query.continue_token = Some(token),
                None => {
                    chunk.push(b']');
                    st.finished = true;
                }
            }
            Some((Ok(Bytes::from(chunk)), st))
        },
    );
    let mut response = Response::new(Body::from_stream(stream.boxed()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Store page size of streamed listings.
const STREAM_PAGE: usize = 500;

struct StreamState {
    store: std::sync::Arc<dyn kensa_store::Store>,
    pending: Option<kensa_store::Page>,
    query: ListQuery,
    filter: Option<ItemFilter>,
    wrote_any: bool,
    opened: bool,
    finished: bool,
}

async fn limited_page(
    state: &AppState,
    kind: Kind,
    mut query: ListQuery,
    limit: usize,
    present: Present,
    filter: Option<&(dyn Fn(&Value) -> bool + Send + Sync)>,
) -> ApiResult<Response> {
    let mut items = Vec::new();
    let mut next = None;
    loop {
        // Ask for exactly what is still missing, so that a page's continue token always points
        // just after the last item returned to the client.
        query.limit = limit - items.len();
        let page = state.store.list(&query).await?;
        for item in page.items {
            if filter.is_none_or(|f| f(&item.value)) {
                items.push(present(kind, item.value));
            }
        }
        match page.continue_token {
            Some(token) if items.len() < limit => query.continue_token = Some(token),
            Some(token) => {
                next = Some(token);
                break;
            }
            None => break,
        }
    }
    let mut response = axum::Json(Value::Array(items)).into_response();
    if let Some(token) = next.and_then(|t| HeaderValue::from_str(&t).ok()) {
        response.headers_mut().insert("Sensu-Continue", token);
    }
    Ok(response)
}
