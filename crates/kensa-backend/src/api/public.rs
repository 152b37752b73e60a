//! Unauthenticated endpoints: `/health`, `/ready`, `/version`, `/metrics`, and the request
//! counting middleware.

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::telemetry::HttpLabels;

/// The Sensu version whose API Kensa speaks; clients read `sensu_backend` to pick features.
pub const SENSU_COMPATIBLE_VERSION: &str = "6.14.0";

pub async fn health(State(state): State<AppState>) -> Response {
    let (store_healthy, store_err) = match state.store.ping().await {
        Ok(()) => (true, String::new()),
        Err(err) => (false, err.to_string()),
    };
    let (queue_healthy, queue_err) = match state.queue.ping().await {
        Ok(()) => (true, String::new()),
        Err(err) => (false, err.to_string()),
    };
    let healthy = store_healthy && queue_healthy;
    let err = [store_err.as_str(), queue_err.as_str()]
        .into_iter()
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let hostname = std::env::var("HOSTNAME").unwrap_or_else(|_| "kensa-backend".to_owned());
    let body = json!({
        "Alarms": null,
        "ClusterHealth": [{"MemberID": 0, "MemberIDHex": "0", "Name": hostname, "Err": err, "Healthy": healthy}],
        "Header": {"cluster_id": 0, "member_id": 0, "raft_term": 0},
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
