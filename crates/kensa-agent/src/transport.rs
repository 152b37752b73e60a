//! The connection to the backend: one WebSocket session at a time, re-established forever with
//! backoff (reference §1.2, §1.7–1.8).
//!
//! **Connection manager** ([`ConnectionManager::run`]): the backend URLs are shuffled once per
//! process and each attempt takes the next one, so failures rotate through the backends in a
//! fixed random order. The first attempt is immediate; after each failure the wait starts at
//! `retry-min`, grows by `retry-multiplier` up to `retry-max`, plus a uniform jitter of up to
//! the same amount again (so 1–2×, never above `retry-max`); an HTTP 429 ("overloaded") doubles
//! that wait. A session that got as far as the backend's `entity_config` (or lasted through its
//! grace period) resets the backoff, so the next attempt after it ends is immediate again; a
//! backend that accepts and immediately drops the connection keeps backing off.
//!
//! **Session** (`Session::run`), four concurrent parts so that no direction ever waits on the
//! other (a full socket in one direction must not stop us reading the other):
//! - the *reader* decodes backend frames: `check_request` → the executor (which never blocks
//!   the reader), `entity_config` → the entity, `ack` → the outbox. Any frame counts as traffic.
//! - the *writer* owns the socket's sending half and takes from two bounded lanes, always
//!   preferring the *priority lane* (keepalives, pings, close) over the *event lane*, so
//!   keepalives are never queued behind events. The priority lane holds 8 messages; when it is
//!   full the socket is not draining at all, and the message is dropped (logged) — the
//!   heartbeat then ends the session. The event lane holds 16 frames; the pump waits when it
//!   is full (the events are on disk, nothing is lost).
//! - the *pump* moves events from the outbox to the event lane, oldest first, within the
//!   outbox's in-flight window; in-flight events are released for the next session when this
//!   one ends.
//! - the *control loop*: waits up to 10 s for the first `entity_config`, then sends a keepalive
//!   at once and every `keepalive-interval`, pings every `backend-heartbeat-interval`, and ends
//!   the session when nothing was received for `backend-heartbeat-timeout`.
//!
//! **`max-session-length`**: when set, a session ends after a random time between half of it
//! and all of it (Sensu's rule), with a close frame, and the agent reconnects at once to the
//! next backend URL (or through the load balancer): agents spread again over backends that
//! came back, without an operator reloading anything.
//!
//! Frames above [`kensa_proto::MAX_FRAME_BYTES`] are refused by the WebSocket layer itself,
//! which ends the session with a logged reason.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use kensa_proto::{AgentMessage, BackendMessage, CheckRequest, Refused};
use rand::seq::SliceRandom;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::checks::{CheckExecutor, Refusal};
use crate::config::{AgentConfig, RetryPolicy};
use crate::entity::{unix_now, EntityManager};
use crate::outbox::Outbox;

/// How long a new session waits for the backend's `entity_config` before going on with the
/// local configuration (Sensu's `entityConfigGracePeriod`).
pub const ENTITY_CONFIG_GRACE: Duration = Duration::from_secs(10);

/// Messages waiting on the priority lane (keepalives, pings, close) at most.
const PRIORITY_LANE: usize = 8;
/// Event frames waiting on the event lane at most.
const EVENT_LANE: usize = 16;
/// How long a closing session waits for its close frame to be written.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why the transport cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("trusted-ca-file {path}: {message}")]
    TrustedCa { path: String, message: String },
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cert-file and key-file do not form a usable client certificate: {0}")]
    ClientCertificate(rustls::Error),
}

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("backend is overloaded (HTTP 429)")]
    Overloaded,
    #[error("backend refused the connection: HTTP {0}: {1}")]
    Refused(StatusCode, String),
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    #[error("invalid request header {0}")]
    Header(&'static str),
    #[error("{0}")]
    WebSocket(#[from] tungstenite::Error),
}

/// The reconnect wait (reference §1.8, with the jitter bounded by `max`).
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    /// The wait before jitter for the next failure; `None` right after a reset.
    base: Option<Duration>,
}

impl Backoff {
    pub fn new(policy: RetryPolicy) -> Backoff {
        Backoff { policy, base: None }
    }

    /// The wait before the next attempt, after a failed one. `jitter` is uniform in [0, 1).
    pub fn after_failure(&mut self, jitter: f64, overloaded: bool) -> Duration {
        let base = match self.base {
            None => self.policy.min,
            Some(previous) => previous
                .mul_f64(self.policy.multiplier)
                .min(self.policy.max),
        };
        self.base = Some(base);
        let wait = (base + base.mul_f64(jitter.clamp(0.0, 1.0))).min(self.policy.max);
        if overloaded {
            wait * 2
        } else {
            wait
        }
    }

    /// After a successful session: the next attempt is immediate, then back to `retry-min`.
    pub fn reset(&mut self) {
        self.base = None;
    }
}

/// The backend URLs in a per-process random order, taken in turn.
#[derive(Debug, Clone)]
pub struct BackendSelector {
    urls: Vec<String>,
    next: usize,
}

impl BackendSelector {
    pub fn new(mut urls: Vec<String>, rng: &mut impl Rng) -> BackendSelector {
        urls.shuffle(rng);
        BackendSelector { urls, next: 0 }
    }

    pub fn next_url(&mut self) -> &str {
        let url = &self.urls[self.next % self.urls.len()];
        self.next = (self.next + 1) % self.urls.len();
        url
    }
}

/// Builds the TLS client configuration for `wss://` backends: roots from `trusted-ca-file`
/// only, or no verification at all with `insecure-skip-tls-verify`; the client certificate of
/// `cert-file`/`key-file` when set.
pub fn tls_config(config: &AgentConfig) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let client_certificate = config
        .client_certificate
        .as_ref()
        .map(|certificate| certificate.load())
        .transpose()?;
    if config.insecure_skip_tls_verify {
        let verifier = Arc::new(AcceptAnyCertificate(provider));
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        return Ok(Arc::new(match client_certificate {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(TransportError::ClientCertificate)?,
            None => builder.with_no_client_auth(),
        }));
    }
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &config.trusted_ca_file {
        let ca_error = |message: String| TransportError::TrustedCa {
            path: path.display().to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|err| ca_error(err.to_string()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|err| ca_error(err.to_string()))?;
            roots.add(cert).map_err(|err| ca_error(err.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca_error("no certificate found".to_owned()));
        }
    } else if config
        .backend_urls
        .iter()
        .any(|url| url.starts_with("wss://"))
    {
        tracing::warn!("wss:// backend without trusted-ca-file: no certificate will be trusted");
    }
    let builder = builder.with_root_certificates(roots);
    Ok(Arc::new(match client_certificate {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(TransportError::ClientCertificate)?,
        None => builder.with_no_client_auth(),
    }))
}

/// `insecure-skip-tls-verify`: any certificate is accepted; handshake signatures are still
/// checked (they prove nothing without a trusted certificate, but keep the TLS state sane).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The connection settings a session needs.
#[derive(Debug, Clone)]
struct Settings {
    user: String,
    password: String,
    /// False with a client certificate: it authenticates the agent and, as with Sensu, no
    /// password is sent.
    send_password: bool,
    retry: RetryPolicy,
    handshake_timeout: Duration,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    keepalive_interval: Duration,
    max_session_length: Option<Duration>,
}

/// Keeps the agent connected to one of its backends until shutdown.
pub struct ConnectionManager {
    settings: Settings,
    selector: BackendSelector,
    tls: Arc<rustls::ClientConfig>,
    entity: Arc<EntityManager>,
    outbox: Arc<Outbox>,
    executor: Arc<CheckExecutor>,
    /// Whether a session is up (after its entity config), for the inputs' `/healthz`.
    connected: watch::Sender<bool>,
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    /// `max-session-length` ran out: close, reconnect at once (perhaps elsewhere).
    Rotate,
    /// `established`: the backend got as far as serving the session (see the module docs).
    Lost {
        established: bool,
        reason: String,
    },
}

impl ConnectionManager {
    pub fn new(
        config: &AgentConfig,
        entity: Arc<EntityManager>,
        outbox: Arc<Outbox>,
        executor: Arc<CheckExecutor>,
        connected: watch::Sender<bool>,
    ) -> Result<ConnectionManager, TransportError> {
        Ok(ConnectionManager {
            settings: Settings {
                user: config.user.clone(),
                password: config.password.clone(),
                send_password: config.client_certificate.is_none(),
                retry: config.retry,
                handshake_timeout: config.handshake_timeout,
                heartbeat_interval: config.heartbeat_interval,
                heartbeat_timeout: config.heartbeat_timeout,
                keepalive_interval: Duration::from_secs(config.keepalive_interval.into()),
                max_session_length: config.max_session_length,
            },
            selector: BackendSelector::new(config.backend_urls.clone(), &mut rand::thread_rng()),
            tls: tls_config(config)?,
            entity,
            outbox,
            executor,
            connected,
        })
    }

    /// Connects, serves sessions and reconnects until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.settings.retry);
        loop {
            let url = self.selector.next_url().to_owned();
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                attempt = self.connect(&url) => attempt,
            };
            let overloaded = match attempt {
                Ok(socket) => {
                    tracing::info!(backend = %url, "connected to backend");
                    let session = Session {
                        manager: &self,
                        shutdown: &shutdown,
                    };
                    match session.run(socket).await {
                        SessionEnd::Shutdown => return,
                        SessionEnd::Rotate => {
                            tracing::info!(backend = %url, "max-session-length reached; reconnecting");
                            backoff.reset();
                            continue;
                        }
                        SessionEnd::Lost {
                            established,
                            reason,
                        } => {
                            tracing::warn!(backend = %url, %reason, "disconnected from backend");
                            if established {
                                backoff.reset();
                                continue;
                            }
                            false
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(backend = %url, error = %err, "could not connect to backend");
                    matches!(err, ConnectError::Overloaded)
                }
            };
            let wait = backoff.after_failure(rand::thread_rng().gen::<f64>(), overloaded);
            tracing::debug!(?wait, "waiting before reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn connect(&self, url: &str) -> Result<Socket, ConnectError> {
        let mut request = url.into_client_request()?;
        let subscriptions = self.entity.local_subscriptions().join(",");
        let mut headers = vec![
            (
                kensa_proto::HEADER_AGENT_NAME,
                self.entity.name().to_owned(),
            ),
            (
                kensa_proto::HEADER_NAMESPACE,
                self.entity.namespace().to_owned(),
            ),
            (kensa_proto::HEADER_SUBSCRIPTIONS, subscriptions),
            (
                kensa_proto::HEADER_PROTOCOL,
                kensa_proto::PROTOCOL_VERSION.to_string(),
            ),
        ];
        if self.settings.send_password {
            let credentials = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.settings.user, self.settings.password));
            headers.push((kensa_proto::HEADER_USER, self.settings.user.clone()));
            headers.push((
                header::AUTHORIZATION.as_str(),
                format!("Basic {credentials}"),
            ));
        }
        for (name, value) in headers {
            let value = HeaderValue::from_str(&value).map_err(|_| ConnectError::Header(name))?;
            request.headers_mut().insert(name, value);
        }
        let websocket = WebSocketConfig::default()
            .max_message_size(Some(kensa_proto::MAX_FRAME_BYTES))
            .max_frame_size(Some(kensa_proto::MAX_FRAME_BYTES));
        let connector = if url.starts_with("wss://") {
            Connector::Rustls(self.tls.clone())
        } else {
            Connector::Plain
        };
        let handshake = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(websocket),
            true,
            Some(connector),
        );
        match tokio::time::timeout(self.settings.handshake_timeout, handshake).await {
            Err(_) => Err(ConnectError::Timeout(self.settings.handshake_timeout)),
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(tungstenite::Error::Http(response))) => {
                if response.status() == StatusCode::TOO_MANY_REQUESTS {
                    Err(ConnectError::Overloaded)
                } else {
                    // The backend says why (bad credentials, a certificate naming another agent…).
                    let reason = response
                        .body()
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    Err(ConnectError::Refused(response.status(), reason))
                }
            }
            Ok(Err(err)) => Err(err.into()),
        }
    }
}

/// One connected session; see the module docs for its parts.
struct Session<'a> {
    manager: &'a ConnectionManager,
    shutdown: &'a CancellationToken,
}

/// A spawned task that can be joined from a `select!` (and only once) or stopped.
struct Task<T> {
    handle: Option<JoinHandle<T>>,
}

impl<T> Task<T> {
    fn spawn(future: impl std::future::Future<Output = T> + Send + 'static) -> Task<T>
    where
        T: Send + 'static,
    {
        Task {
            handle: Some(tokio::spawn(future)),
        }
    }

    /// Waits for the task's end; cancel-safe. Pending forever once joined.
    async fn join(&mut self) -> Result<T, tokio::task::JoinError> {
        let Some(handle) = self.handle.as_mut() else {
            return std::future::pending().await;
        };
        let end = handle.await;
        self.handle = None;
        end
    }

    /// Aborts the task and waits until it no longer runs.
    async fn stop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
    }
}

/// The session's tasks; stopped (and awaited) when the session ends, however it ends.
struct SessionTasks {
    reader: Task<Result<(), String>>,
    writer: Task<Result<(), String>>,
    pump: Task<()>,
}

impl SessionTasks {
    async fn stop(&mut self) {
        self.pump.stop().await;
        self.reader.stop().await;
        self.writer.stop().await;
    }
}

impl Session<'_> {
    async fn run(&self, socket: Socket) -> SessionEnd {
        let manager = self.manager;
        let (sink, stream) = socket.split();
        let (priority_tx, priority_rx) = mpsc::channel(PRIORITY_LANE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_LANE);
        let (config_tx, mut config_rx) = oneshot::channel();
        let last_traffic = Arc::new(Mutex::new(Instant::now()));
        let reader = Reader {
            entity: manager.entity.clone(),
            outbox: manager.outbox.clone(),
            executor: manager.executor.clone(),
            last_traffic: last_traffic.clone(),
            first_config: Some(config_tx),
            priority: priority_tx.clone(),
            retry_scheduled: Default::default(),
        };
        let mut tasks = SessionTasks {
            reader: Task::spawn(reader.run(stream)),
            writer: Task::spawn(write_loop(sink, priority_rx, events_rx)),
            pump: Task { handle: None },
        };

        let end = self
            .serve(
                &mut tasks,
                &priority_tx,
                events_tx,
                &mut config_rx,
                &last_traffic,
            )
            .await;
        if matches!(end, SessionEnd::Shutdown | SessionEnd::Rotate) {
            // What is unacknowledged stays in the outbox and goes out on the next session.
            let close = Message::Close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: match end {
                    SessionEnd::Rotate => "max-session-length".into(),
                    _ => "bye".into(),
                },
            }));
            if priority_tx.try_send(close).is_ok() {
                drop(priority_tx);
                // The writer ends after the close frame (or fails); don't wait on a dead socket.
                let _ = tokio::time::timeout(CLOSE_GRACE, tasks.writer.join()).await;
            }
        }
        tasks.stop().await;
        manager.connected.send_replace(false);
        manager.outbox.release_in_flight();
        end
    }

    async fn serve(
        &self,
        tasks: &mut SessionTasks,
        priority: &mpsc::Sender<Message>,
        events: mpsc::Sender<Vec<u8>>,
        config_rx: &mut oneshot::Receiver<()>,
        last_traffic: &Arc<Mutex<Instant>>,
    ) -> SessionEnd {
        let manager = self.manager;
        let settings = &manager.settings;
        let lost = |established: bool, reason: String| SessionEnd::Lost {
            established,
            reason,
        };
        tokio::select! {
            _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
            end = tasks.reader.join() => return lost(false, task_end("reading", end)),
            end = tasks.writer.join() => return lost(false, task_end("writing", end)),
            got = &mut *config_rx => if got.is_err() {
                return lost(false, "connection closed before the entity configuration".into());
            },
            _ = tokio::time::sleep(ENTITY_CONFIG_GRACE) => {
                tracing::warn!("no entity configuration from the backend within {ENTITY_CONFIG_GRACE:?}: using the local one");
            }
        }

        manager.connected.send_replace(true);
        tasks.pump = Task::spawn(pump(manager.outbox.clone(), events));
        let mut keepalive_sequence = 0;
        let mut keepalives = tokio::time::interval(settings.keepalive_interval);
        keepalives.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = Instant::now();
        let mut pings = tokio::time::interval_at(
            start + settings.heartbeat_interval,
            settings.heartbeat_interval,
        );
        // Like Sensu: a random length between half the maximum and the maximum, so that agents
        // connected at the same moment do not all reconnect at the same moment.
        let session_ends = settings.max_session_length.map(|max| {
            let fraction = 0.5 + rand::thread_rng().gen::<f64>() * 0.5;
            start + max.mul_f64(fraction)
        });
        loop {
            let deadline =
                *last_traffic.lock().expect("traffic lock poisoned") + settings.heartbeat_timeout;
            tokio::select! {
                _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                end = tasks.reader.join() => return lost(true, task_end("reading", end)),
                end = tasks.writer.join() => return lost(true, task_end("writing", end)),
                _ = keepalives.tick() => {
                    keepalive_sequence += 1;
                    let keepalive = manager.entity.keepalive(keepalive_sequence, unix_now());
                    let frame = AgentMessage::Keepalive(Box::new(keepalive)).encode();
                    send_priority(priority, Message::Binary(frame.into()), "keepalive");
                }
                _ = pings.tick() => {
                    send_priority(priority, Message::Ping(Default::default()), "ping");
                }
                _ = sleep_until_some(session_ends) => return SessionEnd::Rotate,
                _ = tokio::time::sleep_until(deadline) => {
                    let last = *last_traffic.lock().expect("traffic lock poisoned");
                    if last.elapsed() >= settings.heartbeat_timeout {
                        return lost(true, format!(
                            "nothing received from the backend for {:?}",
                            settings.heartbeat_timeout
                        ));
                    }
                }
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn task_end(what: &str, end: Result<Result<(), String>, tokio::task::JoinError>) -> String {
    match end {
        Ok(Ok(())) => "connection closed by the backend".to_owned(),
        Ok(Err(reason)) => format!("{what} failed: {reason}"),
        Err(err) => format!("{what} task ended: {err}"),
    }
}

/// Queues a control message; a full priority lane means the socket is not draining at all, so
/// the message is dropped and the heartbeat will end the session.
fn send_priority(priority: &mpsc::Sender<Message>, message: Message, what: &str) {
    if priority.try_send(message).is_err() {
        tracing::warn!("{what} dropped: the connection is not draining");
    }
}

/// Owns the sending half: priority lane first, then events.
async fn write_loop(
    mut sink: SplitSink<Socket, Message>,
    mut priority: mpsc::Receiver<Message>,
    mut events: mpsc::Receiver<Vec<u8>>,
) -> Result<(), String> {
    loop {
        let message = tokio::select! {
            biased;
            message = priority.recv() => match message {
                Some(message) => message,
                None => return Ok(()),
            },
            frame = events.recv() => match frame {
                Some(frame) => Message::Binary(frame.into()),
                None => return Ok(()),
            },
        };
        let closing = matches!(message, Message::Close(_));
        sink.send(message).await.map_err(|err| err.to_string())?;
        if closing {
            return Ok(());
        }
    }
}

/// How long an event sent in this session may wait for its ack before it is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Moves events from the outbox to the event lane, within the outbox's window; events whose
/// ack is overdue go out again (see [`Outbox::release_overdue`]).
async fn pump(outbox: Arc<Outbox>, events: mpsc::Sender<Vec<u8>>) {
    loop {
        let batch = outbox.take_sendable();
        if batch.is_empty() {
            tokio::select! {
                _ = outbox.wait_for_work() => {}
                _ = tokio::time::sleep(ACK_TIMEOUT / 3) => {
                    let released = outbox.release_overdue(ACK_TIMEOUT);
                    if released > 0 {
                        tracing::debug!(released, "re-sending events whose ack is overdue");
                    }
                }
            }
            continue;
        }
        for outgoing in batch {
            match outbox.read_frame(&outgoing).await {
                Ok(frame) => {
                    if events.send(frame).await.is_err() {
                        return;
                    }
                }
                Err(err) => tracing::error!(error = %err, "event lost"),
            }
        }
    }
}

/// Decodes and dispatches what the backend sends.
struct Reader {
    entity: Arc<EntityManager>,
    outbox: Arc<Outbox>,
    executor: Arc<CheckExecutor>,
    last_traffic: Arc<Mutex<Instant>>,
    first_config: Option<oneshot::Sender<()>>,
    /// For refusals of round-robin requests.
    priority: mpsc::Sender<Message>,
    /// Whether a re-send the backend asked for ([`kensa_proto::Ack::retry_after_ms`]) is due.
    retry_scheduled: Arc<std::sync::atomic::AtomicBool>,
}

impl Reader {
    async fn run(mut self, mut stream: SplitStream<Socket>) -> Result<(), String> {
        while let Some(message) = stream.next().await {
            let message = message.map_err(|err| err.to_string())?;
            *self.last_traffic.lock().expect("traffic lock poisoned") = Instant::now();
            match message {
                Message::Binary(frame) => self.dispatch(&frame).await,
                Message::Close(frame) => {
                    if let Some(frame) = frame {
                        tracing::info!(code = %frame.code, reason = %frame.reason, "backend closed the session");
                    }
                    return Ok(());
                }
                Message::Text(_) => tracing::warn!("ignoring a text frame from the backend"),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, frame: &[u8]) {
        let message = match BackendMessage::decode(frame) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(error = %err, "ignoring a message from the backend");
                return;
            }
        };
        match message {
            BackendMessage::CheckRequest(request) => self.check_request(*request),
            BackendMessage::EntityConfig(stored) => {
                tracing::debug!(stored = stored.is_some(), "entity configuration received");
                self.entity.set_stored_config(stored.map(|entity| *entity));
                if let Some(first) = self.first_config.take() {
                    let _ = first.send(());
                }
            }
            BackendMessage::Ack(ack) => {
                for rejected in &ack.rejected {
                    tracing::warn!(id = %rejected.id, reason = %rejected.reason, "the backend rejected an event; dropping it");
                }
                if ack.retry_after_ms > 0 {
                    self.schedule_retry(Duration::from_millis(ack.retry_after_ms));
                }
                let mut ids = ack.ids;
                ids.extend(ack.rejected.iter().map(|rejected| rejected.id));
                self.outbox.remove(&ids).await;
            }
        }
    }

    /// The backend could not take some of the events sent so far: those still unacknowledged
    /// after `after` (plus up to as much again of jitter, so that the agents of an overloaded
    /// backend do not all come back at once) are sent again. One pending retry at a time.
    fn schedule_retry(&self, after: Duration) {
        use std::sync::atomic::Ordering;
        if self.retry_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let jitter = after.mul_f64(rand::random::<f64>());
        let (outbox, scheduled) = (self.outbox.clone(), self.retry_scheduled.clone());
        tokio::spawn(async move {
            tokio::time::sleep(after + jitter).await;
            scheduled.store(false, Ordering::Release);
            let released = outbox.release_overdue(after);
            tracing::debug!(released, "re-sending events the backend asked for again");
        });
    }

    fn check_request(&self, request: CheckRequest) {
        tracing::debug!(check = %request.execution_key(), round = %request.round, "check request received");
        let round_robin = request.config.round_robin && !request.round.is_empty();
        let (round, check) = (request.round.clone(), request.execution_key());
        // Refusals are logged by the executor.
        let Err(refusal) = self.executor.handle(request) else {
            return;
        };
        // A round-robin round this agent will not run goes to another agent at once when the
        // backend is told. Not for a duplicate: this agent ran that round, its result is on
        // the way (or in the outbox).
        if round_robin && !matches!(refusal, Refusal::Duplicate) {
            let frame = AgentMessage::Refused(Refused {
                round,
                check,
                reason: refusal.to_string(),
            })
            .encode();
            send_priority(&self.priority, Message::Binary(frame.into()), "a refusal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            min: Duration::from_secs(1),
            max: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(policy());
        // (jitter, overloaded, expected wait in ms)
        let cases = [
            (0.0, false, 1000),
            (0.0, false, 2000),
            (0.5, false, 6000),
            (0.0, false, 8000),
            (0.99, false, 10_000),
            (0.0, false, 10_000),
            (0.0, true, 20_000),
        ];
        for (step, (jitter, overloaded, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                backoff.after_failure(jitter, overloaded),
                Duration::from_millis(expected),
                "step {step}"
            );
        }
        backoff.reset();
        assert_eq!(backoff.after_failure(0.0, false), Duration::from_secs(1));
    }

    #[test]
    fn backends_rotate_in_a_fixed_shuffled_order() {
        let urls: Vec<String> = (1..=4).map(|i| format!("ws://b{i}:8081")).collect();
        let mut selector =
            BackendSelector::new(urls.clone(), &mut rand::rngs::StdRng::seed_from_u64(7));
        let first_round: Vec<String> = (0..4).map(|_| selector.next_url().to_owned()).collect();
        let second_round: Vec<String> = (0..4).map(|_| selector.next_url().to_owned()).collect();
        assert_eq!(first_round, second_round);
        let mut sorted = first_round.clone();
        sorted.sort();
        assert_eq!(sorted, urls);
    }
}
