//! The Sensu 1.x check-result socket (reference §2.9; Sensu's default is `127.0.0.1:3030`, TCP
//! and UDP): scripts written for Sensu 1.x send `{"name": …, "output": …, "status": …}` and get
//! an event, attributed to the proxy entity named in `source` (or `client`) when there is one.
//!
//! TCP: the connection is read until the bytes form a JSON document (at most 5 s and
//! [`MAX_RESULT_BYTES`]), then answered `ok` (stored) or `invalid`; a `ping` (whitespace
//! around it allowed) is answered `pong`. Malformed JSON is answered at once rather than after
//! the deadline as Sensu did. At most [`MAX_TCP_CONNECTIONS`] connections are served at a
//! time; further ones wait in the listen backlog.
//!
//! UDP: one result per datagram (up to 64 KiB), no answer. A malformed datagram or a ping is
//! logged and counted and the listener goes on — in Sensu either one stopped the UDP listener
//! until the agent restarted.

use std::sync::Arc;
use std::time::Duration;

use kensa_types::resources::check::Check;
use kensa_types::resources::entity::Entity;
use kensa_types::resources::event::Event;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{prepare_event, unix_now, EventSink, Input, InputContext, Outcome};

/// How long a TCP client has to send a complete result.
pub const TCP_READ_DEADLINE: Duration = Duration::from_secs(5);
/// The largest result accepted over TCP; a longer one is `invalid`.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// TCP connections served at once.
pub const MAX_TCP_CONNECTIONS: usize = 64;
/// The largest UDP datagram.
const MAX_DATAGRAM_BYTES: usize = 64 * 1024;

/// Serves both sockets until `shutdown` is cancelled.
pub async fn serve<S: EventSink>(
    tcp: TcpListener,
    udp: UdpSocket,
    ctx: InputContext<S>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (tcp_result, udp_result) = tokio::join!(
        serve_tcp(tcp, ctx.clone(), shutdown.clone()),
        serve_udp(udp, ctx, shutdown)
    );
    tcp_result.and(udp_result)
}

/// Serves the TCP socket until `shutdown` is cancelled; connections in progress are dropped
/// without an answer.
pub async fn serve_tcp<S: EventSink>(
    listener: TcpListener,
    ctx: InputContext<S>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "check result socket listening (tcp)");
    }
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Per-connection errors (aborted handshakes, fd exhaustion) must not end the
                    // listener; back off a little in case the cause persists.
                    tracing::warn!(error = %err, "check result socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        // Connections watch the token themselves, so none outlives the shutdown.
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = handle_tcp(stream, &ctx) => {}
            }
            tracing::trace!(%peer, "check result connection closed");
            drop(permit);
        });
    }
    Ok(())
}

/// What a TCP client is told.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Ok,
    Invalid,
    Pong,
}

async fn handle_tcp<S: EventSink>(mut stream: TcpStream, ctx: &InputContext<S>) {
    let deadline = Instant::now() + TCP_READ_DEADLINE;
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let reply = loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        let closed = match read {
            Err(_) => {
                tracing::debug!("check result socket: no complete result before the deadline");
                ctx.counters.count(Input::SocketTcp, Outcome::Invalid);
                break Reply::Invalid;
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "check result socket: read failed");
                return;
            }
            Ok(Ok(0)) => true,
            Ok(Ok(n)) => {
                buffer.extend_from_slice(&chunk[..n]);
                false
            }
        };
        if buffer.len() > MAX_RESULT_BYTES {
            tracing::debug!("check result socket: result too large");
            ctx.counters.count(Input::SocketTcp, Outcome::Invalid);
            break Reply::Invalid;
        }
        let text = buffer.trim_ascii();
        if text == b"ping" {
            break Reply::Pong;
        }
        if !closed && b"ping".starts_with(text) {
            continue; // possibly a ping still arriving
        }
        match serde_json::from_slice::<serde_json::Value>(&buffer) {
            Ok(value) => break handle_result(value, Input::SocketTcp, ctx).await,
            Err(err) if err.is_eof() && !closed => continue,
            Err(err) => {
                tracing::debug!(error = %err, "check result socket: not JSON");
                ctx.counters.count(Input::SocketTcp, Outcome::Invalid);
                break Reply::Invalid;
            }
        }
    };
    let answer: &[u8] = match reply {
        Reply::Ok => b"ok",
        Reply::Invalid => b"invalid",
        Reply::Pong => b"pong",
    };
    if let Err(err) = stream.write_all(answer).await {
        tracing::debug!(error = %err, "check result socket: could not answer");
    }
    let _ = stream.shutdown().await;
}

/// Serves the UDP socket until `shutdown` is cancelled.
pub async fn serve_udp<S: EventSink>(
    socket: UdpSocket,
    ctx: InputContext<S>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = socket.local_addr() {
        tracing::info!(%addr, "check result socket listening (udp)");
    }
    let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            received = socket.recv_from(&mut buffer) => received,
        };
        let n = match received {
            Ok((n, _peer)) => n,
            Err(err) => {
                // E.g. ICMP errors surfacing as ECONNREFUSED: not a reason to stop listening.
                tracing::debug!(error = %err, "check result socket: udp receive failed");
                continue;
            }
        };
        let datagram = &buffer[..n];
        if datagram.trim_ascii() == b"ping" {
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(datagram) {
            Ok(value) => {
                handle_result(value, Input::SocketUdp, &ctx).await;
            }
            Err(err) => {
                tracing::debug!(error = %err, "check result socket: udp datagram is not JSON");
                ctx.counters.count(Input::SocketUdp, Outcome::Invalid);
            }
        }
    }
}

/// A JSON document received on either socket: translated, prepared and stored.
async fn handle_result<S: EventSink>(
    value: serde_json::Value,
    input: Input,
    ctx: &InputContext<S>,
) -> Reply {
    let agent = ctx.agent_entity();
    let event = translate(value)
        .and_then(|event| prepare_event(event, &agent, unix_now()).map_err(|err| err.to_string()));
    let event = match event {
        Ok(event) => event,
        Err(message) => {
            tracing::debug!(input = input.label(), %message, "check result socket: invalid result");
            ctx.counters.count(input, Outcome::Invalid);
            return Reply::Invalid;
        }
    };
    match ctx.deliver(input, event).await {
        Ok(()) => Reply::Ok,
        Err(_) => Reply::Invalid,
    }
}

/// A Sensu 1.x check result (`types/v1/check.go`); other attributes are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LegacyCheckResult {
    name: String,
    output: String,
    status: u32,
    command: String,
    subscribers: Vec<String>,
    interval: u32,
    issued: i64,
    executed: i64,
    duration: f64,
    source: String,
    client: String,
    handler: String,
    handlers: Vec<String>,
}

/// A 1.x result as a v2 event whose entity names the result's source (if any); the agent's
/// entity and the proxy attribution are `prepare_event`'s.
fn translate(value: serde_json::Value) -> Result<Event, String> {
    let result: LegacyCheckResult =
        kensa_types::resources::decode(value).map_err(|err| err.to_string())?;
    if result.name.is_empty() {
        return Err("name: a check name must be provided".to_owned());
    }
    if result.output.is_empty() {
        return Err("output: a check output must be provided".to_owned());
    }
    let mut handlers = result.handlers;
    if !result.handler.is_empty() && !handlers.contains(&result.handler) {
        handlers.push(result.handler);
    }
    let mut check = Check {
        status: result.status,
        command: result.command,
        subscriptions: result.subscribers,
        interval: result.interval,
        issued: result.issued,
        executed: result.executed,
        duration: result.duration,
        output: result.output,
        handlers,
        ..Check::default()
    };
    check.metadata.name = result.name;
    let source = if result.source.is_empty() {
        result.client
    } else {
        result.source
    };
    let entity = (!source.is_empty()).then(|| {
        let mut entity = Entity::default();
        entity.metadata.name = source;
        entity
    });
    Ok(Event {
        check: Some(check),
        entity,
        ..Event::default()
    })
}
