//! The `agents` benchmark: N simulated agents speak the real agent protocol (`kensa-proto`
//! over WebSocket) to one backend and send check results as fast as its acknowledgements allow
//! (or at a fixed total rate), measuring events acknowledged per second and the latency from
//! sending an event to receiving its acknowledgement — which the backend only sends once the
//! event is durably stored. With `--sink-listen`, a built-in tcp-handler sink (`sink.rs`) also
//! counts events that went all the way through the pipelines.
//!
//! Each agent behaves like a real one from the backend's point of view: handshake headers and
//! Basic credentials, waits for `entity_config`, a keepalive on connect and every
//! `--keepalive-interval`, and results of `--checks` distinct checks (so events spread over
//! many (entity, check) keys) with fresh UUIDs. An event not acknowledged within
//! `--resend-after` is sent again with the same id (the backend drops an event it has no room
//! for without acknowledging it, and recognizes duplicates by id); the real agent only re-sends
//! after reconnecting, which `--resend-after 0` reproduces — the report's `unacked_at_end` then
//! counts the events the backend never acknowledged.
//! An agent never has more than `--window` unacknowledged events: that window, not the load
//! generator, is what limits a run at `--rate 0`.
//!
//! Timeline: connect every agent, then all start at once; the first `--warmup` seconds of the
//! `--duration` are excluded from the rates and percentiles; after `--duration` agents stop
//! sending and wait up to `--drain` seconds for outstanding acknowledgements.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use base64::Engine as _;
use bytes::Bytes;
use clap::Args;
use futures::future::Either;
use futures::{SinkExt, StreamExt};
use kensa_proto::BackendMessage;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use crate::client::unix_now;
use crate::frames::{AgentIdentity, CheckResult, EventTemplate};
use crate::procfs::ProcessMonitor;
use crate::sink::Sink;
use crate::stats::{round1, round3, PhaseTimings};

/// Longest wait for a WebSocket handshake and the backend's first frame.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often agents look for events to re-send.
const RESEND_SCAN: Duration = Duration::from_secs(1);
/// Distinct error messages kept per kind for the report.
const ERROR_SAMPLES: usize = 5;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// The backend's agent listener.
    #[arg(long, default_value = "ws://127.0.0.1:8081")]
    pub agent_url: String,
    /// Simulated agents (one WebSocket each), named `<name-prefix>-0000`….
    #[arg(long, default_value_t = 50)]
    pub agents: usize,
    /// Distinct checks per agent; results cycle through them.
    #[arg(long, default_value_t = 20)]
    pub checks: usize,
    /// Total events/s over all agents; 0 sends as fast as acknowledgements allow.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Most unacknowledged events per agent.
    #[arg(long, default_value_t = 200)]
    pub window: usize,
    /// Seconds of sending, warm-up included.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds at the start of the sending left out of rates and percentiles.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Seconds to wait, after sending stops, for outstanding acknowledgements (and deliveries
    /// to the sink).
    #[arg(long, default_value_t = 15.0)]
    pub drain: f64,
    /// Seconds between keepalives (one is sent on connect).
    #[arg(long, default_value_t = 20)]
    pub keepalive_interval: u64,
    /// Keepalive warning timeout the agents announce (seconds).
    #[arg(long, default_value_t = 120)]
    pub keepalive_warning_timeout: u64,
    /// Exit statuses of the results and their weights, `status:weight,…` (e.g. `0:90,2:10`);
    /// each result draws its status independently.
    #[arg(long, default_value = "0:1")]
    pub status_mix: StatusMix,
    /// Handlers every check names (e.g. `sink`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub handlers: Vec<String>,
    /// The `interval` the simulated checks declare (seconds).
    #[arg(long, default_value_t = 10)]
    pub check_interval: u32,
    /// Bytes of check output per result (at least the status line).
    #[arg(long, default_value_t = 0)]
    pub output_bytes: usize,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Subscriptions of every agent, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "loadgen")]
    pub subscriptions: Vec<String>,
    #[arg(long, default_value = "loadgen")]
    pub name_prefix: String,
    #[arg(long, default_value = "agent")]
    pub user: String,
    #[arg(
        long,
        env = "KENSA_LOADGEN_AGENT_PASSWORD",
        default_value = "P@ssw0rd!",
        hide_default_value = true
    )]
    pub password: String,
    /// Seconds without an acknowledgement before an event is sent again (same id); 0 never
    /// re-sends within a session, as the real agent does (it re-sends unacknowledged events
    /// after reconnecting).
    #[arg(long, default_value_t = 60.0)]
    pub resend_after: f64,
    /// Handshakes in progress at once while connecting.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Also run a tcp-handler sink on this address and report deliveries per second.
    #[arg(long)]
    pub sink_listen: Option<SocketAddr>,
    /// PID of the backend, to sample its RSS and CPU time from /proc.
    #[arg(long)]
    pub backend_pid: Option<u32>,
    #[arg(long, default_value_t = 100)]
    pub rss_interval_ms: u64,
    /// Answer every check request at once with a canned OK result carrying the request's
    /// round (what round-robin benchmarks measure); with `--checks 0` agents send nothing else.
    #[arg(long)]
    pub answer_requests: bool,
    /// A name for this run in the report, such as the store ("sqlite", "postgres").
    #[arg(long, default_value = "")]
    pub label: String,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Exit statuses and their relative weights.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMix(Vec<(u32, u64)>);

impl FromStr for StatusMix {
    type Err = String;

    fn from_str(text: &str) -> Result<StatusMix, String> {
        let mut mix = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (status, weight) = part.split_once(':').unwrap_or((part, "1"));
            let status: u32 = status
                .trim()
                .parse()
                .map_err(|_| format!("status {status:?} is not a number"))?;
            let weight: u64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight {weight:?} of status {status} is not a number"))?;
            if mix.iter().any(|(s, _)| *s == status) {
                return Err(format!("status {status} is listed twice"));
            }
            if weight > 0 {
                mix.push((status, weight));
            }
        }
        if mix.is_empty() {
            return Err("no status has a weight above 0".into());
        }
        Ok(StatusMix(mix))
    }
}

impl StatusMix {
    /// The index in the mix of the status drawn by `roll` (uniform over u64).
    fn pick(&self, roll: u64) -> usize {
        let total: u64 = self.0.iter().map(|(_, w)| w).sum();
        let mut point = roll % total;
        for (index, (_, weight)) in self.0.iter().enumerate() {
            if point < *weight {
                return index;
            }
            point -= weight;
        }
        self.0.len() - 1
    }

    fn to_json(&self) -> Value {
        self.0
            .iter()
            .map(|(status, weight)| (status.to_string(), json!(weight)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// The schedule every agent follows, fixed when sending starts.
struct Plan {
    start: Instant,
    measure_from: Instant,
    send_until: Instant,
    drain_until: Instant,
    /// Events/s of one agent; 0: as fast as the window allows.
    agent_rate: f64,
    agents: usize,
    window: usize,
    keepalive_interval: Duration,
    keepalive_warning_timeout: u64,
    /// `None`: never re-send within the session.
    resend_after: Option<Duration>,
    status_mix: StatusMix,
    answer_requests: bool,
}

/// Totals that the timeline samples while agents run.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
}

/// A connected agent, ready to send.
struct SimAgent {
    index: usize,
    identity: AgentIdentity,
    /// `[check * statuses + status index]`.
    templates: Vec<EventTemplate>,
    checks: usize,
    socket: Socket,
}

/// An event waiting for its acknowledgement.
struct Pending {
    first_sent: Instant,
    last_sent: Instant,
    frame: Bytes,
}

#[derive(Debug, Default)]
struct AgentReport {
    sent: u64,
    resent: u64,
    acked: u64,
    rejected: u64,
    rejections: Vec<String>,
    unacked: u64,
    keepalives: u64,
    check_requests: u64,
    /// Requests answered (`--answer-requests`).
    answered: u64,
    /// For requests received inside the measurement window whose round carries a tick: from
    /// the scheduled tick to the request's arrival (milliseconds).
    dispatch_ms: Vec<i64>,
    /// Ack latencies of acknowledgements received inside the measurement window.
    latencies: Vec<Duration>,
    /// Why the session ended before the agent was done, if it did.
    error: Option<String>,
}

/// Runs the whole benchmark and returns its report.
pub async fn run(args: AgentsArgs) -> anyhow::Result<Value> {
    let sink = match args.sink_listen {
        Some(address) => Some(Sink::bind(address).await?),
        None => None,
    };
    run_with_sink(args, sink).await
}

/// [`run`] with an already bound sink (tests bind theirs on port 0 before creating the handler
/// that points at it).
async fn run_with_sink(args: AgentsArgs, sink: Option<Sink>) -> anyhow::Result<Value> {
    ensure!(args.agents > 0, "--agents must be > 0");
    ensure!(
        args.checks > 0 || args.answer_requests,
        "--checks must be > 0 (or 0 with --answer-requests)"
    );
    ensure!(args.window > 0, "--window must be > 0");
    ensure!(args.rate >= 0.0, "--rate must be >= 0");
    ensure!(
        args.duration > args.warmup && args.warmup >= 0.0,
        "--duration must be longer than --warmup"
    );
    ensure!(
        args.keepalive_interval > 0,
        "--keepalive-interval must be > 0"
    );
    ensure!(
        args.connect_concurrency > 0,
        "--connect-concurrency must be > 0"
    );
    let started_at = unix_now();
    let monitor = match args.backend_pid {
        Some(pid) => Some(ProcessMonitor::start(
            pid,
            Duration::from_millis(args.rss_interval_ms.max(1)),
        )?),
        None => None,
    };
    let phase = |name: &str| {
        progress(format_args!("phase {name}"));
        if let Some(monitor) = &monitor {
            monitor.phase(name);
        }
    };

    phase("connect");
    let connect_started = Instant::now();
    let (agents, handshake_latencies, handshake_failures) = connect_all(&args).await?;
    let connect_wall = connect_started.elapsed();
    progress(format_args!(
        "{} of {} agents connected in {:.1} s",
        agents.len(),
        args.agents,
        connect_wall.as_secs_f64()
    ));
    if agents.is_empty() {
        bail!(
            "no agent could connect to {}: {}",
            args.agent_url,
            handshake_failures.join("; ")
        );
    }
    let connected = agents.len();

    let start = Instant::now();
    let plan = Arc::new(Plan {
        start,
        measure_from: start + secs(args.warmup),
        send_until: start + secs(args.duration),
        drain_until: start + secs(args.duration + args.drain),
        agent_rate: args.rate / connected as f64,
        agents: connected,
        window: args.window,
        keepalive_interval: Duration::from_secs(args.keepalive_interval),
        keepalive_warning_timeout: args.keepalive_warning_timeout,
        resend_after: (args.resend_after > 0.0).then(|| secs(args.resend_after)),
        status_mix: args.status_mix.clone(),
        answer_requests: args.answer_requests,
    });
    let counters = Arc::new(Counters::default());
    let handled = || sink.as_ref().map_or(0, Sink::handled);
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_timeline(
        start,
        counters.clone(),
        sink.as_ref().map(|s| s.counter_reader()),
        timeline.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for agent in agents {
        tasks.spawn(run_agent(agent, plan.clone(), counters.clone()));
    }

    phase("warmup");
    tokio::time::sleep_until(plan.measure_from).await;
    phase("measure");
    let at_measure_start = (
        counters.sent.load(Ordering::Relaxed),
        counters.acked.load(Ordering::Relaxed),
        handled(),
    );
    tokio::time::sleep_until(plan.send_until).await;
    let at_measure_end = (
        counters.sent.load(Ordering::Relaxed),
        counters.acked.load(Ordering::Relaxed),
        handled(),
    );
    phase("drain");
    let mut reports = Vec::with_capacity(connected);
    while let Some(report) = tasks.join_next().await {
        reports.push(report.context("agent task panicked")?);
    }
    let mut total = merge(reports);
    // Deliveries lag acknowledgements (pipelines run after the commit): give them the rest of
    // the drain time to arrive.
    if let Some(sink) = &sink {
        if !args.handlers.is_empty() {
            let remaining = plan.drain_until.saturating_duration_since(Instant::now());
            sink.wait_for(total.acked, remaining).await;
        }
    }
    sampler.abort();
    let (rss_report, phases_report) = match monitor {
        Some(monitor) => monitor.finish(),
        None => (Value::Null, Value::Null),
    };

    let window = plan.send_until.duration_since(plan.measure_from);
    let window_s = window.as_secs_f64();
    let per_s = |from: u64, to: u64| round1(to.saturating_sub(from) as f64 / window_s);
    let mut latency = PhaseTimings {
        latencies: total.latencies,
        wall: window,
    }
    .summary();
    if let Some(object) = latency.as_object_mut() {
        object.remove("requests_per_s");
        object.remove("wall_s");
    }
    let handshake_summary = {
        let mut summary = PhaseTimings {
            latencies: handshake_latencies,
            wall: connect_wall,
        }
        .summary();
        if let Some(object) = summary.as_object_mut() {
            object.remove("requests_per_s");
        }
        summary
    };
    let timeline = std::mem::take(&mut *timeline.lock().expect("timeline lock"));
    Ok(json!({
        "benchmark": "agents",
        "label": args.label,
        "agent_url": args.agent_url,
        "started_at_unix": started_at,
        "machine": crate::api::machine(),
        "parameters": {
            "agents": args.agents,
            "checks_per_agent": args.checks,
            "rate": args.rate,
            "window": args.window,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "drain_s": args.drain,
            "keepalive_interval_s": args.keepalive_interval,
            "status_mix": args.status_mix.to_json(),
            "handlers": args.handlers,
            "check_interval": args.check_interval,
            "output_bytes": args.output_bytes,
            "resend_after_s": args.resend_after,
            "namespace": args.namespace,
        },
        "handshakes": {
            "attempted": args.agents,
            "succeeded": connected,
            "failed": args.agents - connected,
            "failures": sample_errors(handshake_failures),
            "latency": handshake_summary,
        },
        "measure": {
            "wall_s": round3(window_s),
            "sent_per_s": per_s(at_measure_start.0, at_measure_end.0),
            "acked_per_s": per_s(at_measure_start.1, at_measure_end.1),
            "handled_per_s": sink.as_ref().map(|_| per_s(at_measure_start.2, at_measure_end.2)),
            "ack_latency": latency,
        },
        "totals": {
            "sent": total.sent,
            "resent": total.resent,
            "acked": total.acked,
            "rejected": total.rejected,
            "rejections": total.rejections,
            "unacked_at_end": total.unacked,
            "handled": sink.as_ref().map(Sink::handled),
            "keepalives_sent": total.keepalives,
            "check_requests_received": total.check_requests,
            "check_requests_answered": total.answered,
            "dispatch_latency_ms": dispatch_summary(&mut total.dispatch_ms),
            "sessions_ended_early": total.errors.len(),
            "session_errors": sample_errors(total.errors),
        },
        "sink": sink.as_ref().map(Sink::report),
        "timeline": timeline,
        "rss": rss_report,
        "phases": phases_report,
    }))
}

fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.max(0.0))
}

/// Connects every agent, `--connect-concurrency` at a time. Returns the connected agents, the
/// handshake latencies (WebSocket upgrade through the first `entity_config`) and the failures.
async fn connect_all(
    args: &AgentsArgs,
) -> anyhow::Result<(Vec<SimAgent>, Vec<Duration>, Vec<String>)> {
    let outputs = output_lines(&args.status_mix, args.output_bytes);
    let prepared: Vec<(usize, AgentIdentity, Vec<EventTemplate>)> = (0..args.agents)
        .map(|index| {
            let identity = AgentIdentity {
                name: format!("{}-{index:04}", args.name_prefix),
                namespace: args.namespace.clone(),
                subscriptions: args.subscriptions.clone(),
            };
            let mut templates = Vec::with_capacity(args.checks * outputs.len());
            for check in 0..args.checks {
                let name = format!("{}-check-{check:02}", args.name_prefix);
                for (status, output) in &outputs {
                    templates.push(EventTemplate::new(
                        &identity,
                        &CheckResult {
                            check: &name,
                            status: *status,
                            output,
                            interval: args.check_interval,
                            handlers: &args.handlers,
                        },
                    )?);
                }
            }
            Ok((index, identity, templates))
        })
        .collect::<anyhow::Result<_>>()?;
    let results: Vec<anyhow::Result<(SimAgent, Duration)>> = futures::stream::iter(prepared)
        .map(|(index, identity, templates)| async move {
            let started = Instant::now();
            let socket = connect(&args.agent_url, &identity, &args.user, &args.password)
                .await
                .with_context(|| format!("agent {}", identity.name))?;
            Ok((
                SimAgent {
                    index,
                    identity,
                    templates,
                    checks: args.checks,
                    socket,
                },
                started.elapsed(),
            ))
        })
        .buffer_unordered(args.connect_concurrency)
        .collect()
        .await;
    let mut agents = Vec::new();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok((agent, latency)) => {
                agents.push(agent);
                latencies.push(latency);
            }
            Err(err) => failures.push(format!("{err:#}")),
        }
    }
    agents.sort_by_key(|agent| agent.index);
    Ok((agents, latencies, failures))
}

/// One `(status, output)` per status of the mix, each padded to `output_bytes`.
fn output_lines(mix: &StatusMix, output_bytes: usize) -> Vec<(u32, String)> {
    mix.0
        .iter()
        .map(|(status, _)| {
            let mut output = match status {
                0 => "OK: simulated by kensa-loadgen".to_owned(),
                1 => "WARNING: simulated by kensa-loadgen".to_owned(),
                2 => "CRITICAL: simulated by kensa-loadgen".to_owned(),
                other => format!("UNKNOWN ({other}): simulated by kensa-loadgen"),
            };
            while output.len() < output_bytes {
                output.push_str(" lorem ipsum");
            }
            output.truncate(output_bytes.max(output.find(':').unwrap_or(0) + 1));
            (*status, output)
        })
        .collect()
}

/// The WebSocket handshake with the agent headers, then the backend's first frame, which
/// must be `entity_config`.
async fn connect(
    url: &str,
    identity: &AgentIdentity,
    user: &str,
    password: &str,
) -> anyhow::Result<Socket> {
    let mut request = url.into_client_request().context("agent url")?;
    let headers = request.headers_mut();
    headers.insert(kensa_proto::HEADER_AGENT_NAME, identity.name.parse()?);
    headers.insert(kensa_proto::HEADER_NAMESPACE, identity.namespace.parse()?);
    headers.insert(
        kensa_proto::HEADER_SUBSCRIPTIONS,
        identity.subscriptions.join(",").parse()?,
    );
    headers.insert(kensa_proto::HEADER_USER, user.parse()?);
    headers.insert(
        kensa_proto::HEADER_PROTOCOL,
        kensa_proto::PROTOCOL_VERSION.to_string().parse()?,
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    headers.insert("Authorization", format!("Basic {basic}").parse()?);

    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let (mut socket, _) =
        match tokio::time::timeout_at(deadline, tokio_tungstenite::connect_async(request)).await {
            Err(_) => bail!("handshake timed out after {HANDSHAKE_TIMEOUT:?}"),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                bail!("handshake refused: {} {}", response.status(), body.trim())
            }
            Ok(Err(err)) => bail!("handshake failed: {err}"),
            Ok(Ok(connected)) => connected,
        };
    loop {
        let message = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => bail!("no entity_config within {HANDSHAKE_TIMEOUT:?}"),
            Ok(None) => bail!("closed before entity_config"),
            Ok(Some(message)) => message.context("reading entity_config")?,
        };
        match message {
            Message::Binary(bytes) => {
                return match BackendMessage::decode(&bytes) {
                    Ok(BackendMessage::EntityConfig(_)) => Ok(socket),
                    Ok(other) => bail!("first frame is not entity_config: {other:?}"),
                    Err(err) => bail!("first frame: {err}"),
                };
            }
            Message::Close(frame) => bail!("closed before entity_config: {frame:?}"),
            _ => continue,
        }
    }
}

/// One agent's session until it is done sending and draining (or the session breaks).
async fn run_agent(agent: SimAgent, plan: Arc<Plan>, counters: Arc<Counters>) -> AgentReport {
    let mut report = AgentReport::default();
    let mut pending: HashMap<Uuid, Pending> = HashMap::with_capacity(plan.window);
    if let Err(err) = drive(agent, &plan, &counters, &mut report, &mut pending).await {
        report.error = Some(format!("{err:#}"));
    }
    report.unacked = pending.len() as u64;
    report
}

async fn drive(
    agent: SimAgent,
    plan: &Plan,
    counters: &Counters,
    report: &mut AgentReport,
    pending: &mut HashMap<Uuid, Pending>,
) -> anyhow::Result<()> {
    let SimAgent {
        index,
        identity,
        templates,
        checks,
        socket,
    } = agent;
    let (mut write, mut read) = socket.split();
    let statuses = plan.status_mix.0.len();
    // Agents start at evenly spread offsets within one period, so a fixed rate does not
    // arrive as one burst per period.
    let offset = if plan.agent_rate > 0.0 {
        Duration::from_secs_f64(index as f64 / plan.agents as f64 / plan.agent_rate)
    } else {
        Duration::ZERO
    };
    let mut sequence: u64 = 0;
    let keepalive = |identity: &AgentIdentity| {
        identity.keepalive(
            plan.keepalive_interval.as_secs(),
            plan.keepalive_warning_timeout,
            0,
        )
    };
    write
        .send(Message::Binary(keepalive(&identity)?.into()))
        .await
        .context("sending the first keepalive")?;
    report.keepalives += 1;
    let mut keepalive_tick = tokio::time::interval_at(
        plan.start + plan.keepalive_interval,
        plan.keepalive_interval,
    );
    let mut resend_tick = tokio::time::interval_at(plan.start + RESEND_SCAN, RESEND_SCAN);

    loop {
        let now = Instant::now();
        let sending = now < plan.send_until;
        if !sending && pending.is_empty() {
            break;
        }
        let room = plan.window.saturating_sub(pending.len());
        let send_gate = if plan.agent_rate > 0.0 {
            let due =
                plan.start + offset + Duration::from_secs_f64(sequence as f64 / plan.agent_rate);
            Either::Left(tokio::time::sleep_until(due))
        } else {
            Either::Right(std::future::ready(()))
        };
        tokio::select! {
            biased;
            message = read.next() => {
                let bytes = match message {
                    None => bail!("the backend closed the connection"),
                    Some(Err(err)) => bail!("reading: {err}"),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Close(frame))) => bail!("the backend closed the session: {frame:?}"),
                    Some(Ok(_)) => continue,
                };
                match BackendMessage::decode(&bytes).context("decoding a backend frame")? {
                    BackendMessage::Ack(ack) => {
                        let received = Instant::now();
                        let in_window = received >= plan.measure_from && received < plan.send_until;
                        for id in &ack.ids {
                            if let Some(event) = pending.remove(id) {
                                report.acked += 1;
                                counters.acked.fetch_add(1, Ordering::Relaxed);
                                if in_window {
                                    report.latencies.push(received - event.first_sent);
                                }
                            }
                        }
                        for rejected in &ack.rejected {
                            if pending.remove(&rejected.id).is_some() {
                                report.rejected += 1;
                                if report.rejections.len() < ERROR_SAMPLES {
                                    report.rejections.push(rejected.reason.clone());
                                }
                            }
                        }
                    }
                    BackendMessage::CheckRequest(request) => {
                        report.check_requests += 1;
                        let received = Instant::now();
                        if received >= plan.measure_from && received < plan.send_until {
                            if let Some(tick) = round_tick(&request.round) {
                                report.dispatch_ms.push(crate::client::unix_now_ms() - tick);
                            }
                        }
                        if plan.answer_requests {
                            let id = Uuid::new_v4();
                            let frame = Bytes::from(answer(&identity, &request, id)?);
                            write.send(Message::Binary(frame.clone())).await.context("answering a check request")?;
                            pending.insert(id, Pending { first_sent: received, last_sent: received, frame });
                            report.answered += 1;
                            report.sent += 1;
                            counters.sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    BackendMessage::EntityConfig(_) => {}
                }
            }
            _ = keepalive_tick.tick() => {
                write.send(Message::Binary(keepalive(&identity)?.into())).await.context("sending a keepalive")?;
                report.keepalives += 1;
            }
            _ = resend_tick.tick(), if plan.resend_after.is_some() => {
                let resend_after = plan.resend_after.unwrap_or(Duration::MAX);
                let now = Instant::now();
                let mut resent = 0;
                for event in pending.values_mut().filter(|e| now - e.last_sent >= resend_after) {
                    write.feed(Message::Binary(event.frame.clone())).await.context("re-sending")?;
                    event.last_sent = now;
                    resent += 1;
                }
                if resent > 0 {
                    write.flush().await.context("re-sending")?;
                    report.resent += resent;
                }
            }
            _ = send_gate, if sending && room > 0 && checks > 0 => {
                let now = Instant::now();
                let due = if plan.agent_rate > 0.0 {
                    let elapsed = now.saturating_duration_since(plan.start + offset).as_secs_f64();
                    ((elapsed * plan.agent_rate).floor() as u64 + 1).saturating_sub(sequence)
                } else {
                    room as u64
                };
                let batch = due.min(room as u64);
                let executed = unix_now();
                for _ in 0..batch {
                    let check = (sequence as usize) % checks;
                    let roll = crate::api::splitmix64(((index as u64) << 40) ^ sequence);
                    let template = &templates[check * statuses + plan.status_mix.pick(roll)];
                    let id = Uuid::new_v4();
                    let frame = Bytes::from(template.render(id, executed));
                    write.feed(Message::Binary(frame.clone())).await.context("sending an event")?;
                    pending.insert(id, Pending { first_sent: now, last_sent: now, frame });
                    sequence += 1;
                }
                write.flush().await.context("sending events")?;
                report.sent += batch;
                counters.sent.fetch_add(batch, Ordering::Relaxed);
            }
            _ = tokio::time::sleep_until(plan.send_until), if sending => {}
            _ = tokio::time::sleep_until(plan.drain_until), if !sending => break,
        }
    }
    // Best effort: the numbers are already in.
    let _ = tokio::time::timeout(Duration::from_secs(2), write.send(Message::Close(None))).await;
    Ok(())
}

/// Everything the agents reported, summed.
struct Total {
    sent: u64,
    resent: u64,
    acked: u64,
    rejected: u64,
    rejections: Vec<String>,
    unacked: u64,
    keepalives: u64,
    check_requests: u64,
    answered: u64,
    dispatch_ms: Vec<i64>,
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

fn merge(reports: Vec<AgentReport>) -> Total {
    let mut total = Total {
        sent: 0,
        resent: 0,
        acked: 0,
        rejected: 0,
        rejections: Vec::new(),
        unacked: 0,
        keepalives: 0,
        check_requests: 0,
        answered: 0,
        dispatch_ms: Vec::new(),
        latencies: Vec::new(),
        errors: Vec::new(),
    };
    for report in reports {
        total.sent += report.sent;
        total.resent += report.resent;
        total.acked += report.acked;
        total.rejected += report.rejected;
        total.unacked += report.unacked;
        total.keepalives += report.keepalives;
        total.check_requests += report.check_requests;
        total.answered += report.answered;
        total.dispatch_ms.extend(report.dispatch_ms);
        total.latencies.extend(report.latencies);
        for reason in report.rejections {
            if total.rejections.len() < ERROR_SAMPLES && !total.rejections.contains(&reason) {
                total.rejections.push(reason);
            }
        }
        total.errors.extend(report.error);
    }
    total
}

/// Up to [`ERROR_SAMPLES`] distinct messages, each with how often it occurred.
fn sample_errors(errors: Vec<String>) -> Value {
    let mut counted: Vec<(String, usize)> = Vec::new();
    for error in errors {
        match counted.iter_mut().find(|(e, _)| *e == error) {
            Some((_, count)) => *count += 1,
            None => counted.push((error, 1)),
        }
    }
    counted
        .into_iter()
        .take(ERROR_SAMPLES)
        .map(|(error, count)| json!({"error": error, "count": count}))
        .collect()
}

/// Every second from `start`: events sent, acknowledged and handled during that second.
async fn sample_timeline(
    start: Instant,
    counters: Arc<Counters>,
    handled: Option<crate::sink::CounterReader>,
    timeline: Arc<Mutex<Vec<Value>>>,
) {
    let mut ticker =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = (0, 0, 0);
    for second in 1.. {
        ticker.tick().await;
        let now = (
            counters.sent.load(Ordering::Relaxed),
            counters.acked.load(Ordering::Relaxed),
            handled.as_ref().map_or(0, |h| h.handled()),
        );
        let mut entry = json!({
            "t": second,
            "sent": now.0 - last.0,
            "acked": now.1 - last.1,
        });
        if handled.is_some() {
            entry["handled"] = json!(now.2 - last.2);
        }
        timeline.lock().expect("timeline lock").push(entry);
        last = now;
    }
}

fn progress(message: std::fmt::Arguments<'_>) {
    eprintln!("kensa-loadgen: {message}");
}

#[cfg(test)]
mod tests;

/// The scheduled tick (Unix ms) in a round id `<ns>/<check>@<tick>[/<proxy>][#<subscription>]`.
fn round_tick(round: &str) -> Option<i64> {
    let after = round.split_once('@')?.1;
    after.split(['#', '/']).next()?.parse().ok()
}

/// The canned OK result of `request`, as a real agent would send it.
fn answer(
    identity: &AgentIdentity,
    request: &kensa_proto::CheckRequest,
    id: Uuid,
) -> anyhow::Result<Vec<u8>> {
    let mut check = serde_json::to_value(kensa_types::resources::check::Check::from(
        request.config.clone(),
    ))?;
    let now = unix_now();
    check["status"] = json!(0);
    check["output"] = json!("OK: canned loadgen result\n");
    check["executed"] = json!(now);
    check["issued"] = json!(request.issued);
    check["round"] = json!(request.round);
    check["processed_by"] = json!(identity.name);
    let event = json!({
        "id": id.to_string(),
        "timestamp": now,
        "metadata": {"namespace": identity.namespace},
        "entity": identity.entity(),
        "check": check,
    });
    let mut frame = b"event\n".to_vec();
    serde_json::to_writer(&mut frame, &event)?;
    Ok(frame)
}

/// p50/p99/max of the tick → request-arrival latencies (ms), or null without samples.
fn dispatch_summary(samples: &mut [i64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    json!({"count": samples.len(), "p50": at(0.5), "p99": at(0.99), "max": samples[samples.len() - 1]})
}
