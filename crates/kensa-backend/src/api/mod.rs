//! The REST API, compatible with Sensu Go's core/v2 API (reference §3): routing, the shared
//! request plumbing (authentication, RBAC, body limits, JSON parsing), and the handlers in the
//! submodules.
//!
//! `/api/core/v2/…` is routed by [`route::Route::parse`] rather than by one axum route per
//! path, because the URL grammar is data (a resource segment names a kind) and because raw
//! segments must be decoded one by one (asset names may contain an escaped `/`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use kensa_store::Store;
use serde_json::Value;

use crate::auth::Caller;
use crate::telemetry::Telemetry;
use crate::view::ConfigView;

pub mod auth;
pub mod crud;
pub mod error;
pub mod events;
pub mod public;
pub mod route;
pub mod special;

pub use error::{ApiError, ApiResult};

/// Settings of the API that come from the backend configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub request_limit: usize,
    pub access_token_expiry: Duration,
    pub refresh_token_expiry: Duration,
}

/// What every handler can reach. Cheap to clone (all shared).
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub view: Arc<ConfigView>,
    /// HS256 key for access tokens, shared by every backend through the store.
    pub jwt_secret: Arc<Vec<u8>>,
    pub settings: ApiSettings,
    pub telemetry: Arc<Telemetry>,
    /// Event processing: API events go through the same single writer per key as agents'.
    pub eventd: crate::eventd::Eventd,
    /// The last pipeline outcomes per event (for the dashboard).
    pub outcomes: Arc<crate::pipelined::RecentOutcomes>,
    /// The round-robin queue (its health is part of `/health`).
    pub queue: Arc<dyn kensa_queue::WorkQueue>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/auth", get(auth::login))
        .route("/auth/test", get(auth::test_credentials))
        .route("/auth/token", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/health", get(public::health))
        .route("/ready", get(public::ready))
        .route("/version", get(public::version))
        .route("/metrics", get(public::metrics))
        .route("/api/core/v2/{*rest}", any(core_v2))
        .fallback(|| async { ApiError::not_found("not found") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            public::count_requests,
        ))
        .with_state(state)
}

/// Everything under `/api/core/v2/`: authenticate, route, authorize, handle.
async fn core_v2(State(state): State<AppState>, request: Request) -> Response {
    match core_v2_inner(state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn core_v2_inner(state: AppState, request: Request) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let caller = auth::authenticate(&state, &parts.headers).await?;
    let raw_path = parts.uri.path().trim_start_matches("/api/core/v2/");
    let route = route::Route::parse(raw_path)?;
    let query = route::Query::parse(parts.uri.query().unwrap_or_default());
    let request = route::ApiRequest {
        method: parts.method,
        headers: parts.headers,
        route,
        query,
        caller,
        body,
    };
    special::dispatch(&state, request).await
}

/// Reads the whole body, refusing more than the configured limit with 413 (Sensu answers 500).
pub async fn read_body(state: &AppState, body: Body) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(body, state.settings.request_limit)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                error::Code::InvalidArgument,
                format!(
                    "request body exceeds the limit of {} bytes",
                    state.settings.request_limit
                ),
            )
        })
}

/// Parses a JSON body, naming the position of a syntax error.
pub fn parse_json(bytes: &[u8]) -> ApiResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request body is empty"));
    }
    serde_json::from_slice(bytes)
        .map_err(|err| ApiError::bad_request(format!("invalid JSON in request body: {err}")))
}

/// Empty `201 Created` as Sensu answers creates and replaces.
pub fn created() -> Response {
    StatusCode::CREATED.into_response()
}

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// The ETag of a stored revision.
pub fn etag(revision: i64) -> String {
    format!("\"{revision:x}\"")
}

/// Parses an `If-Match` header into the revision it names; `*` means "must exist".
pub fn if_match(headers: &HeaderMap) -> ApiResult<Option<kensa_store::Precondition>> {
    let Some(value) = headers.get(axum::http::header::IF_MATCH) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match header is not text"))?
        .trim();
    if value == "*" {
        return Ok(Some(kensa_store::Precondition::MustExist));
    }
    let first = value
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"');
    let revision = i64::from_str_radix(first, 16).map_err(|_| {
        ApiError::precondition_failed(format!("If-Match {value} does not name a current ETag"))
    })?;
    Ok(Some(kensa_store::Precondition::Revision(revision)))
}

/// Checks `If-None-Match` against the current revision (`*` fails whenever the resource exists).
pub fn check_if_none_match(headers: &HeaderMap, current: Option<i64>) -> ApiResult<()> {
    let Some(value) = headers.get(axum::http::header::IF_NONE_MATCH) else {
        return Ok(());
    };
    let value = value.to_str().unwrap_or_default().trim();
    let Some(current) = current else {
        return Ok(());
    };
    let matches = value == "*"
        || value
            .split(',')
            .any(|tag| tag.trim().trim_start_matches("W/") == etag(current));
    if matches {
        return Err(ApiError::precondition_failed(
            "the resource matches If-None-Match",
        ));
    }
    Ok(())
}

pub fn now_unix() -> i64 {
    now_millis() / 1000
}

/// Unix milliseconds (deadlines that must be exact to better than a second).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Needed by handlers that only care whether a method is a read.
pub fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

impl AppState {
    pub fn caller_can(&self, caller: &Caller, request: &crate::auth::rbac::Request) -> bool {
        crate::auth::rbac::allowed(self.view.as_ref(), caller, request)
    }
}
