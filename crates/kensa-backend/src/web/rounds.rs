//! `GET /dashboard/api/rounds?namespace=&check=&limit=`: a round-robin check's last rounds,
//! for the check detail page — when each ran, on which agent, how often it was delivered,
//! which were missed or ran twice, and a one-line summary with the spread over agents.
//!
//! The source is the ring of round records the backend keeps per (check, proxy entity,
//! subscription) (`rounds::record`, store kind `kensa.rounds`): a record exists once a round
//! completed or was reported missed. Rounds that are due but have neither — queued or running
//! on an agent — are not stored anywhere every backend can read, so they are derived from the
//! check's schedule: every tick of an interval check since its first recorded round whose
//! deadline has not passed and that has no record yet is shown "in flight". (Cron checks
//! show recorded rounds only.)
//!
//! Authorized like reading the check in core/v2: `get checks` in the namespace.

use std::collections::{BTreeMap, HashSet};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use kensa_proto::CheckRequest;
use kensa_store::{ListQuery, Store};
use kensa_types::resources::check::CheckConfig;
use kensa_types::Kind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::handlers::{authorize, caller, require_namespace, respond};
use super::Dashboard;
use crate::api::{ApiError, ApiResult};
use crate::rounds::record::{self, RoundRecord, RoundRef};
use crate::rounds::Budget;

/// Rounds shown unless asked otherwise, and the most one answer holds.
const DEFAULT_ROUNDS: usize = 50;
const MAX_ROUNDS: usize = 200;
/// Round records read at most per request (64 scheduled + 16 ad hoc per series): enough for
/// about fifty series — a proxy check over more entities shows some of them.
const MAX_RECORDS: usize = 4_096;
const PAGE: usize = 500;

#[derive(Debug, Deserialize)]
pub struct RoundsParams {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub check: String,
    pub limit: Option<usize>,
}

/// What a round is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundState {
    /// Its result was stored.
    Completed,
    /// Completed, and a second execution arrived afterwards (acknowledged, not stored).
    Duplicated,
    /// Nobody completed it before its deadline.
    Missed,
    /// Due, without a result yet (derived from the schedule, see the module comment).
    InFlight,
}

/// One row of the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundRow {
    pub round: String,
    /// What the row is ordered by (Unix ms): the scheduled tick, or for an ad hoc run when it
    /// was recorded.
    pub time: i64,
    pub adhoc: bool,
    pub subscription: String,
    pub proxy_entity: Option<String>,
    pub state: RoundState,
    /// Completed after it had been reported missed.
    pub late: bool,
    /// The agent whose result completed it.
    pub entity: Option<String>,
    /// The completing result's status.
    pub status: Option<u32>,
    /// When the completing result ran (Unix seconds).
    pub executed: Option<i64>,
    /// When the completion or the miss was recorded (Unix ms).
    pub recorded_at: Option<i64>,
    /// The queue's delivery count, when known (see `RoundRecord::deliveries`).
    pub deliveries: Option<u32>,
    /// Second executions after completion, and the agents of the ones remembered.
    pub duplicates: u64,
    pub duplicate_entities: Vec<String>,
    /// When an in-flight round counts as missed (Unix ms).
    pub deadline: Option<i64>,
}

/// The rows and their summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundsView {
    pub summary: Summary,
    pub rounds: Vec<RoundRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Finished rounds among those shown (completed, duplicated or missed).
    pub finished: usize,
    /// Completed, duplicated ones included.
    pub completed: usize,
    pub missed: usize,
    pub in_flight: usize,
    pub duplicated: usize,
    pub late: usize,
    /// Rounds the queue delivered more than once.
    pub redelivered: usize,
    /// Completed rounds per agent, most first.
    pub agents: Vec<AgentShare>,
    /// "48 of the last 50 rounds completed, 2 missed, spread: agent-a 17, agent-b 16, …"
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentShare {
    pub entity: String,
    pub rounds: usize,
}

/// `GET /dashboard/api/rounds`: see the module comment.
pub async fn rounds(
    State(dashboard): State<Dashboard>,
    Query(params): Query<RoundsParams>,
    headers: HeaderMap,
) -> Response {
    respond(rounds_inner(&dashboard, &params, &headers).await)
}

async fn rounds_inner(
    dashboard: &Dashboard,
    params: &RoundsParams,
    headers: &HeaderMap,
) -> ApiResult<Value> {
    let caller = caller(&dashboard.app, headers).await?;
    let (namespace, name) = (params.namespace.as_str(), params.check.trim());
    if namespace.is_empty() {
        return Err(ApiError::bad_request("namespace: must be given"));
    }
    if name.is_empty() {
        return Err(ApiError::bad_request("check: must be given"));
    }
    authorize(
        &dashboard.app,
        &caller,
        "get",
        Kind::CheckConfig,
        namespace,
        Some(name),
    )?;
    require_namespace(&dashboard.app, namespace)?;
    let check: CheckConfig = dashboard
        .app
        .view
        .decode(Kind::CheckConfig.resource(), namespace, name)
        .ok_or_else(|| ApiError::not_found(format!("check {name:?} not found")))?;
    let limit = params.limit.unwrap_or(DEFAULT_ROUNDS).clamp(1, MAX_ROUNDS);
    let (records, truncated) = read_records(dashboard.app.store.as_ref(), namespace, name).await?;
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let view = rounds_view(&check, &records, now_ms, limit);
    Ok(json!({
        "namespace": namespace,
        "check": name,
        "round_robin": check.round_robin,
        "generated_at": now_ms,
        "limit": limit,
        "records": records.len(),
        "truncated": truncated,
        "summary": view.summary,
        "rounds": view.rounds,
    }))
}

/// The round records of `check`: its own series (`<check>#…`) and its proxy entities'
/// (`<check>/<proxy>#…`; check names never contain `/` or `#`). `true` when there were more
/// than [`MAX_RECORDS`].
async fn read_records(
    store: &dyn Store,
    namespace: &str,
    check: &str,
) -> ApiResult<(Vec<RoundRecord>, bool)> {
    let mut records = Vec::new();
    for prefix in [format!("{check}#"), format!("{check}/")] {
        let mut continue_token = None;
        loop {
            let page = store
                .list(&ListQuery {
                    kind: record::KIND.to_owned(),
                    namespace: Some(namespace.to_owned()),
                    name_prefix: Some(prefix.clone()),
                    limit: PAGE,
                    continue_token: continue_token.take(),
                })
                .await?;
            records.extend(
                page.items
                    .iter()
                    .map(|stored| record::decode(&stored.value)),
            );
            if records.len() >= MAX_RECORDS {
                records.truncate(MAX_RECORDS);
                return Ok((records, true));
            }
            match page.continue_token {
                Some(token) => continue_token = Some(token),
                None => break,
            }
        }
    }
    Ok((records, false))
}

/// The last `limit` rounds of `check` at `now_ms`, newest first, from its round records.
pub fn rounds_view(
    check: &CheckConfig,
    records: &[RoundRecord],
    now_ms: i64,
    limit: usize,
) -> RoundsView {
    let mut rows: Vec<RoundRow> = records
        .iter()
        .filter_map(|record| recorded_row(check, record))
        .collect();
    rows.extend(in_flight_rows(check, &rows, now_ms));
    rows.sort_by(|a, b| {
        b.time
            .cmp(&a.time)
            .then_with(|| a.subscription.cmp(&b.subscription))
            .then_with(|| a.proxy_entity.cmp(&b.proxy_entity))
            .then_with(|| a.round.cmp(&b.round))
    });
    rows.truncate(limit);
    RoundsView {
        summary: summarize(&rows),
        rounds: rows,
    }
}

fn recorded_row(check: &CheckConfig, record: &RoundRecord) -> Option<RoundRow> {
    let round = RoundRef::parse(&record.round)?;
    if round.check != check.metadata.name || round.namespace != check.metadata.namespace {
        return None;
    }
    let completed = record.state == record::COMPLETED;
    let state = match record.state.as_str() {
        record::COMPLETED if record.duplicate_count > 0 => RoundState::Duplicated,
        record::COMPLETED => RoundState::Completed,
        record::MISSED => RoundState::Missed,
        _ => return None,
    };
    let known = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    Some(RoundRow {
        time: round.tick_ms.unwrap_or(record.recorded_at),
        adhoc: round.adhoc.is_some(),
        subscription: round.subscription,
        proxy_entity: round.proxy_entity,
        state,
        late: record.late,
        entity: known(&record.entity),
        status: completed.then_some(record.status),
        executed: completed.then_some(record.executed),
        recorded_at: (record.recorded_at > 0).then_some(record.recorded_at),
        deliveries: (record.deliveries > 0).then_some(record.deliveries),
        duplicates: record.duplicate_count,
        duplicate_entities: record
            .duplicates
            .iter()
            .map(|duplicate| duplicate.entity.clone())
            .collect(),
        deadline: None,
        round: round.id,
    })
}

/// The due rounds of an interval check without a record yet (see the module comment).
fn in_flight_rows(check: &CheckConfig, recorded: &[RoundRow], now_ms: i64) -> Vec<RoundRow> {
    if !check.round_robin || !check.publish || check.interval == 0 || !check.cron.is_empty() {
        return Vec::new();
    }
    let period_ms = record::period_ms(u64::from(check.interval));
    let scheduled: Vec<&RoundRow> = recorded.iter().filter(|row| !row.adhoc).collect();
    // Ticks sit on a grid `phase + k × period`; the records say where, and since when this
    // check's rounds have been running (an earlier tick may predate the check).
    let Some(newest) = scheduled.iter().map(|row| row.time).max() else {
        return Vec::new();
    };
    let Some(first) = scheduled
        .iter()
        .map(|row| row.time)
        .filter(|tick| (tick - newest).rem_euclid(period_ms) == 0)
        .min()
    else {
        return Vec::new();
    };
    let budget = Budget::of(&CheckRequest {
        config: check.clone(),
        ..CheckRequest::default()
    });
    let mut series: Vec<(Option<String>, String)> = scheduled
        .iter()
        .map(|row| (row.proxy_entity.clone(), row.subscription.clone()))
        .collect();
    if check.proxy_requests.is_none() {
        series.extend(check.subscriptions.iter().map(|s| (None, s.clone())));
    }
    series.sort();
    series.dedup();
    let have: HashSet<(i64, Option<&str>, &str)> = scheduled
        .iter()
        .map(|row| {
            (
                row.time,
                row.proxy_entity.as_deref(),
                row.subscription.as_str(),
            )
        })
        .collect();
    let mut rows = Vec::new();
    let mut tick = now_ms - (now_ms - newest).rem_euclid(period_ms);
    while tick >= first && budget.round_deadline_ms(tick) > now_ms {
        if !check.definition().is_subdued(tick.div_euclid(1000)) {
            for (proxy, subscription) in &series {
                if have.contains(&(tick, proxy.as_deref(), subscription.as_str())) {
                    continue;
                }
                // The scheduler's round id (`scheduler::request::scheduled_round`), with the
                // proxy entity as `rounds::record` spells it.
                let mut base = format!(
                    "{}/{}@{tick}",
                    check.metadata.namespace, check.metadata.name
                );
                if let Some(proxy) = proxy {
                    base = format!("{base}/{proxy}");
                }
                rows.push(RoundRow {
                    round: RoundRef::id_for(&base, subscription),
                    time: tick,
                    adhoc: false,
                    subscription: subscription.clone(),
                    proxy_entity: proxy.clone(),
                    state: RoundState::InFlight,
                    late: false,
                    entity: None,
                    status: None,
                    executed: None,
                    recorded_at: None,
                    deliveries: None,
                    duplicates: 0,
                    duplicate_entities: Vec::new(),
                    deadline: Some(budget.round_deadline_ms(tick)),
                });
            }
        }
        tick -= period_ms;
    }
    rows
}

fn summarize(rows: &[RoundRow]) -> Summary {
    let mut summary = Summary::default();
    let mut agents: BTreeMap<&str, usize> = BTreeMap::new();
    for row in rows {
        match row.state {
            RoundState::Completed | RoundState::Duplicated => {
                summary.completed += 1;
                if let Some(entity) = &row.entity {
                    *agents.entry(entity).or_default() += 1;
                }
            }
            RoundState::Missed => summary.missed += 1,
            RoundState::InFlight => summary.in_flight += 1,
        }
        summary.duplicated += usize::from(row.state == RoundState::Duplicated);
        summary.late += usize::from(row.late);
        summary.redelivered += usize::from(row.deliveries.is_some_and(|n| n > 1));
    }
    summary.finished = summary.completed + summary.missed;
    let mut agents: Vec<AgentShare> = agents
        .into_iter()
        .map(|(entity, rounds)| AgentShare {
            entity: entity.to_owned(),
            rounds,
        })
        .collect();
    agents.sort_by(|a, b| {
        b.rounds
            .cmp(&a.rounds)
            .then_with(|| a.entity.cmp(&b.entity))
    });
    summary.agents = agents;
    summary.text = summary_text(&summary);
    summary
}

fn summary_text(summary: &Summary) -> String {
    if summary.finished == 0 {
        return match summary.in_flight {
            0 => "No rounds recorded yet.".to_owned(),
            n => format!("No round finished yet, {n} in flight."),
        };
    }
    let rounds = if summary.finished == 1 {
        "round"
    } else {
        "rounds"
    };
    let mut parts = vec![format!(
        "{} of the last {} {rounds} completed",
        summary.completed, summary.finished
    )];
    let counts = [
        (summary.missed, "missed"),
        (summary.late, "late"),
        (summary.duplicated, "ran twice"),
        (summary.redelivered, "redelivered"),
        (summary.in_flight, "in flight"),
    ];
    parts.extend(
        counts
            .iter()
            .filter(|(count, _)| *count > 0)
            .map(|(count, what)| format!("{count} {what}")),
    );
    if !summary.agents.is_empty() {
        let spread: Vec<String> = summary
            .agents
            .iter()
            .map(|share| format!("{} {}", share.entity, share.rounds))
            .collect();
        parts.push(format!("spread: {}", spread.join(", ")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rounds::record::Duplicate;

    const PERIOD: i64 = 10_000;
    /// A tick on the check's grid.
    const T0: i64 = 1_700_000_000_000;

    fn check(subscriptions: &[&str]) -> CheckConfig {
        serde_json::from_value(json!({
            "metadata": {"name": "ping", "namespace": "default"},
            "command": "true",
            "interval": PERIOD / 1000,
            "round_robin": true,
            "publish": true,
            "subscriptions": subscriptions,
        }))
        .unwrap()
    }

    fn completed(tick: i64, subscription: &str, entity: &str) -> RoundRecord {
        RoundRecord {
            round: format!("default/ping@{tick}#{subscription}"),
            state: record::COMPLETED.into(),
            tick,
            entity: entity.into(),
            event_id: format!("event-{tick}"),
            status: 0,
            executed: tick / 1000 + 1,
            recorded_at: tick + 1_500,
            deliveries: 1,
            ..RoundRecord::default()
        }
    }

    fn missed(tick: i64, subscription: &str) -> RoundRecord {
        RoundRecord {
            round: format!("default/ping@{tick}#{subscription}"),
            state: record::MISSED.into(),
            tick,
            recorded_at: tick + 40_000,
            ..RoundRecord::default()
        }
    }

    #[test]
    fn records_become_rows_newest_first_with_a_summary() {
        let mut duplicated = completed(T0 + 2 * PERIOD, "zone", "agent-b");
        duplicated.duplicate_count = 1;
        duplicated.duplicates = vec![Duplicate {
            entity: "agent-c".into(),
            ..Duplicate::default()
        }];
        duplicated.deliveries = 2;
        let mut late = completed(T0 + 3 * PERIOD, "zone", "agent-a");
        late.late = true;
        let mut old = completed(T0 - PERIOD, "zone", "agent-c");
        old.deliveries = 0; // written before deliveries were recorded
        let records = vec![
            completed(T0, "zone", "agent-a"),
            missed(T0 + PERIOD, "zone"),
            duplicated,
            late,
            old,
            // Another check sharing the prefix never shows (the store prefix excludes it
            // anyway; the parse is the second guard).
            RoundRecord {
                round: format!("default/pingu@{T0}#zone"),
                ..completed(T0, "zone", "x")
            },
            // A record in an unknown state is left out rather than guessed at.
            RoundRecord {
                state: "pending".into(),
                ..completed(T0 - 2 * PERIOD, "zone", "x")
            },
        ];
        // Just after the last recorded tick: every due round has its record.
        let now = T0 + 3 * PERIOD + 1_000;
        let view = rounds_view(&check(&["zone"]), &records, now, 50);
        let states: Vec<(i64, RoundState, Option<&str>)> = view
            .rounds
            .iter()
            .map(|r| ((r.time - T0) / PERIOD, r.state, r.entity.as_deref()))
            .collect();
        assert_eq!(
            states,
            vec![
                (3, RoundState::Completed, Some("agent-a")),
                (2, RoundState::Duplicated, Some("agent-b")),
                (1, RoundState::Missed, None),
                (0, RoundState::Completed, Some("agent-a")),
                (-1, RoundState::Completed, Some("agent-c")),
            ]
        );
        let row = serde_json::to_value(&view.rounds[1]).unwrap();
        assert_eq!(
            row,
            json!({
                "round": format!("default/ping@{}#zone", T0 + 2 * PERIOD),
                "time": T0 + 2 * PERIOD, "adhoc": false, "subscription": "zone",
                "proxy_entity": null, "state": "duplicated", "late": false,
                "entity": "agent-b", "status": 0, "executed": (T0 + 2 * PERIOD) / 1000 + 1,
                "recorded_at": T0 + 2 * PERIOD + 1_500, "deliveries": 2,
                "duplicates": 1, "duplicate_entities": ["agent-c"], "deadline": null,
            })
        );
        assert_eq!(view.rounds[4].deliveries, None, "unknown, not zero");
        assert!(view.rounds[0].late);
        assert_eq!(view.rounds[2].status, None, "a missed round has no result");
        let summary = &view.summary;
        assert_eq!(
            (
                summary.finished,
                summary.completed,
                summary.missed,
                summary.duplicated,
                summary.late,
                summary.redelivered,
                summary.in_flight
            ),
            (5, 4, 1, 1, 1, 1, 0)
        );
        assert_eq!(
            summary.text,
            "4 of the last 5 rounds completed, 1 missed, 1 late, 1 ran twice, 1 redelivered, \
             spread: agent-a 2, agent-b 1, agent-c 1"
        );

        // The limit keeps the newest.
        let two = rounds_view(&check(&["zone"]), &records, now, 2);
        assert_eq!(two.rounds.len(), 2);
        assert_eq!(
            two.summary.text,
            "2 of the last 2 rounds completed, 1 late, 1 ran twice, 1 redelivered, \
             spread: agent-a 1, agent-b 1"
        );
    }

    #[test]
    fn due_rounds_without_a_record_are_in_flight_until_their_deadline() {
        let check = check(&["zone", "dc"]);
        let records = vec![
            completed(T0, "zone", "agent-a"),
            completed(T0, "dc", "agent-x"),
            completed(T0 + PERIOD, "zone", "agent-b"),
        ];
        // 2.5 periods after T0: T0 + 2P is due in both subscriptions, T0 + P in "dc" only.
        let now = T0 + 2 * PERIOD + PERIOD / 2;
        let view = rounds_view(&check, &records, now, 50);
        let rows: Vec<(i64, &str, RoundState)> = view
            .rounds
            .iter()
            .map(|r| ((r.time - T0) / PERIOD, r.subscription.as_str(), r.state))
            .collect();
        assert_eq!(
            rows,
            vec![
                (2, "dc", RoundState::InFlight),
                (2, "zone", RoundState::InFlight),
                (1, "dc", RoundState::InFlight),
                (1, "zone", RoundState::Completed),
                (0, "dc", RoundState::Completed),
                (0, "zone", RoundState::Completed),
            ]
        );
        let budget = Budget::of(&CheckRequest {
            config: check.clone(),
            ..CheckRequest::default()
        });
        assert_eq!(
            view.rounds[0].round,
            format!("default/ping@{}#dc", T0 + 2 * PERIOD)
        );
        assert_eq!(
            view.rounds[0].deadline,
            Some(budget.round_deadline_ms(T0 + 2 * PERIOD))
        );
        assert_eq!(
            view.summary.text,
            "3 of the last 3 rounds completed, 3 in flight, spread: agent-a 1, agent-b 1, agent-x 1"
        );

        // Past a round's deadline it is no longer in flight (the reconciler records the miss).
        let later = budget.round_deadline_ms(T0 + PERIOD) + 1;
        let view = rounds_view(&check, &records, later, 50);
        assert!(view
            .rounds
            .iter()
            .all(|r| r.state != RoundState::InFlight || r.time > T0 + PERIOD));

        // Nothing before the first recorded round (the check may not have existed), nothing
        // for a check that is not published, and nothing without any record to place the grid.
        assert!(rounds_view(&check, &records, T0 + PERIOD / 2, 50)
            .rounds
            .iter()
            .all(|r| r.time >= T0));
        let mut unpublished = check.clone();
        unpublished.publish = false;
        let view = rounds_view(&unpublished, &records, now, 50);
        assert_eq!(view.summary.in_flight, 0);
        assert_eq!(
            rounds_view(&check, &[], now, 50).summary.text,
            "No rounds recorded yet."
        );
    }

    #[test]
    fn ad_hoc_and_proxy_rounds_are_shown_with_what_they_ran_for() {
        let mut check = check(&["zone"]);
        check.proxy_requests = Some(
            serde_json::from_value(
                json!({"entity_attributes": ["entity.entity_class == 'proxy'"]}),
            )
            .unwrap(),
        );
        let proxy = RoundRecord {
            round: format!("default/ping@{T0}/router-1#zone"),
            ..completed(T0, "zone", "agent-a")
        };
        let adhoc = RoundRecord {
            round: "default/ping@adhoc-4f2a#zone".into(),
            tick: 0,
            ..completed(0, "zone", "agent-b")
        };
        let adhoc_time = adhoc.recorded_at;
        let view = rounds_view(&check, &[proxy, adhoc], T0 + 1_000, 50);
        let rows: Vec<(bool, Option<&str>, i64)> = view
            .rounds
            .iter()
            .map(|r| (r.adhoc, r.proxy_entity.as_deref(), r.time))
            .collect();
        assert_eq!(
            rows,
            vec![(false, Some("router-1"), T0), (true, None, adhoc_time)]
        );
        // The proxy entity's next round is derived; the check's own series is not (a proxy
        // check runs only for its entities).
        let view = rounds_view(
            &check,
            &[RoundRecord {
                round: format!("default/ping@{T0}/router-1#zone"),
                ..completed(T0, "zone", "agent-a")
            }],
            T0 + PERIOD + 1,
            50,
        );
        assert_eq!(view.summary.in_flight, 1);
        assert_eq!(
            view.rounds[0].round,
            format!("default/ping@{}/router-1#zone", T0 + PERIOD)
        );
    }

    /// `GET path` on `server`'s dashboard listener as `user` (`None`: anonymous).
    async fn get(
        server: &crate::testing::TestServer,
        user: Option<(&str, &str)>,
        path: &str,
    ) -> (u16, Value) {
        let http = reqwest::Client::new();
        let mut request = http.get(format!("{}{path}", server.dashboard_url));
        if let Some((username, password)) = user {
            let tokens: Value = http
                .get(format!("{}/auth", server.dashboard_url))
                .basic_auth(username, Some(password))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let token = tokens["access_token"].as_str().unwrap().to_owned();
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn send(server: &crate::testing::TestServer, method: &str, path: &str, body: Value) {
        let http = reqwest::Client::new();
        let tokens: Value = http
            .get(format!("{}/auth", server.dashboard_url))
            .basic_auth(&server.admin_username, Some(&server.admin_password))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let response = http
            .request(
                method.parse().unwrap(),
                format!("{}/api/core/v2/{path}", server.dashboard_url),
            )
            .bearer_auth(tokens["access_token"].as_str().unwrap())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{method} {path}: {}",
            response.status()
        );
    }

    #[tokio::test]
    async fn the_endpoint_serves_the_ring_to_those_who_may_read_the_check() {
        let server = crate::testing::TestServer::start().await.unwrap();
        // Not published: the backend schedules nothing of its own for it, only the records
        // below exist.
        send(
            &server,
            "PUT",
            "namespaces/default/checks/ping",
            json!({"metadata": {"name": "ping", "namespace": "default"}, "command": "true",
                   "interval": PERIOD / 1000, "round_robin": true, "publish": false,
                   "subscriptions": ["zone"]}),
        )
        .await;
        send(
            &server,
            "POST",
            "users",
            json!({"username": "nobody", "password": "nobody-pass-1"}),
        )
        .await;
        // The ring as eventd, round robin and the reconciler write it, through a second handle
        // on the backend's database.
        let store = kensa_store::sqlite::SqliteStore::open(&server.state_dir.join("kensa.db"))
            .await
            .unwrap();
        let cache = record::SlotCache::default();
        let round = |n: i64, check: &str| {
            RoundRef::parse(&format!("default/{check}@{}#zone", T0 + n * PERIOD)).unwrap()
        };
        let result = |entity: &str, id: &str| record::Completion {
            entity: entity.into(),
            event_id: id.into(),
            status: 0,
            executed: T0 / 1000,
            now_ms: T0,
        };
        let claims = [
            (round(0, "ping"), result("agent-a", "e1")),
            (round(1, "ping"), result("agent-b", "e2")),
            (round(1, "ping"), result("agent-c", "e3")), // ran twice
            (round(3, "ping"), result("agent-a", "e4")),
            (round(3, "pingu"), result("agent-z", "e5")), // another check
        ];
        for (round, completion) in &claims {
            record::claim(&store, &cache, round, PERIOD, completion)
                .await
                .unwrap();
        }
        record::mark_missed(&store, &round(2, "ping"), PERIOD, T0)
            .await
            .unwrap();
        record::note_deliveries(&store, &round(3, "ping"), PERIOD, 3)
            .await
            .unwrap();

        let admin = Some((
            server.admin_username.as_str(),
            server.admin_password.as_str(),
        ));
        let (status, body) = get(
            &server,
            admin,
            "/dashboard/api/rounds?namespace=default&check=ping",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (&body["check"], &body["round_robin"], &body["records"]),
            (&json!("ping"), &json!(true), &json!(4))
        );
        assert_eq!(
            body["summary"]["text"],
            "3 of the last 4 rounds completed, 1 missed, 1 ran twice, 1 redelivered, \
             spread: agent-a 2, agent-b 1"
        );
        let rows: Vec<(String, Value, Value)> = body["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["state"].as_str().unwrap().to_owned(),
                    r["entity"].clone(),
                    r["deliveries"].clone(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                ("completed".into(), json!("agent-a"), json!(3)),
                ("missed".into(), Value::Null, Value::Null),
                ("duplicated".into(), json!("agent-b"), json!(1)),
                ("completed".into(), json!("agent-a"), json!(1)),
            ]
        );
        assert_eq!(body["rounds"][2]["duplicate_entities"], json!(["agent-c"]));

        let nobody = Some(("nobody", "nobody-pass-1"));
        let cases = [
            (
                nobody,
                "namespace=default&check=ping",
                403,
                "not allowed to get checks",
            ),
            (None, "namespace=default&check=ping", 401, ""),
            (
                admin,
                "namespace=default&check=nope",
                404,
                "check \"nope\" not found",
            ),
            (admin, "namespace=nowhere&check=ping", 404, ""),
            (admin, "namespace=default", 400, "check: must be given"),
            (admin, "check=ping", 400, "namespace: must be given"),
        ];
        for (user, query, expected, message) in cases {
            let (status, body) =
                get(&server, user, &format!("/dashboard/api/rounds?{query}")).await;
            assert_eq!(status, expected, "{query}: {body}");
            let text = body["message"].as_str().unwrap_or_default();
            assert!(text.contains(message), "{query}: {body}");
        }
        server.shutdown().await;
    }
}
