//! Test harness for the agent core: a scriptable fake backend (a real WebSocket server on port
//! 0 speaking `kensa-proto`) and a real agent started against it with a temporary cache-dir.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kensa_agent::config::StartArgs;
use kensa_agent::{Agent, AgentConfig};
use kensa_proto::{AgentMessage, BackendMessage, CheckRequest};
use kensa_types::resources::check::CheckConfig;
use kensa_types::resources::event::Event;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderMap, StatusCode};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something the agent should do promptly.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A plain or TLS connection.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A fake backend: accepts WebSocket sessions and hands them to the test.
pub struct FakeBackend {
    pub url: String,
    sessions: mpsc::Receiver<Session>,
    /// Connections accepted (whether their TLS or WebSocket handshake then succeeded or not).
    pub attempts: Arc<AtomicUsize>,
}

impl FakeBackend {
    pub async fn start() -> FakeBackend {
        FakeBackend::refusing_first(0).await
    }

    /// A backend that answers the first `refusals` handshakes with HTTP 503.
    pub async fn refusing_first(refusals: usize) -> FakeBackend {
        FakeBackend::with(refusals, None).await
    }

    /// A `wss://localhost:<port>` backend presenting `tls`'s certificate.
    pub async fn tls(tls: Arc<tokio_rustls::rustls::ServerConfig>) -> FakeBackend {
        FakeBackend::with(0, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn with(refusals: usize, tls: Option<tokio_rustls::TlsAcceptor>) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match tls {
            Some(_) => format!("wss://localhost:{port}"),
            None => format!("ws://127.0.0.1:{port}"),
        };
        let (sessions_tx, sessions) = mpsc::channel(16);
        let attempts = Arc::new(AtomicUsize::new(0));
        let counter = attempts.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let attempt = counter.fetch_add(1, Ordering::SeqCst);
                let sessions_tx = sessions_tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let stream: Box<dyn Io> = match tls {
                        None => Box::new(stream),
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(stream) => Box::new(stream),
                            Err(_) => return,
                        },
                    };
                    if let Some(session) = handshake(stream, attempt < refusals).await {
                        let _ = sessions_tx.send(session).await;
                    }
                });
            }
        });
        FakeBackend {
            url,
            sessions,
            attempts,
        }
    }

    /// The next session the agent opens.
    pub async fn accept(&mut self) -> Session {
        tokio::time::timeout(PATIENCE, self.sessions.recv())
            .await
            .expect("the agent connects")
            .expect("backend running")
    }

    /// A session opened since the last `accept`, if any (without waiting).
    pub fn try_accept(&mut self) -> Option<Session> {
        self.sessions.try_recv().ok()
    }

    /// The next session, after answering its `entity_config` with nothing stored.
    pub async fn accept_ready(&mut self) -> Session {
        let mut session = self.accept().await;
        session.send(BackendMessage::EntityConfig(None)).await;
        session
    }
}

// The callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
async fn handshake(stream: Box<dyn Io>, refuse: bool) -> Option<Session> {
    let mut headers = HeaderMap::new();
    let callback = |request: &Request, response: Response| {
        headers = request.headers().clone();
        if refuse {
            let mut refusal = ErrorResponse::new(Some("not now".to_owned()));
            *refusal.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Err(refusal);
        }
        Ok(response)
    };
    let socket = tokio_tungstenite::accept_hdr_async(stream, callback)
        .await
        .ok()?;
    Some(Session { headers, socket })
}

/// One agent session, seen from the backend.
pub struct Session {
    pub headers: HeaderMap,
    socket: WebSocketStream<Box<dyn Io>>,
}

impl Session {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("header {name} missing"))
            .to_str()
            .unwrap()
    }

    pub async fn send(&mut self, message: BackendMessage) {
        self.socket
            .send(Message::Binary(message.encode().into()))
            .await
            .expect("send to agent");
    }

    pub async fn send_check(&mut self, request: CheckRequest) {
        self.send(BackendMessage::CheckRequest(Box::new(request)))
            .await;
    }

    pub async fn ack(&mut self, event: &Event) {
        let ack = kensa_proto::Ack {
            ids: vec![event.id.expect("events have ids")],
            ..Default::default()
        };
        self.send(BackendMessage::Ack(ack)).await;
    }

    /// The next protocol message; `None` when the agent closed the session.
    pub async fn next(&mut self) -> Option<AgentMessage> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("the agent sends something")?;
            match frame {
                Ok(Message::Binary(bytes)) => {
                    return Some(AgentMessage::decode(&bytes).expect("valid agent message"))
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    pub async fn next_keepalive(&mut self) -> Event {
        loop {
            match self.next().await.expect("session open") {
                AgentMessage::Keepalive(event) => return *event,
                AgentMessage::Event(_) | AgentMessage::Refused(_) => continue,
            }
        }
    }

    pub async fn next_event(&mut self) -> Event {
        loop {
            match self.next().await.expect("session open") {
                AgentMessage::Event(event) => return *event,
                AgentMessage::Keepalive(_) | AgentMessage::Refused(_) => continue,
            }
        }
    }

    /// Drops the connection without a close handshake, as a crashed backend would.
    pub fn kill(self) {
        drop(self.socket);
    }
}

/// Settings for a test agent: inputs off, fast reconnects, `cache_dir` given.
pub fn agent_args(backends: &[&str], cache_dir: &Path) -> StartArgs {
    StartArgs {
        name: Some("test-agent".into()),
        backend_url: backends.iter().map(|url| url.to_string()).collect(),
        cache_dir: Some(cache_dir.to_owned()),
        disable_api: Some(true),
        disable_sockets: Some(true),
        statsd_disable: Some(true),
        retry_min: Some("20ms".into()),
        retry_max: Some("100ms".into()),
        ..StartArgs::default()
    }
}

/// A running agent and the token that stops it.
pub struct TestAgent {
    pub agent: Agent,
    pub shutdown: CancellationToken,
}

impl TestAgent {
    pub async fn start(config: AgentConfig) -> TestAgent {
        let shutdown = CancellationToken::new();
        let agent = Agent::start(config, shutdown.clone())
            .await
            .expect("agent starts");
        TestAgent { agent, shutdown }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(PATIENCE, self.agent.stopped())
            .await
            .expect("the agent stops");
    }
}

/// A check request for `command` in round `round`.
pub fn check_request(name: &str, command: &str, round: &str) -> CheckRequest {
    let mut config = CheckConfig {
        command: command.into(),
        interval: 60,
        ..CheckConfig::default()
    };
    config.metadata.name = name.into();
    config.metadata.namespace = "default".into();
    CheckRequest {
        config,
        round: round.into(),
        issued: 1_700_000_000,
        ..CheckRequest::default()
    }
}

/// Waits until `condition` holds (polling: for state the agent does not announce, such as a
/// file disappearing).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The events stored in the agent's outbox directory.
pub fn stored_events(cache_dir: &Path) -> usize {
    std::fs::read_dir(cache_dir.join("outbox"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|item| item.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}
