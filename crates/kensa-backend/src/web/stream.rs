//! `GET /dashboard/api/stream?namespace=`: live updates as Server-Sent Events.
//!
//! The page reads it with `fetch()` (not `EventSource`) so the access token travels in the
//! `Authorization` header like every other request — never in a URL, where it would end up in
//! logs and history. The stream says only *that* something changed (`event: change`, with the
//! namespace's revision); the page then re-reads the page it shows, which is already filtered,
//! paged and authorized. Changes are coalesced: at most one message per [`MIN_SPACING`], so a
//! burst of 10,000 results costs the browser two reloads a second, not 10,000 messages.
//!
//! A stream ends when the access token it was opened with expires (the page reconnects with
//! its refreshed token, so a revoked user stops receiving updates), after [`MAX_LIFETIME`] for
//! API keys, and when the backend shuts down.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tokio::time::Instant;

use super::handlers::{admit_stream, token_expiry, NamespaceParam};
use super::Dashboard;
use crate::api::now_unix;

/// At most one `change` message per this interval (≤ 2 per second).
pub const MIN_SPACING: Duration = Duration::from_millis(500);

/// Streams authenticated by something that does not expire are re-authenticated this often.
const MAX_LIFETIME: Duration = Duration::from_secs(600);

/// Comment lines keep proxies and the browser from timing the connection out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub async fn stream(
    State(dashboard): State<Dashboard>,
    Query(params): Query<NamespaceParam>,
    headers: HeaderMap,
) -> Response {
    if let Err(err) = admit_stream(&dashboard, &headers, &params.namespace).await {
        return err.into_response();
    }
    let lifetime = match token_expiry(&dashboard.app, &headers) {
        Some(exp) => {
            Duration::from_secs(u64::try_from(exp - now_unix()).unwrap_or(0)).min(MAX_LIFETIME)
        }
        None => MAX_LIFETIME,
    };
    let changes = Changes {
        index: dashboard.index.clone(),
        applied: dashboard.index.subscribe(),
        namespace: params.namespace,
        last_sent: None,
        next_allowed: Instant::now(),
        deadline: Instant::now() + lifetime,
        stop: dashboard.stop.clone(),
        finished: false,
    };
    let mut response = Sse::new(changes.into_stream())
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The state of one client's stream.
struct Changes {
    index: std::sync::Arc<super::index::Index>,
    applied: tokio::sync::watch::Receiver<i64>,
    namespace: String,
    /// The namespace revision last told to the client (`None`: nothing sent yet).
    last_sent: Option<i64>,
    /// No message before this instant (coalescing).
    next_allowed: Instant,
    deadline: Instant,
    stop: tokio_util::sync::CancellationToken,
    finished: bool,
}

impl Changes {
    fn into_stream(self) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
        futures::stream::unfold(self, |mut changes| async move {
            let event = changes.next().await?;
            Some((Ok(event), changes))
        })
    }

    fn message(&mut self, name: &str, revision: i64) -> Event {
        self.last_sent = Some(revision);
        self.next_allowed = Instant::now() + MIN_SPACING;
        Event::default()
            .event(name)
            .data(format!("{{\"revision\":{revision}}}"))
    }

    /// The next message, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let Some(last_sent) = self.last_sent else {
            // First message: where the client starts from.
            let revision = self.index.namespace_revision(&self.namespace);
            return Some(self.message("ready", revision));
        };
        loop {
            // Coalesce: whatever arrives before `next_allowed` becomes one message.
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep_until(self.deadline) => return Some(self.expire()),
                _ = tokio::time::sleep_until(self.next_allowed) => {}
            }
            let revision = self.index.namespace_revision(&self.namespace);
            if revision != last_sent {
                return Some(self.message("change", revision));
            }
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep_until(self.deadline) => return Some(self.expire()),
                changed = self.applied.changed() => {
                    if changed.is_err() {
                        // The index is gone: the backend is stopping.
                        return None;
                    }
                }
            }
        }
    }

    /// The last message: the client should reconnect (with a fresh token).
    fn expire(&mut self) -> Event {
        self.finished = true;
        Event::default().event("reconnect").data("{}")
    }
}
