//! The dashboard: a single-page app embedded in the binary, served on the dashboard listener
//! together with the REST API (same origin, so the page calls `/auth*` and `/api/core/v2/…`
//! with the user's own token, through the same authentication and RBAC as any client).
//!
//! Beyond core/v2 the page needs answers the store cannot give cheaply — counts by state and
//! events sorted by severity over tens of thousands of events — so `index` keeps a compact
//! in-memory index following the change feed, `handlers` serves it as JSON under
//! `/dashboard/api/` (authorized like the equivalent core/v2 listing), `rounds` a round-robin
//! check's last rounds from its round records, and `stream` tells open pages when to re-read
//! (Server-Sent Events). `assets` serves the page itself
//! (`crates/kensa-backend/web/`). Start reading at [`router_until`].

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::api::AppState;

pub mod assets;
pub mod handlers;
pub mod index;
mod pruned;
pub mod rounds;
pub mod stream;

use assets::Assets;
use index::Index;

/// What the dashboard's handlers share. Cheap to clone.
#[derive(Clone)]
pub struct Dashboard {
    pub app: AppState,
    pub index: Arc<Index>,
    /// Cancelled when the backend stops (or the router is dropped): ends the index follower
    /// and every open live-update stream.
    pub stop: CancellationToken,
    /// Cancels `stop` when the last clone of the router goes away, so a router built without
    /// a shutdown token never leaves its follower task behind.
    _stop_on_drop: Arc<DropGuard>,
}

/// Everything the dashboard listener serves. Live-update streams end only when their token
/// expires; prefer [`router_until`], which also ends them at shutdown.
pub fn router(state: AppState) -> Router {
    router_until(state, CancellationToken::new())
}

/// Everything the dashboard listener serves, until `shutdown`. Spawns the index follower, so
/// it must be called inside a Tokio runtime.
pub fn router_until(state: AppState, shutdown: CancellationToken) -> Router {
    let stop = shutdown.child_token();
    let index = Arc::new(Index::default());
    tokio::spawn(index.clone().follow(state.store.clone(), stop.clone()));
    let dashboard = Dashboard {
        app: state.clone(),
        index,
        stop: stop.clone(),
        _stop_on_drop: Arc::new(stop.drop_guard()),
    };
    let json = Router::new()
        .route("/dashboard/api/overview", get(handlers::overview))
        .route("/dashboard/api/events", get(handlers::events))
        .route("/dashboard/api/event", get(handlers::event))
        .route("/dashboard/api/entities", get(handlers::entities))
        .route("/dashboard/api/permissions", get(handlers::permissions))
        .route("/dashboard/api/rounds", get(rounds::rounds))
        .layer(axum::middleware::from_fn(handlers::server_timing))
        .route("/dashboard/api/stream", get(stream::stream))
        .with_state(dashboard);
    let page = Router::new()
        .route("/", get(assets::serve_index))
        .route("/assets/{name}", get(assets::serve_file))
        .with_state(Assets::shared());
    Router::new()
        .merge(page)
        .merge(json)
        .layer(axum::middleware::from_fn(security_headers))
        .merge(crate::api::router(state))
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    assets::security_headers(response.headers_mut());
    response
}
