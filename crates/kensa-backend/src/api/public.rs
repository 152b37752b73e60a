//! Unauthenticated endpoints: `/health`, `/ready`, `/version`, `/metrics`, and the request
//! counting middleware.
//!
//! `/health` reads cluster membership from an `Extension<Arc<Membership>>` that `server.rs`
//! layers onto the router (absent: a single entry for this backend).

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

use super::AppState;
use crate::cluster::{self, Membership};
use crate::telemetry::HttpLabels;

/// The Sensu version whose API Kensa speaks; clients read `sensu_backend` to pick features.
pub const SENSU_COMPATIBLE_VERSION: &str = "6.14.0";

/// How long `/health` waits for the store and the queue to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// `/health`: this backend's store and queue, and every cluster member it sees, in Sensu's
/// shape (`ClusterHealth` has one entry per member; `MemberID` is the first 8 bytes of the
/// member's UUID, which Kensa adds as `ID`). `503` when this backend is unhealthy: it cannot
/// reach its store or queue (a ping fails or takes longer than 2 s), or its heartbeat could not
/// be written for a few seconds.
pub async fn health(
    State(state): State<AppState>,
    membership: Option<Extension<Arc<Membership>>>,
) -> Response {
    let (store_healthy, store_err) = ping(state.store.ping()).await;
    let (queue_healthy, queue_err) = ping(state.queue.ping()).await;
    let cluster = membership.as_ref().map(|m| m.state());
    let (heartbeat_healthy, heartbeat_err) = match &cluster {
        Some(cluster) if !cluster.store_reachable => (false, cluster.store_err.clone()),
        _ => (true, String::new()),
    };
    let healthy = store_healthy && queue_healthy && heartbeat_healthy;
    let err = [
        store_err.as_str(),
        queue_err.as_str(),
        heartbeat_err.as_str(),
    ]
    .into_iter()
    .filter(|e| !e.is_empty())
    .collect::<Vec<_>>()
    .join("; ");
    let (own_id, members) = match (&membership, &cluster) {
        (Some(membership), Some(cluster)) => {
            let me = membership.id();
            let members: Vec<_> = cluster
                .members
                .iter()
                .map(|member| {
                    let own = member.id == me;
                    let member_err = if own {
                        err.clone()
                    } else if member.alive {
                        String::new()
                    } else {
                        format!("no heartbeat for {} s", member.silent_for.as_secs())
                    };
                    let numeric = cluster::numeric_id(&member.id);
                    json!({
                        "MemberID": numeric,
                        "MemberIDHex": format!("{numeric:x}"),
                        "ID": member.id,
                        "Name": member.name,
                        "Err": member_err,
                        "Healthy": if own { healthy } else { member.alive },
                    })
                })
                .collect();
            (membership.identity().numeric_id(), members)
        }
        _ => {
            let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "kensa-backend".to_owned());
            let single = json!({"MemberID": 0, "MemberIDHex": "0", "Name": hostname, "Err": err, "Healthy": healthy});
            (0, vec![single])
        }
    };
    let body = json!({
        "Alarms": null,
        "ClusterHealth": members,
        "Header": {"cluster_id": 0, "member_id": own_id, "raft_term": 0},
        "StoreHealth": {"Healthy": store_healthy, "Err": store_err},
        "QueueHealth": {"Kind": state.queue.kind(), "Healthy": queue_healthy, "Err": queue_err},
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `(healthy, error)` of a ping that must answer within [`PING_TIMEOUT`].
async fn ping<E: std::fmt::Display>(
    ping: impl std::future::Future<Output = Result<(), E>>,
) -> (bool, String) {
    match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Ok(Ok(())) => (true, String::new()),
        Ok(Err(err)) => (false, err.to_string()),
        Err(_) => (false, format!("no answer within {PING_TIMEOUT:?}")),
    }
}

pub async fn ready() -> &'static str {
    "ready"
}

pub async fn version() -> Json<serde_json::Value> {
    Json(json!({
        "etcd": null,
        "sensu_backend": SENSU_COMPATIBLE_VERSION,
        "kensa_backend": env!("CARGO_PKG_VERSION"),
        "api_groups": {"core/v2": "v2.0.0"},
    }))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.telemetry.encode(),
    )
        .into_response()
}

pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = format!("{}xx", response.status().as_u16() / 100);
    state
        .telemetry
        .http_requests
        .get_or_create(&HttpLabels { method, status })
        .inc();
    response
}
