//! Handlers: where a payload goes at the end of a workflow. `pipe` runs a command (through
//! kensa-exec, which kills it at its timeout) with the payload on stdin; `tcp` and `udp` write
//! it to a socket. `set` handlers never get here: workflows are built from their members.
//!
//! Errors are the `Failed` reason of the workflow, so they name the handler.

use std::time::Duration;

use kensa_types::resources::handler::{Handler, HandlerSocket, TYPE_PIPE, TYPE_TCP, TYPE_UDP};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

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
    let local: std::net::SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let udp = UdpSocket::bind(local).await?;
    let sent = udp.send_to(payload, target).await?;
    if sent < payload.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", payload.len()),
        ));
    }
    Ok(())
}
