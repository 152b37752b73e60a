//! The far end of a `tcp` or `udp` handler: counts what the backend's pipelines deliver, so a
//! benchmark measures events that went all the way through store → filter → handler, not only
//! events the backend acknowledged. The sink listens for both on the same port.
//!
//! The backend's tcp handler opens one connection per event, writes the payload and shuts its
//! side down; one delivery is therefore one connection read to its end. Its udp handler sends
//! one datagram per event; one datagram is one delivery. A delivery counts as
//! handled when its payload looks like a JSON object (first and last non-blank bytes `{`, `}`)
//! — parsing every payload would spend the CPU the backend is being measured with — and as
//! invalid otherwise (empty, truncated, over [`MAX_PAYLOAD`]).
//!
//! Connections read at once are bounded by [`MAX_CONNECTIONS`]: when all are taken the accept
//! loop waits, and further deliveries wait in the kernel's listen backlog ([`BACKLOG`]; the
//! backend's handler then sees a slow connect, never a refused one while the backlog has room).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::{Notify, Semaphore};

/// Connections being read at once.
const MAX_CONNECTIONS: usize = 1024;
/// Finished connections the kernel queues for `accept` (capped by `net.core.somaxconn`).
const BACKLOG: u32 = 8192;
/// Largest payload accepted; larger ones are counted invalid and dropped.
const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
/// A connection that sends nothing for this long is counted invalid and closed.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Receive buffer asked for the udp socket (the kernel caps it at `net.core.rmem_max`): room
/// for bursts while the load generator is off the CPU. A datagram the kernel drops shows as
/// handled < acknowledged in the report.
const UDP_RECEIVE_BUFFER: usize = 4 * 1024 * 1024;
/// Largest datagram (the udp handler's payload limit).
const MAX_DATAGRAM: usize = 65_536;

#[derive(Debug, Default)]
struct Counters {
    handled: AtomicU64,
    invalid: AtomicU64,
    bytes: AtomicU64,
    accept_errors: AtomicU64,
    /// Woken after every counted delivery (for [`Sink::wait_for`]).
    delivered: Notify,
}

/// Reads a sink's handled count from another task.
#[derive(Clone)]
pub struct CounterReader(Arc<Counters>);

impl CounterReader {
    pub fn handled(&self) -> u64 {
        self.0.handled.load(Ordering::Relaxed)
    }
}

/// A running sink; stops accepting when dropped.
pub struct Sink {
    address: SocketAddr,
    counters: Arc<Counters>,
    accept_loop: tokio::task::JoinHandle<()>,
    receive_loop: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Binds `address` (port 0 for any) for tcp and udp and starts accepting.
    pub async fn bind(address: SocketAddr) -> anyhow::Result<Sink> {
        let listener =
            listen(address).with_context(|| format!("binding the handler sink on {address}"))?;
        let address = listener.local_addr()?;
        let datagrams = UdpSocket::bind(address)
            .await
            .with_context(|| format!("binding the udp handler sink on {address}"))?;
        // Best effort: without it the sink still works, with the kernel's default buffer.
        let _ = nix::sys::socket::setsockopt(
            &datagrams,
            nix::sys::socket::sockopt::RcvBuf,
            &UDP_RECEIVE_BUFFER,
        );
        let counters = Arc::new(Counters::default());
        let accept_loop = tokio::spawn(accept(listener, counters.clone()));
        let receive_loop = tokio::spawn(receive(datagrams, counters.clone()));
        Ok(Sink {
            address,
            counters,
            accept_loop,
            receive_loop,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Deliveries counted as handled so far.
    pub fn handled(&self) -> u64 {
        self.counters.handled.load(Ordering::Relaxed)
    }

    /// A handle on the handled count for another task.
    pub fn counter_reader(&self) -> CounterReader {
        CounterReader(self.counters.clone())
    }

    /// Waits until at least `count` deliveries were handled; false if `timeout` passed first.
    pub async fn wait_for(&self, count: u64, timeout: Duration) -> bool {
        self.wait_until(|sink| sink.handled() >= count, timeout)
            .await
    }

    /// Waits until `done(self)` holds, re-checking after each delivery; false if `timeout`
    /// passed first.
    async fn wait_until(&self, done: impl Fn(&Sink) -> bool, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before checking, so a delivery in between still wakes us.
            let delivered = self.counters.delivered.notified();
            tokio::pin!(delivered);
            delivered.as_mut().enable();
            if done(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, delivered).await.is_err() {
                return done(self);
            }
        }
    }

    pub fn report(&self) -> Value {
        let counters = &self.counters;
        json!({
            "address": self.address.to_string(),
            "handled": counters.handled.load(Ordering::Relaxed),
            "invalid": counters.invalid.load(Ordering::Relaxed),
            "bytes": counters.bytes.load(Ordering::Relaxed),
            "accept_errors": counters.accept_errors.load(Ordering::Relaxed),
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.accept_loop.abort();
        self.receive_loop.abort();
    }
}

/// Binds `address` with a listen backlog of [`BACKLOG`]: the backend's handler returns as soon
/// as it has written and closed, so finished connections queue up faster than one accept loop
/// takes them whenever the load generator is briefly off the CPU. With tokio's default backlog
/// (1,024) the queue overflowed, the kernel dropped connection attempts and the handler's
/// connect waited a full SYN retransmission (1 s), stalling the backend's pipelines (and, by
/// back-pressure, its acknowledgements) in bursts — a load generator artifact, not backend work.
fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

async fn accept(listener: TcpListener, counters: Arc<Counters>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: count it and let the condition pass
                // instead of spinning on it.
                counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let counters = counters.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut payload = Vec::with_capacity(2048);
            let read = tokio::time::timeout(
                READ_TIMEOUT,
                (&mut stream)
                    .take(MAX_PAYLOAD as u64 + 1)
                    .read_to_end(&mut payload),
            )
            .await;
            let valid = matches!(read, Ok(Ok(_))) && payload.len() <= MAX_PAYLOAD;
            counters.count(valid, &payload);
        });
    }
}

async fn receive(socket: UdpSocket, counters: Arc<Counters>) {
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((length, _)) => counters.count(true, &buffer[..length]),
            Err(_) => {
                // ICMP errors reported on the socket and the like: count and go on.
                counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

impl Counters {
    /// Counts one delivery: handled when `read_whole` and the payload looks like a JSON object.
    fn count(&self, read_whole: bool, payload: &[u8]) {
        if read_whole && looks_like_json_object(payload) {
            self.bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            self.handled.fetch_add(1, Ordering::Relaxed);
        } else {
            self.invalid.fetch_add(1, Ordering::Relaxed);
        }
        self.delivered.notify_waiters();
    }
}

fn looks_like_json_object(payload: &[u8]) -> bool {
    let text = payload.trim_ascii();
    text.first() == Some(&b'{') && text.last() == Some(&b'}')
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::*;

    #[test]
    fn payload_shapes() {
        let cases: &[(&[u8], bool)] = &[
            (b"{\"check\":{}}", true),
            (b"  {\"a\":1}\n", true),
            (b"", false),
            (b"{\"truncated\":", false),
            (b"[1,2]", false),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                looks_like_json_object(payload),
                *expected,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    /// The sink's report once it has read `deliveries` (handled or invalid).
    async fn all_read(sink: &Sink, deliveries: u64) -> Value {
        let read = |sink: &Sink| {
            let counters = &sink.counters;
            counters.handled.load(Ordering::Relaxed) + counters.invalid.load(Ordering::Relaxed)
                == deliveries
        };
        assert!(
            sink.wait_until(read, Duration::from_secs(10)).await,
            "{}",
            sink.report()
        );
        sink.report()
    }

    #[tokio::test]
    async fn counts_one_delivery_per_connection() {
        let sink = Sink::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        for payload in [&b"{\"n\":1}"[..], b"{\"n\":2}", b"not json"] {
            let mut stream = TcpStream::connect(sink.address()).await.unwrap();
            stream.write_all(payload).await.unwrap();
            stream.shutdown().await.unwrap();
        }
        let report = all_read(&sink, 3).await;
        assert_eq!(report["handled"], 2, "{report}");
        assert_eq!(report["bytes"], 14, "{report}");
    }

    #[tokio::test]
    async fn counts_one_delivery_per_datagram_on_the_same_port() {
        let sink = Sink::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for payload in [&b"{\"n\":1}"[..], b"{\"n\":22}", b"[]"] {
            sender.send_to(payload, sink.address()).await.unwrap();
        }
        let report = all_read(&sink, 3).await;
        assert_eq!(report["handled"], 2, "{report}");
        assert_eq!(report["invalid"], 1, "{report}");
        assert_eq!(report["bytes"], 15, "{report}");
    }
}
