//! Handlers: where a payload goes at the end of a workflow. `pipe` runs a command (through
//! kensa-exec, which kills it at its timeout) with the payload on stdin; `tcp` and `udp` write
//! it to a socket. `set` handlers never get here: workflows are built from their members.
//!
//! Errors are the `Failed` reason of the workflow, so they name the handler.

use std::time::Duration;

use kensa_types::resources::handler::{Handler, HandlerSocket, TYPE_PIPE, TYPE_TCP, TYPE_UDP};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::{env_pairs, first_line};

/// Sends `payload` to `handler`.
pub(crate) async fn handle(
    handler: &Handler,
    payload: &[u8],
    event_key: &str,
) -> Result<(), String> {
    let name = &handler.metadata.name;
    let timeout = match handler.effective_timeout() {
        0 => None,
        seconds => Some(Duration::from_secs(u64::from(seconds))),
    };
    match handler.handler_type.as_str() {
        TYPE_PIPE => pipe(handler, payload, timeout, event_key).await,
        TYPE_TCP | TYPE_UDP => {
            let socket = handler
                .socket
                .as_ref()
                .ok_or_else(|| format!("handler {name:?} has no socket"))?;
            // effective_timeout is never 0 for tcp/udp.
            let timeout = timeout.unwrap_or(Duration::from_secs(60));
            let sent = if handler.handler_type == TYPE_TCP {
                tokio::time::timeout(timeout, tcp(socket, payload)).await
            } else {
                tokio::time::timeout(timeout, udp(socket, payload)).await
            };
            match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(format!(
                    "handler {name:?}: {} {}:{}: {err}",
                    handler.handler_type, socket.host, socket.port
                )),
                Err(_) => Err(format!("handler {name:?} timed out after {timeout:?}")),
            }
        }
        other => Err(format!("handler {name:?} has unsupported type {other:?}")),
    }
}

async fn pipe(
    handler: &Handler,
    payload: &[u8],
    timeout: Option<Duration>,
    event_key: &str,
) -> Result<(), String> {
    let name = &handler.metadata.name;
    let spec = kensa_exec::Spec {
        command: handler.command.clone(),
        env: env_pairs(&handler.env_vars),
        stdin: Some(payload.to_vec()),
        timeout,
        output_limit: 0,
    };
    let outcome = kensa_exec::run(&spec)
        .await
        .map_err(|err| format!("handler {name:?}: {err}"))?;
    if outcome.timed_out {
        let timeout = timeout.unwrap_or(kensa_exec::DEFAULT_TIMEOUT);
        return Err(format!("handler {name:?} timed out after {timeout:?}"));
    }
    if outcome.status != 0 {
        return Err(format!(
            "handler {name:?} exited with status {}: {}",
            outcome.status,
            first_line(&outcome.output)
        ));
    }
    tracing::debug!(event = %event_key, handler = %name, output = %outcome.output, "pipe handler finished");
    Ok(())
}

fn port(socket: &HandlerSocket) -> std::io::Result<u16> {
    u16::try_from(socket.port)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "port is out of range"))
}

async fn tcp(socket: &HandlerSocket, payload: &[u8]) -> std::io::Result<()> {
    let mut stream = TcpStream::connect((socket.host.as_str(), port(socket)?)).await?;
    stream.write_all(payload).await?;
    stream.shutdown().await
}

async fn udp(socket: &HandlerSocket, payload: &[u8]) -> std::io::Result<()> {
    let target = tokio::net::lookup_host((socket.host.as_str(), port(socket)?))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "host not found"))?;
    let sender = sender(target.is_ipv4())?;
    let sent = loop {
        match sender.send_to(payload, target) {
            // The socket's send buffer is full: the handler's timeout bounds the wait.
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other => break other?,
        }
    };
    if sent < payload.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", payload.len()),
        ));
    }
    Ok(())
}

/// One unconnected, non-blocking socket per address family sends every udp handler's
/// datagrams (a socket per event cost three more system calls each). A std socket, not a
/// Tokio one: it is shared by every runtime of the process (tests start many).
fn sender(ipv4: bool) -> std::io::Result<&'static std::net::UdpSocket> {
    static V4: std::sync::OnceLock<std::net::UdpSocket> = std::sync::OnceLock::new();
    static V6: std::sync::OnceLock<std::net::UdpSocket> = std::sync::OnceLock::new();
    let (cell, local): (_, std::net::SocketAddr) = if ipv4 {
        (&V4, ([0, 0, 0, 0], 0).into())
    } else {
        (&V6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
    };
    if let Some(socket) = cell.get() {
        return Ok(socket);
    }
    let socket = std::net::UdpSocket::bind(local)?;
    socket.set_nonblocking(true)?;
    // Two threads racing here both bind; the loser's socket is dropped.
    Ok(cell.get_or_init(|| socket))
}
