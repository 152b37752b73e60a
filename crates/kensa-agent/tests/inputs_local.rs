//! The agent's local inputs over real sockets on port 0: the HTTP API, the Sensu 1.x
//! check-result socket (TCP and UDP) and StatsD. Events land in a channel sink standing in for
//! the outbox; what a local client sees (status codes, replies) and what reaches the sink are
//! what is asserted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kensa_agent::inputs::{self, EventSink, Input, InputContext, Outcome};
use kensa_agent::outbox::OutboxError;
use kensa_types::resources::entity::Entity;
use kensa_types::resources::event::Event;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const AGENT: &str = "agent-1";
const WAIT: Duration = Duration::from_secs(5);

/// A sink that hands events to the test; `failing` makes it refuse them like a full outbox.
struct ChannelSink {
    events: mpsc::Sender<Event>,
    failing: AtomicBool,
}

impl EventSink for ChannelSink {
    async fn push(&self, event: Event) -> Result<(), OutboxError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(OutboxError::Full(1));
        }
        // Bounded: a test that stops reading makes the input wait, as a slow disk would.
        self.events.send(event).await.expect("test receiver alive");
        Ok(())
    }
}

struct Harness {
    ctx: InputContext<ChannelSink>,
    events: mpsc::Receiver<Event>,
    connected: watch::Sender<bool>,
    shutdown: CancellationToken,
    // Keeps the entity channel open.
    _entity: watch::Sender<Arc<Entity>>,
}

impl Harness {
    fn new() -> Harness {
        let (tx, events) = mpsc::channel(16);
        let sink = Arc::new(ChannelSink {
            events: tx,
            failing: AtomicBool::new(false),
        });
        let mut entity = Entity::default();
        entity.metadata.name = AGENT.to_owned();
        entity.metadata.namespace = "default".to_owned();
        entity.entity_class = "agent".to_owned();
        let (entity_tx, entity_rx) = watch::channel(Arc::new(entity));
        let (connected, connected_rx) = watch::channel(false);
        Harness {
            ctx: InputContext::new(sink, entity_rx, connected_rx),
            events,
            connected,
            shutdown: CancellationToken::new(),
            _entity: entity_tx,
        }
    }

    async fn next_event(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event within the deadline")
            .expect("sink open")
    }

    fn assert_no_event(&mut self) {
        assert!(
            self.events.try_recv().is_err(),
            "no event may reach the outbox"
        );
    }

    fn count(&self, input: Input, outcome: Outcome) -> u64 {
        self.ctx.counters.get(input, outcome)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP API

async fn start_api(harness: &Harness) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(inputs::api::serve(
        listener,
        harness.ctx.clone(),
        harness.shutdown.clone(),
    ));
    addr
}

/// One HTTP/1.1 request with `Connection: close`: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let body = body.to_vec();
    // Written concurrently: the server may answer (413) before reading everything.
    let writer = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&body).await;
        writer
    });
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, reader.read_to_end(&mut response))
        .await
        .expect("response within the deadline")
        .expect("read response");
    drop(writer.await);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn api_accepts_an_event_and_prepares_it_like_sensu() {
    let mut harness = Harness::new();
    let addr = start_api(&harness).await;
    let body = json!({
        "check": {"metadata": {"name": "backup"}, "status": 1, "output": "backup failed"},
    });
    let (status, _) = http(addr, "POST", "/events", body.to_string().as_bytes()).await;
    assert_eq!(status, 202);

    let event = harness.next_event().await;
    let entity = event.entity.as_ref().expect("entity");
    assert_eq!(
        entity.metadata.name, AGENT,
        "the agent's entity is attached"
    );
    assert_eq!(event.metadata.namespace, "default");
    assert!(event.id.is_some(), "a fresh id");
    assert!(
        event.timestamp > 1_600_000_000,
        "timestamp is now, in seconds"
    );
    let check = event.check.as_ref().expect("check");
    assert_eq!(check.metadata.name, "backup");
    assert_eq!(check.metadata.namespace, "default");
    assert_eq!((check.status, check.output.as_str()), (1, "backup failed"));
    assert_eq!(check.interval, 1, "interval 0 becomes 1");
    assert!(check.executed > 1_600_000_000, "executed is now");
    assert_eq!(check.processed_by, AGENT);
    assert_eq!(check.proxy_entity_name, "");
    assert_eq!(harness.count(Input::Api, Outcome::Accepted), 1);
}

#[tokio::test]
async fn api_turns_another_entity_into_a_proxy_entity() {
    let mut harness = Harness::new();
    let addr = start_api(&harness).await;
    for (entity_name, proxy) in [("switch-1", "switch-1"), (AGENT, ""), ("", "")] {
        let body = json!({
            "entity": {"metadata": {"name": entity_name}},
            "check": {"metadata": {"name": "ping"}, "output": "ok", "executed": 1700000000},
            "timestamp": 1700000001,
        });
        let (status, body_text) = http(addr, "POST", "/events", body.to_string().as_bytes()).await;
        assert_eq!(status, 202, "{entity_name:?}: {body_text}");
        let event = harness.next_event().await;
        let check = event.check.expect("check");
        assert_eq!(check.proxy_entity_name, proxy, "entity {entity_name:?}");
        assert_eq!(event.entity.expect("entity").metadata.name, AGENT);
        assert_eq!(check.executed, 1_700_000_000, "a given executed is kept");
        assert_eq!(event.timestamp, 1_700_000_001, "a given timestamp is kept");
    }
}

#[tokio::test]
async fn api_refuses_invalid_events_naming_the_field() {
    let mut harness = Harness::new();
    let addr = start_api(&harness).await;
    let cases: &[(&str, &str)] = &[
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (
            r#"{"metrics": {"points": []}}"#,
            "check: event must contain a check",
        ),
        (r#"{"check": {"output": "x"}}"#, "check.metadata.name"),
        (
            r#"{"check": {"metadata": {"name": "bad name"}}}"#,
            "check.metadata.name",
        ),
        (
            r#"{"check": {"metadata": {"name": "x"}, "status": "one"}}"#,
            "check.status",
        ),
        (
            r#"{"check": {"metadata": {"name": "x"}, "ttl": 2}}"#,
            "check.ttl",
        ),
        (
            r#"{"check": {"metadata": {"name": "x"}}, "entity": {"metadata": {"name": "no spaces"}}}"#,
            "entity.metadata.name",
        ),
        (
            r#"{"check": {"metadata": {"name": "x"}}, "metadata": {"name": "named"}}"#,
            "metadata.name",
        ),
    ];
    for (body, field) in cases {
        let (status, message) = http(addr, "POST", "/events", body.as_bytes()).await;
        assert_eq!(status, 400, "{body}: {message}");
        assert!(
            message.contains(field),
            "{body}: {message:?} should name {field:?}"
        );
    }
    harness.assert_no_event();
    assert_eq!(
        harness.count(Input::Api, Outcome::Invalid),
        cases.len() as u64
    );
}

#[tokio::test]
async fn api_refuses_bodies_over_one_mebibyte() {
    let mut harness = Harness::new();
    let addr = start_api(&harness).await;
    let mut body = br#"{"check": {"metadata": {"name": "x"}}, "padding": ""#.to_vec();
    body.resize(inputs::api::MAX_BODY_BYTES, b'a');
    body.extend_from_slice(br#""}"#);
    let (status, _) = http(addr, "POST", "/events", &body).await;
    assert_eq!(status, 413);
    harness.assert_no_event();
}

#[tokio::test]
async fn api_answers_503_when_the_outbox_refuses() {
    let mut harness = Harness::new();
    let addr = start_api(&harness).await;
    harness.ctx.outbox.failing.store(true, Ordering::SeqCst);
    let body = json!({"check": {"metadata": {"name": "x"}, "output": "y"}}).to_string();
    let (status, message) = http(addr, "POST", "/events", body.as_bytes()).await;
    assert_eq!(status, 503);
    assert!(message.contains("outbox is full"), "{message}");
    harness.assert_no_event();
    assert_eq!(harness.count(Input::Api, Outcome::PushFailed), 1);
}

#[tokio::test]
async fn api_health_follows_the_backend_connection() {
    let harness = Harness::new();
    let addr = start_api(&harness).await;
    assert_eq!(
        http(addr, "GET", "/healthz", b"").await,
        (503, "sensu backend unavailable".to_owned())
    );
    harness.connected.send_replace(true);
    assert_eq!(
        http(addr, "GET", "/healthz", b"").await,
        (200, "ok".to_owned())
    );
}

#[tokio::test]
async fn api_version_metrics_and_unknown_routes() {
    let mut harness = Harness::new();
    let addr = start_api(&harness).await;

    let (status, body) = http(addr, "GET", "/version", b"").await;
    assert_eq!(status, 200);
    let version: Value = serde_json::from_str(&body).expect("version is JSON");
    assert_eq!(version, json!({"version": env!("CARGO_PKG_VERSION")}));

    let good = json!({"check": {"metadata": {"name": "x"}, "output": "y"}}).to_string();
    assert_eq!(http(addr, "POST", "/events", good.as_bytes()).await.0, 202);
    harness.next_event().await;
    assert_eq!(http(addr, "POST", "/events", b"nope").await.0, 400);
    let (status, metrics) = http(addr, "GET", "/metrics", b"").await;
    assert_eq!(status, 200);
    for line in [
        "# TYPE kensa_agent_input_accepted_total counter",
        "kensa_agent_input_accepted_total{input=\"api\"} 1",
        "kensa_agent_input_invalid_total{input=\"api\"} 1",
        "kensa_agent_input_accepted_total{input=\"statsd\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }

    assert_eq!(http(addr, "GET", "/events", b"").await.0, 405);
    assert_eq!(http(addr, "GET", "/brew", b"").await.0, 404);
}

// ---------------------------------------------------------------------------------------------
// Sensu 1.x check-result socket

async fn start_socket(harness: &Harness) -> (SocketAddr, SocketAddr) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
    let addrs = (
        tcp.local_addr().expect("tcp"),
        udp.local_addr().expect("udp"),
    );
    tokio::spawn(inputs::socket::serve(
        tcp,
        udp,
        harness.ctx.clone(),
        harness.shutdown.clone(),
    ));
    addrs
}

/// Sends `payload` on a new TCP connection, half-closes it, and returns the reply.
async fn tcp_exchange(addr: SocketAddr, payload: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(payload).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut reply = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut reply))
        .await
        .expect("reply within the deadline")
        .expect("read reply");
    reply
}

#[tokio::test]
async fn tcp_socket_translates_a_sensu_1_result() {
    let mut harness = Harness::new();
    let (tcp, _) = start_socket(&harness).await;
    let result = json!({
        "name": "disk", "output": "DISK CRITICAL", "status": 2, "command": "check-disk",
        "interval": 60, "duration": 0.5, "handlers": ["mail"], "handler": "pager",
        "subscribers": ["linux"], "refresh": 300
    });
    assert_eq!(tcp_exchange(tcp, result.to_string().as_bytes()).await, "ok");

    let event = harness.next_event().await;
    assert_eq!(event.entity.as_ref().expect("entity").metadata.name, AGENT);
    let check = event.check.expect("check");
    assert_eq!(check.metadata.name, "disk");
    assert_eq!((check.status, check.output.as_str()), (2, "DISK CRITICAL"));
    assert_eq!(check.command, "check-disk");
    assert_eq!((check.interval, check.duration), (60, 0.5));
    assert_eq!(check.handlers, ["mail", "pager"]);
    assert_eq!(check.subscriptions, ["linux"]);
    assert_eq!(check.proxy_entity_name, "");
    assert_eq!(check.processed_by, AGENT);
    assert_eq!(harness.count(Input::SocketTcp, Outcome::Accepted), 1);
}

#[tokio::test]
async fn tcp_socket_source_or_client_is_a_proxy_entity() {
    let mut harness = Harness::new();
    let (tcp, _) = start_socket(&harness).await;
    for (field, name, proxy) in [
        ("source", "router-1", "router-1"),
        ("client", "printer-2", "printer-2"),
        ("source", AGENT, ""),
    ] {
        let result = json!({"name": "ping", "output": "up", field: name});
        assert_eq!(tcp_exchange(tcp, result.to_string().as_bytes()).await, "ok");
        let event = harness.next_event().await;
        assert_eq!(
            event.check.expect("check").proxy_entity_name,
            proxy,
            "{field}={name}"
        );
        assert_eq!(event.entity.expect("entity").metadata.name, AGENT);
    }
}

#[tokio::test]
async fn tcp_socket_answers_invalid_and_pong() {
    let mut harness = Harness::new();
    let (tcp, _) = start_socket(&harness).await;
    let cases: &[(&[u8], &str)] = &[
        (b"ping", "pong"),
        (b"  ping \r\n", "pong"),
        (b"pingpong", "invalid"),
        (b"hello", "invalid"),
        (br#"{"name": "x""#, "invalid"),
        (br#"{"output": "no name"}"#, "invalid"),
        (br#"{"name": "no output"}"#, "invalid"),
        (br#"{"name": "bad name", "output": "x"}"#, "invalid"),
        (br#"{"name": "x", "output": "y", "status": -1}"#, "invalid"),
        (
            br#"{"name": "x", "output": "y", "source": "bad source"}"#,
            "invalid",
        ),
        (b"[1]", "invalid"),
        (b"", "invalid"),
    ];
    for (payload, reply) in cases {
        assert_eq!(
            tcp_exchange(tcp, payload).await,
            *reply,
            "{}",
            String::from_utf8_lossy(payload)
        );
    }
    harness.assert_no_event();
}

#[tokio::test]
async fn tcp_socket_waits_for_a_result_sent_in_pieces() {
    let mut harness = Harness::new();
    let (tcp, _) = start_socket(&harness).await;
    let mut stream = TcpStream::connect(tcp).await.expect("connect");
    stream
        .write_all(br#"{"name": "slow", "#)
        .await
        .expect("write");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await;
    assert!(early.is_err(), "no answer to an incomplete result");
    stream
        .write_all(br#""output": "done"}"#)
        .await
        .expect("write");
    let mut reply = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut reply))
        .await
        .expect("reply")
        .expect("read");
    assert_eq!(
        reply, "ok",
        "answered without waiting for the client to close"
    );
    assert_eq!(
        harness.next_event().await.check.expect("check").output,
        "done"
    );
}

#[tokio::test]
async fn udp_socket_keeps_listening_after_bad_datagrams() {
    let mut harness = Harness::new();
    let (_, udp) = start_socket(&harness).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for datagram in [
        &b" ping "[..],
        b"garbage",
        br#"{"name": "no output"}"#,
        br#"{"name": "good", "output": "fine", "source": "sensor-7"}"#,
    ] {
        client.send_to(datagram, udp).await.expect("send");
    }
    let event = harness.next_event().await;
    let check = event.check.expect("check");
    assert_eq!(
        (check.metadata.name.as_str(), check.output.as_str()),
        ("good", "fine")
    );
    assert_eq!(check.proxy_entity_name, "sensor-7");
    assert_eq!(
        harness.count(Input::SocketUdp, Outcome::Invalid),
        2,
        "ping is not invalid"
    );
    assert_eq!(harness.count(Input::SocketUdp, Outcome::Accepted), 1);
}

// ---------------------------------------------------------------------------------------------
// StatsD

async fn start_statsd(harness: &Harness, flush: Duration) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(inputs::statsd::serve(
        socket,
        harness.ctx.clone(),
        flush,
        vec!["influx".to_owned()],
        harness.shutdown.clone(),
    ));
    addr
}

fn point_values(event: &Event) -> Vec<(String, f64)> {
    let metrics = event.metrics.as_ref().expect("metrics");
    metrics
        .points
        .iter()
        .map(|point| {
            let tags: Vec<String> = point
                .tags
                .iter()
                .map(|tag| format!("{}={}", tag.name, tag.value))
                .collect();
            (format!("{}{:?}", point.name, tags), point.value)
        })
        .collect()
}

#[tokio::test]
async fn statsd_flushes_aggregates_as_one_metrics_event() {
    let mut harness = Harness::new();
    let addr = start_statsd(&harness, Duration::from_millis(200)).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let before = inputs_now();
    // One datagram: processed at once, so one flush holds all of it.
    let datagram = "hits:1|c\nhits:2|c|#route:/a\nhits:1|c|@0.5\ntemp:20|g\ntemp:-5|g\n\
                    users:ann|s\nusers:bob|s\nusers:ann|s\nrt:10|ms\nrt:30|ms\nnot a line\n";
    client
        .send_to(datagram.as_bytes(), addr)
        .await
        .expect("send");

    let event = harness.next_event().await;
    let after = inputs_now();
    assert!(event.check.is_none(), "a metrics-only event");
    assert_eq!(event.entity.as_ref().expect("entity").metadata.name, AGENT);
    let metrics = event.metrics.as_ref().expect("metrics");
    assert_eq!(metrics.handlers, ["influx"]);
    for point in &metrics.points {
        assert!(
            (before..=after).contains(&point.timestamp),
            "{}: timestamp {} is in seconds",
            point.name,
            point.timestamp
        );
    }
    let values = point_values(&event);
    for expected in [
        ("hits.value[]", 3.0),
        ("hits.per_second[]", 15.0),
        ("hits.value[\"route=/a\"]", 2.0),
        ("temp.value[]", 15.0),
        ("users.value[]", 2.0),
        ("rt.min[]", 10.0),
        ("rt.max[]", 30.0),
        ("rt.count[]", 2.0),
        ("rt.mean[]", 20.0),
        ("rt.percentile_upper_90[]", 30.0),
    ] {
        assert!(
            values
                .iter()
                .any(|(name, value)| (name.as_str(), *value) == expected),
            "missing {expected:?} in {values:?}"
        );
    }
    assert_eq!(harness.count(Input::Statsd, Outcome::Accepted), 10);
    assert_eq!(harness.count(Input::Statsd, Outcome::Invalid), 1);
}

#[tokio::test]
async fn statsd_sends_nothing_for_a_quiet_interval_and_flushes_on_shutdown() {
    let mut harness = Harness::new();
    let addr = start_statsd(&harness, Duration::from_millis(20)).await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    client.send_to(b"a:1|c", addr).await.expect("send");
    assert_eq!(
        point_values(&harness.next_event().await)[0],
        ("a.value[]".to_owned(), 1.0)
    );
    // Time passing is the subject here: ten quiet intervals.
    tokio::time::sleep(Duration::from_millis(200)).await;
    harness.assert_no_event();

    let mut slow = Harness::new();
    let addr = start_statsd(&slow, Duration::from_secs(3600)).await;
    client.send_to(b"b:2|g", addr).await.expect("send");
    // The sample must be aggregated before the shutdown, or the shutdown could win the race.
    tokio::time::timeout(WAIT, async {
        while slow.count(Input::Statsd, Outcome::Accepted) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("sample aggregated");
    slow.shutdown.cancel();
    let event = slow.next_event().await;
    assert_eq!(point_values(&event), [("b.value[]".to_owned(), 2.0)]);
}

fn inputs_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}
