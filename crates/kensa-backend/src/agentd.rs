//! Agent sessions (reference §1): the WebSocket endpoint agents connect to, the handshake
//! (Basic credentials or a verified client certificate, RBAC `create events`, namespace), and
//! one session per connection.
//!
//! A session is two tasks. The **reader** decodes frames and never waits on another service:
//! keepalives go to keepalived's lane, events to their eventd shard with `try_submit` — when a
//! shard is full the event is simply not acknowledged and the agent re-sends it from its
//! outbox, and the session's next events for [`DEFER_WINDOW`] are left unacknowledged without
//! being parsed (an overloaded backend otherwise spends its time parsing re-sent bursts it
//! cannot take). An ack frame with `retry_after_ms` ([`RETRY_AFTER`]) asks the agent to send
//! them again after that delay rather than after its ack timeout. So a backlog of events can
//! never hold a keepalive back (reference §8.1). The **writer** drains three bounded queues, most urgent first: control frames (entity config),
//! acknowledgements, then check requests (which the dispatcher drops for this agent only when
//! its queue is full). A malformed or oversized frame closes the session with a logged reason.
//!
//! Shedding: while the backend has lost its store ([`Agentd::set_shedding`], driven by cluster
//! membership) every session is closed and new ones are refused with `503`, so agents move to
//! a backend that can record what they send instead of feeding a zombie session.
//!
//! Authentication cost: a verified (user, password, stored hash) triple is remembered as a
//! SHA-256 digest, so a reconnect storm costs a hash per agent, not an argon2/bcrypt check
//! (reference §8.10).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use kensa_proto::{Ack, BackendMessage, Rejected, MAX_FRAME_BYTES};
use kensa_store::Key;
use kensa_types::Kind;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::auth::{rbac, Caller};
use crate::dispatch::{Dispatcher, Frame, SessionHandle, SessionId};
use crate::eventd::{AckBatch, AckTarget, Eventd, Origin, Submission};
use crate::keepalived::Keepalived;
use crate::telemetry::{ReasonLabels, Telemetry};
use crate::tls::{CertificateNames, Peer};
use crate::view::ConfigView;

/// Check requests waiting to be written to one agent.
const REQUEST_QUEUE: usize = 1024;
/// Acknowledgement batches waiting to be written to one agent.
const ACK_QUEUE: usize = 1024;
/// A session that receives nothing (not even the agent's pings) for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// What each session's WebSocket reads into at once. The library's default (128 KiB, zeroed
/// and kept for the session's life) made up most of a connected agent's memory; agent frames
/// are a few KiB, and the buffer still grows for a frame that needs more.
const SOCKET_READ_BUFFER: usize = 8 * 1024;
/// After eventd could not take one of a session's events, how long that session's further
/// events are left unacknowledged without being parsed.
const DEFER_WINDOW: Duration = Duration::from_millis(100);
/// When an agent whose events were deferred is asked to send them again (it adds jitter).
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// The group of agents authenticated by a certificate whose name is no user's.
const AGENTS_GROUP: &str = "system:agents";
/// Most remembered credential digests before the cache is cleared.
const AUTH_CACHE_LIMIT: usize = 100_000;

/// The agent listener's shared state.
pub struct Agentd {
    view: Arc<ConfigView>,
    dispatcher: Arc<Dispatcher>,
    keepalived: Keepalived,
    eventd: Eventd,
    telemetry: Arc<Telemetry>,
    /// Round-robin rounds agents refused, for the round-robin service.
    refusals: mpsc::Sender<RefusedRound>,
    /// Digests of credentials that verified (see the module comment).
    verified: Mutex<HashSet<[u8; 32]>>,
    next_session: AtomicU64,
    /// Per connected agent: its control queue and the entity configuration last pushed.
    sessions: Mutex<HashMap<(String, String), SessionControl>>,
    /// `true` while sessions are shed (see the module comment); sessions watch it.
    shedding: watch::Sender<bool>,
}

struct SessionControl {
    id: SessionId,
    control: mpsc::Sender<Frame>,
    requests: mpsc::Sender<Frame>,
    pushed: Option<Value>,
}

/// A round-robin round an agent refused (`refused` message), for [`crate::rounds`].
#[derive(Debug)]
pub struct RefusedRound {
    pub session: SessionId,
    pub round: String,
}

/// What the handshake established.
struct Hello {
    namespace: String,
    agent: String,
    subscriptions: Vec<String>,
    /// Where the agent connects from, for logs ([`client_address`]).
    client: String,
}

impl Agentd {
    pub fn new(
        view: Arc<ConfigView>,
        dispatcher: Arc<Dispatcher>,
        keepalived: Keepalived,
        eventd: Eventd,
        telemetry: Arc<Telemetry>,
        refusals: mpsc::Sender<RefusedRound>,
    ) -> Arc<Agentd> {
        Arc::new(Agentd {
            view,
            dispatcher,
            keepalived,
            eventd,
            telemetry,
            refusals,
            verified: Mutex::new(HashSet::new()),
            next_session: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            shedding: watch::channel(false).0,
        })
    }

    /// Closes every session and refuses new ones while `shed` is true.
    pub fn set_shedding(&self, shed: bool) {
        self.shedding.send_if_modified(|current| {
            let changed = *current != shed;
            *current = shed;
            changed
        });
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(upgrade))
            .route("/health", get(|| async { "ok" }))
            .route("/ready", get(|| async { "ok" }))
            .with_state(self)
    }

    /// Pushes entity configuration changes to connected agents until `shutdown`.
    pub async fn follow_entities(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.view.subscribe();
        loop {
            let key = tokio::select! {
                _ = shutdown.cancelled() => return,
                change = changes.recv() => match change {
                    Ok(key) => Some(key),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            match key {
                Some(key) if key.kind == "entities" => {
                    self.refresh_entity(&key.namespace, &key.name)
                }
                Some(_) => {}
                None => {
                    // Lagged: re-check every connected agent.
                    let agents: Vec<(String, String)> = self
                        .sessions
                        .lock()
                        .expect("sessions lock poisoned")
                        .keys()
                        .cloned()
                        .collect();
                    for (namespace, agent) in agents {
                        self.refresh_entity(&namespace, &agent);
                    }
                }
            }
        }
    }

    /// Sends the stored entity configuration to the agent when it changed, and moves the
    /// session to the entity's subscriptions.
    fn refresh_entity(&self, namespace: &str, agent: &str) {
        let Some(stored) = self.view.get(&Key::new("entities", namespace, agent)) else {
            return;
        };
        let config = entity_config(&stored);
        let mut sessions = self.sessions.lock().expect("sessions lock poisoned");
        let Some(session) = sessions.get_mut(&(namespace.to_owned(), agent.to_owned())) else {
            return;
        };
        if session.pushed.as_ref() == Some(&config) {
            return;
        }
        let frame = Frame::from(
            BackendMessage::EntityConfig(serde_json::from_value(stored.as_ref().clone()).ok())
                .encode(),
        );
        if session.control.try_send(frame).is_err() {
            return;
        }
        self.dispatcher.register(
            SessionHandle {
                id: session.id,
                namespace: namespace.to_owned(),
                agent: agent.to_owned(),
                requests: session.requests.clone(),
            },
            subscriptions_of(&stored, agent),
        );
        session.pushed = Some(config);
    }

    /// Basic credentials → the enabled user they verify as.
    async fn password_caller(&self, headers: &HeaderMap) -> Result<Caller, (StatusCode, String)> {
        let Some((username, password)) = crate::api::auth::basic_credentials(headers) else {
            return Err((
                StatusCode::UNAUTHORIZED,
                "missing credentials: no Basic authorization and no verified client certificate"
                    .into(),
            ));
        };
        let user = self
            .view
            .get(&Key::new("users", "", &username))
            .filter(|user| !user["disabled"].as_bool().unwrap_or(false))
            .ok_or((StatusCode::UNAUTHORIZED, "bad credentials".to_owned()))?;
        let stored_hash = user["password_hash"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let digest: [u8; 32] =
            Sha256::digest(format!("{username}\0{password}\0{stored_hash}")).into();
        let known = self
            .verified
            .lock()
            .expect("auth cache poisoned")
            .contains(&digest);
        if !known {
            if !crate::auth::password::verify_blocking(password, stored_hash).await {
                self.telemetry.auth_failures.inc();
                return Err((StatusCode::UNAUTHORIZED, "bad credentials".into()));
            }
            let mut verified = self.verified.lock().expect("auth cache poisoned");
            if verified.len() >= AUTH_CACHE_LIMIT {
                verified.clear();
            }
            verified.insert(digest);
        }
        Ok(crate::api::auth::caller_for(&username, &user, false))
    }

    /// A verified client certificate (`tls.rs`) speaks for the names it carries: the agent
    /// name must be its common name or one of its DNS names, so one host's certificate cannot
    /// report as another. It authenticates as the user its common name names (with that
    /// user's groups; refused when the user is disabled) or, when there is no such user, as
    /// an agent of group `system:agents` — a fleet needs no user per host.
    fn certificate_caller(
        &self,
        names: &CertificateNames,
        agent: &str,
    ) -> Result<Caller, (StatusCode, String)> {
        if !names.names(agent) {
            self.telemetry.auth_failures.inc();
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "the client certificate (common name {:?}, DNS names {:?}) does not name agent {agent:?}",
                    names.common_name.as_deref().unwrap_or_default(),
                    names.dns_names
                ),
            ));
        }
        let username = names.common_name.as_deref().unwrap_or(agent);
        match self.view.get(&Key::new("users", "", username)) {
            Some(user) if user["disabled"].as_bool().unwrap_or(false) => {
                self.telemetry.auth_failures.inc();
                Err((
                    StatusCode::UNAUTHORIZED,
                    format!("user {username:?} is disabled"),
                ))
            }
            Some(user) => Ok(crate::api::auth::caller_for(username, &user, false)),
            None => Ok(crate::api::auth::caller_for(
                username,
                &json!({"groups": [AGENTS_GROUP]}),
                false,
            )),
        }
    }

    async fn handshake(
        &self,
        headers: &HeaderMap,
        peer: &Peer,
    ) -> Result<Hello, (StatusCode, String)> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let protocol = header(kensa_proto::HEADER_PROTOCOL);
        if !protocol.is_empty() && protocol != kensa_proto::PROTOCOL_VERSION.to_string() {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("unsupported Kensa-Protocol {protocol:?}"),
            ));
        }
        let agent = header(kensa_proto::HEADER_AGENT_NAME);
        if !kensa_types::meta::NAME.is_match(&agent) {
            return Err((
                StatusCode::BAD_REQUEST,
                format!(
                    "{}: invalid agent name {agent:?}",
                    kensa_proto::HEADER_AGENT_NAME
                ),
            ));
        }
        let namespace = match header(kensa_proto::HEADER_NAMESPACE) {
            ns if ns.is_empty() => "default".to_owned(),
            ns => ns,
        };

        let caller = match &peer.certificate {
            Some(names) => self.certificate_caller(names, &agent)?,
            None => self.password_caller(headers).await?,
        };
        let allowed = rbac::allowed(
            self.view.as_ref(),
            &caller,
            &rbac::Request {
                verb: "create",
                resource: "events",
                namespace: Some(&namespace),
                name: Some(&agent),
            },
        );
        if !allowed {
            self.telemetry.rbac_denials.inc();
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "user {:?} may not create events in namespace {namespace:?}",
                    caller.username
                ),
            ));
        }
        if self
            .view
            .get(&Key::new("namespaces", "", &namespace))
            .is_none()
        {
            return Err((
                StatusCode::NOT_FOUND,
                format!("namespace \"{namespace}\" not found"),
            ));
        }
        let mut subscriptions: Vec<String> = header(kensa_proto::HEADER_SUBSCRIPTIONS)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let own = format!("entity:{agent}");
        if !subscriptions.contains(&own) {
            subscriptions.push(own);
        }
        Ok(Hello {
            namespace,
            agent,
            subscriptions,
            client: client_address(peer, headers),
        })
    }
}

async fn upgrade(
    State(agentd): State<Arc<Agentd>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if *agentd.shedding.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this backend has lost its store; try another backend",
        )
            .into_response();
    }
    match agentd.handshake(&headers, &peer).await {
        Ok(hello) => ws
            .read_buffer_size(SOCKET_READ_BUFFER)
            .max_message_size(MAX_FRAME_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            .on_upgrade(move |socket| run_session(agentd, hello, socket)),
        Err((status, message)) => {
            let client = client_address(&peer, &headers);
            tracing::info!(%client, %status, %message, "agent handshake refused");
            (status, message).into_response()
        }
    }
}

/// The connection's remote address and, behind a proxy such as the nginx recipe in `deploy/`,
/// the `X-Forwarded-For` it added: `10.0.0.2:51234 for 192.0.2.7`. For logs only — the
/// header is whatever the connecting side says, so nothing is decided on it.
fn client_address(peer: &Peer, headers: &HeaderMap) -> String {
    match headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        Some(forwarded) => format!("{} for {forwarded}", peer.address),
        None => peer.address.to_string(),
    }
}

/// The user-owned part of an entity, compared to decide whether to push it again.
fn entity_config(entity: &Value) -> Value {
    json!({
        "entity_class": entity["entity_class"],
        "subscriptions": entity["subscriptions"],
        "labels": entity["metadata"]["labels"],
        "annotations": entity["metadata"]["annotations"],
        "deregister": entity["deregister"],
        "deregistration": entity["deregistration"],
        "redact": entity["redact"],
        "keepalive_handlers": entity["keepalive_handlers"],
    })
}

fn subscriptions_of(entity: &Value, agent: &str) -> Vec<String> {
    let mut subscriptions: Vec<String> = entity["subscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    let own = format!("entity:{agent}");
    if !subscriptions.contains(&own) {
        subscriptions.push(own);
    }
    subscriptions
}

async fn run_session(agentd: Arc<Agentd>, hello: Hello, socket: WebSocket) {
    let id = agentd.next_session.fetch_add(1, Ordering::Relaxed);
    let Hello {
        namespace,
        agent,
        mut subscriptions,
        client,
    } = hello;
    let (mut sink, mut stream) = socket.split();
    let (request_tx, mut request_rx) = mpsc::channel::<Frame>(REQUEST_QUEUE);
    let (ack_tx, mut ack_rx) = mpsc::channel::<AckBatch>(ACK_QUEUE);
    let (control_tx, mut control_rx) = mpsc::channel::<Frame>(16);

    // The stored entity configuration wins over the agent's flags (reference §1.10).
    let stored = agentd.view.get(&Key::new("entities", &namespace, &agent));
    let pushed = stored.as_ref().map(|entity| entity_config(entity));
    let first = BackendMessage::EntityConfig(
        stored
            .as_ref()
            .and_then(|entity| serde_json::from_value(entity.as_ref().clone()).ok()),
    );
    if let Some(entity) = &stored {
        subscriptions = subscriptions_of(entity, &agent);
    }
    let _ = control_tx.try_send(Frame::from(first.encode()));
    {
        let mut sessions = agentd.sessions.lock().expect("sessions lock poisoned");
        sessions.insert(
            (namespace.clone(), agent.clone()),
            SessionControl {
                id,
                control: control_tx.clone(),
                requests: request_tx.clone(),
                pushed,
            },
        );
    }
    agentd.dispatcher.register(
        SessionHandle {
            id,
            namespace: namespace.clone(),
            agent: agent.clone(),
            requests: request_tx.clone(),
        },
        subscriptions,
    );
    agentd.eventd.residents().enter(&namespace, &agent);
    agentd.telemetry.agent_sessions.inc();
    agentd.telemetry.agent_connects.inc();
    tracing::info!(namespace, agent, session = id, %client, "agent connected");

    let writer = tokio::spawn(async move {
        loop {
            let frame: Frame = tokio::select! {
                biased;
                control = control_rx.recv() => match control {
                    Some(frame) => frame,
                    None => break,
                },
                ack = ack_rx.recv() => match ack {
                    Some(batch) => BackendMessage::Ack(Ack {
                        ids: batch.ids,
                        rejected: batch
                            .rejected
                            .into_iter()
                            .map(|(id, reason)| Rejected { id, reason })
                            .collect(),
                        retry_after_ms: batch.retry_after_ms,
                    })
                    .encode()
                    .into(),
                    None => break,
                },
                request = request_rx.recv() => match request {
                    Some(frame) => frame,
                    None => break,
                },
            };
            if sink.send(Message::Binary(frame)).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let ack_target = AckTarget {
        session: id,
        acks: ack_tx,
    };
    let mut shedding = agentd.shedding.subscribe();
    let mut deferring_until: Option<Instant> = None;
    let close_reason = loop {
        let read = tokio::select! {
            _ = shedding.wait_for(|shed| *shed) => break Some("shed"),
            read = tokio::time::timeout(IDLE_TIMEOUT, stream.next()) => read,
        };
        let message = match read {
            Err(_) => break Some("idle timeout"),
            Ok(None) => break None,
            Ok(Some(Err(err))) => {
                tracing::warn!(namespace, agent, %err, "agent session read error");
                break Some("read error");
            }
            Ok(Some(Ok(message))) => message,
        };
        let bytes: Frame = match message {
            Message::Binary(bytes) => bytes,
            Message::Text(text) => Frame::copy_from_slice(text.as_str().as_bytes()),
            Message::Close(_) => break None,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if let Err(reason) = handle_frame(
            &agentd,
            &namespace,
            &agent,
            &ack_target,
            &mut deferring_until,
            &bytes,
        ) {
            tracing::warn!(namespace, agent, %reason, "closing agent session: bad frame");
            break Some("bad frame");
        }
    };
    if let Some(reason) = close_reason {
        agentd
            .telemetry
            .agent_session_errors
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    agentd.dispatcher.unregister(id);
    agentd.eventd.residents().leave(&namespace, &agent);
    {
        let mut sessions = agentd.sessions.lock().expect("sessions lock poisoned");
        let slot = (namespace.clone(), agent.clone());
        if sessions.get(&slot).is_some_and(|s| s.id == id) {
            sessions.remove(&slot);
        }
    }
    writer.abort();
    agentd.telemetry.agent_sessions.dec();
    tracing::info!(namespace, agent, session = id, "agent disconnected");
}

/// Handles one frame. `Err` means the frame is malformed and the session must close; an event
/// that is well-formed but invalid is refused through its acknowledgement instead.
fn handle_frame(
    agentd: &Agentd,
    namespace: &str,
    agent: &str,
    acks: &AckTarget,
    deferring_until: &mut Option<Instant>,
    bytes: &[u8],
) -> Result<(), String> {
    let (kind, body) = kensa_proto::split_frame(bytes).map_err(|err| err.to_string())?;
    if kind == kensa_proto::TYPE_EVENT
        && deferring_until.is_some_and(|until| Instant::now() < until)
    {
        // Left unacknowledged without being parsed: the agent re-sends it.
        agentd.telemetry.events_deferred.inc();
        return Ok(());
    }
    if kind == kensa_proto::TYPE_REFUSED {
        let refused: kensa_proto::Refused =
            serde_json::from_slice(body).map_err(|err| format!("invalid {kind} message: {err}"))?;
        tracing::info!(namespace, agent, round = %refused.round, reason = %refused.reason, "agent refused a round-robin round");
        // Full: the round's deadline hands it to another agent instead.
        let _ = agentd.refusals.try_send(RefusedRound {
            session: acks.session,
            round: refused.round,
        });
        return Ok(());
    }
    let mut event: Value =
        serde_json::from_slice(body).map_err(|err| format!("invalid {kind} message: {err}"))?;
    if !event.is_object() {
        return Err(format!("invalid {kind} message: not a JSON object"));
    }
    match kind {
        kensa_proto::TYPE_KEEPALIVE => {
            scope_to_session(&mut event, namespace, agent);
            match Kind::Event.normalize(event) {
                Ok(event) => {
                    if !agentd.keepalived.try_submit(event) {
                        tracing::warn!(namespace, agent, "keepalive lane full; keepalive dropped");
                    }
                }
                Err(err) => tracing::warn!(namespace, agent, %err, "invalid keepalive ignored"),
            }
            Ok(())
        }
        kensa_proto::TYPE_EVENT => {
            let Some(id) = event["id"]
                .as_str()
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
            else {
                return Err("event without an id".into());
            };
            scope_to_session(&mut event, namespace, agent);
            match Kind::Event.normalize(event) {
                Ok(event) => {
                    let submission = Submission::result(event, Origin::Agent(acks.clone()));
                    // Full: not acknowledged; the agent re-sends it later. The agent's next
                    // events for a moment are deferred unparsed: an overloaded backend must not
                    // spend its time parsing events it cannot take (re-sent bursts are many).
                    if agentd.eventd.try_submit(submission).is_err() {
                        *deferring_until = Some(Instant::now() + DEFER_WINDOW);
                        // Tell the agent to send what it is missing acks for again soon, rather
                        // than after its ack timeout (which made the ingest tail of a mass
                        // connect tens of seconds). Full: the ack timeout still applies.
                        let _ = acks.acks.try_send(AckBatch {
                            retry_after_ms: RETRY_AFTER.as_millis() as u64,
                            ..AckBatch::default()
                        });
                    }
                }
                Err(err) => {
                    agentd.telemetry.events_rejected.inc();
                    let _ = acks.acks.try_send(AckBatch {
                        rejected: vec![(id, err.to_string())],
                        ..AckBatch::default()
                    });
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected message type {other:?} from an agent")),
    }
}

/// Events from a session belong to the session's namespace; the agent's own entity carries its
/// `entity:<name>` subscription.
fn scope_to_session(event: &mut Value, namespace: &str, agent: &str) {
    event["metadata"]["namespace"] = json!(namespace);
    if event["entity"].is_object() {
        event["entity"]["metadata"]["namespace"] = json!(namespace);
        if event["entity"]["metadata"]["name"] == json!(agent) {
            crate::api::special::ensure_entity_subscription(&mut event["entity"]);
        }
    }
    if event["check"].is_object() {
        event["check"]["metadata"]["namespace"] = json!(namespace);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_names_the_proxy_and_whom_it_forwards() {
        let peer = Peer {
            address: "10.0.0.2:51234".parse().unwrap(),
            certificate: None,
        };
        let mut headers = HeaderMap::new();
        assert_eq!(client_address(&peer, &headers), "10.0.0.2:51234");
        headers.insert("x-forwarded-for", "192.0.2.7".parse().unwrap());
        assert_eq!(
            client_address(&peer, &headers),
            "10.0.0.2:51234 for 192.0.2.7"
        );
    }
}
