//! The agent's local HTTP API (reference §2.8; Sensu's default bind is `127.0.0.1:3031`):
//! programs on the host submit results with `POST /events`, and probes ask `GET /healthz`.
//!
//! | route | answer |
//! |---|---|
//! | `POST /events` | `202` once the event is in the outbox; `400` naming the bad field; `413` over 1 MiB |
//! | `GET /healthz` | `200 ok` when connected to a backend, else `503 sensu backend unavailable` |
//! | `GET /version` | `{"version": "<agent version>"}` |
//! | `GET /metrics` | the inputs' counters, Prometheus text |
//!
//! Differences from Sensu: an over-limit body is `413` (the backend does the same), and an
//! event the outbox cannot store is `503` rather than a silent loss.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kensa_types::resources::event::Event;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{prepare_event, unix_now, EventSink, Input, InputContext, Outcome};

/// The largest `POST /events` body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Serves the API on `listener` until `shutdown` is cancelled; requests in flight finish.
pub async fn serve<S: EventSink>(
    listener: TcpListener,
    ctx: InputContext<S>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "agent API listening");
    }
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The API's routes, for embedding or testing without a listener.
pub fn router<S: EventSink>(ctx: InputContext<S>) -> Router {
    Router::new()
        .route("/events", post(post_event::<S>))
        .route("/healthz", get(healthz::<S>))
        .route("/version", get(version))
        .route("/metrics", get(metrics::<S>))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx)
}

async fn post_event<S: EventSink>(State(ctx): State<InputContext<S>>, body: Bytes) -> Response {
    let event = match decode_event(&body) {
        Ok(event) => event,
        Err(message) => {
            ctx.counters.count(Input::Api, Outcome::Invalid);
            tracing::debug!(%message, "agent API: invalid event");
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let event = match prepare_event(event, &ctx.agent_entity(), unix_now()) {
        Ok(event) => event,
        Err(err) => {
            ctx.counters.count(Input::Api, Outcome::Invalid);
            tracing::debug!(error = %err, "agent API: invalid event");
            return (StatusCode::BAD_REQUEST, err.to_string()).into_response();
        }
    };
    match ctx.deliver(Input::Api, event).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(err) => (StatusCode::SERVICE_UNAVAILABLE, err.to_string()).into_response(),
    }
}

/// The body as an event, or a message naming what is wrong with it.
fn decode_event(body: &[u8]) -> Result<Event, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|err| format!("request body is not valid JSON: {err}"))?;
    if !value.is_object() {
        return Err("request body must be a JSON object (an event)".to_owned());
    }
    kensa_types::resources::decode::<Event>(value).map_err(|err| err.to_string())
}

async fn healthz<S: EventSink>(State(ctx): State<InputContext<S>>) -> Response {
    if *ctx.connected.borrow() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "sensu backend unavailable").into_response()
    }
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") }))
}

async fn metrics<S: EventSink>(State(ctx): State<InputContext<S>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.counters.render_prometheus(),
    )
        .into_response()
}
