//! The `agents` benchmark: N simulated agents speak the real agent protocol (`kensa-proto`
//! over WebSocket) to one or more backends and send check results as fast as their
//! acknowledgements allow (or at a fixed total rate), or answer the check requests the
//! backend schedules (`--answer-requests`), measuring events acknowledged per second and the
//! latency from sending an event to receiving its acknowledgement — which the backend only
//! sends once the event is durably stored. With `--sink-listen`, a built-in tcp/udp-handler sink
//! (`sink.rs`) also counts events that went all the way through the pipelines.
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
//! Sessions are kept like a real agent keeps them: with several `--agent-url`s each agent has
//! its own fixed random order of them; when a session breaks it reconnects at once to the
//! next one, and after a failed attempt waits `--retry-min` (doubling up to `--retry-max`,
//! plus up to as much again of jitter). Events not yet acknowledged are sent again on the new
//! session. The report's `reconnects` section reads the log of sessions going up and down:
//! a *storm* is a period with fewer agents connected than when sending started, and lasts
//! until every agent is connected again (`storm.rs`). `--start-on-first-url` puts every agent
//! on the first URL to begin with, so killing that backend moves all of them at once.
//!
//! Scale: agents connect from addresses spread over 127.0.0.0/8 when the backends are on
//! loopback (`sources.rs`), so more than the ~28,000 connections one source address allows
//! fit; the open-file limit is raised at start (`fdlimit.rs`).
//!
//! Timeline: connect every agent (`--connect-concurrency` handshakes at a time; at most
//! `--connect-timeout`), then all start at once; the first `--warmup` seconds of the
//! `--duration` are excluded from the rates and percentiles; after `--duration` agents stop
//! sending and wait up to `--drain` seconds for outstanding acknowledgements.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use base64::Engine as _;
use bytes::Bytes;
use clap::Args;
use futures::future::Either;
use futures::{SinkExt, StreamExt};
use kensa_proto::BackendMessage;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use crate::alerts::AlertSink;
use crate::client::unix_now;
use crate::frames::{AgentIdentity, AnswerTemplate, CheckResult, EventTemplate};
use crate::procfs::ProcessMonitor;
use crate::series::{load_averages, Series};
use crate::sink::Sink;
use crate::sources::{SourceAddresses, SpreadSources};
use crate::stats::{round1, round3, PhaseTimings};
use crate::storm::{storms, Change};

/// Longest wait for a WebSocket handshake and the backend's first frame.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often agents look for events to re-send: a fifth of `--resend-after`, within these
/// bounds (10,000 agents scanning every second would cost the load generator CPU for
/// nothing when the re-send delay is 30 s).
const RESEND_SCAN_MIN: Duration = Duration::from_secs(1);
const RESEND_SCAN_MAX: Duration = Duration::from_secs(10);
/// Distinct error messages kept per kind for the report.
const ERROR_SAMPLES: usize = 5;
/// Connection-attempt errors kept per agent (all are counted).
const AGENT_ERROR_SAMPLES: usize = 2;
/// Buffers of one simulated agent's WebSocket. Frames are a few KiB; tungstenite's 128 KiB
/// defaults, allocated up front, would cost 40,000 agents 5 GiB of the machine's memory.
const SOCKET_READ_BUFFER: usize = 8 * 1024;
const SOCKET_WRITE_BUFFER: usize = 8 * 1024;

type Socket = WebSocketStream<TcpStream>;

#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// The backends' agent listeners (ws:// only), comma-separated; each agent rotates through
    /// them in its own random order when a session breaks.
    #[arg(
        long = "agent-url",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8081"
    )]
    pub agent_urls: Vec<String>,
    /// Every agent starts on the first `--agent-url` (their fail-over orders still differ).
    #[arg(long)]
    pub start_on_first_url: bool,
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
    /// Exit statuses of the results (and of answers) and their weights, `status:weight,…`
    /// (e.g. `0:90,2:10`); each result draws its status independently.
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
    /// Also subscribe agent `i` to `<name-prefix>-group-<i mod N>` (two digits), so N checks
    /// scheduled by the backend each reach a share of the agents.
    #[arg(long, default_value_t = 0)]
    pub subscription_groups: usize,
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
    /// Handshakes in progress at once while connecting (the number of agents: all at once).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Connect the first agent alone before the others, so the backend has verified the agents'
    /// credentials once before the mass connect (as a backend that already has agents has).
    #[arg(long)]
    pub prime_auth: bool,
    /// Longest wait (seconds) for every agent to connect before sending starts anyway.
    #[arg(long, default_value_t = 300.0)]
    pub connect_timeout: f64,
    /// First wait (seconds) after a failed connection attempt; doubles per failure.
    #[arg(long, default_value_t = 1.0)]
    pub retry_min: f64,
    /// Longest wait (seconds) between connection attempts.
    #[arg(long, default_value_t = 120.0)]
    pub retry_max: f64,
    /// Bind each agent's socket to an address of 127.0.0.0/8 (`auto`: when every backend is on
    /// IPv4 loopback), so more than ~28,000 connections fit on one backend port.
    #[arg(long, value_enum, default_value_t = SpreadSources::Auto)]
    pub spread_sources: SpreadSources,
    /// Agents sharing one source address when spreading.
    #[arg(long, default_value_t = 1000)]
    pub agents_per_source: usize,
    /// Also run a tcp- and udp-handler sink on this address and report deliveries per second.
    #[arg(long)]
    pub sink_listen: Option<SocketAddr>,
    /// Listen here for the backend's `keepalive` handler (tcp, filter `is_incident`) and count
    /// keepalive alerts.
    #[arg(long)]
    pub alert_sink_listen: Option<SocketAddr>,
    /// After the run, read every keepalive event of the simulated agents through this REST API
    /// (as `--api-user`) and count those failing or with a failure in their history.
    #[arg(long)]
    pub api_url: Option<String>,
    #[arg(long, default_value = "admin")]
    pub api_user: String,
    #[arg(
        long,
        env = "KENSA_LOADGEN_API_PASSWORD",
        default_value = "P@ssw0rd!",
        hide_default_value = true
    )]
    pub api_password: String,
    /// PIDs of the backends (comma-separated), to sample their RSS and CPU time from /proc;
    /// per phase for the first one, over time for all.
    #[arg(long, value_delimiter = ',')]
    pub backend_pid: Vec<u32>,
    /// More processes to sample over time, `name=pid` (e.g. `nats=1234`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub watch_pid: Vec<String>,
    #[arg(long, default_value_t = 100)]
    pub rss_interval_ms: u64,
    /// Seconds between samples of the watched processes over time.
    #[arg(long, default_value_t = 5.0)]
    pub series_interval: f64,
    /// Answer every check request at once with a canned result carrying the request's round
    /// (status drawn from `--status-mix`); with `--checks 0` agents send nothing else.
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

/// The schedule of the sending, fixed when it starts (after the connect phase).
struct Plan {
    start: Instant,
    measure_from: Instant,
    send_until: Instant,
    drain_until: Instant,
    /// Events/s of one agent; 0: as fast as the window allows.
    agent_rate: f64,
    /// Agents connected when sending started.
    agents: usize,
}

/// What every agent shares for the whole run.
struct Shared {
    /// When the run started: times in the report are seconds since then.
    t0: Instant,
    /// Simulated agents in the run.
    agents: usize,
    targets: Vec<SocketAddr>,
    urls: Vec<String>,
    start_on_first_url: bool,
    sources: Option<SourceAddresses>,
    user: String,
    password: String,
    window: usize,
    keepalive_interval: Duration,
    keepalive_warning_timeout: u64,
    /// `None`: never re-send within the session.
    resend_after: Option<Duration>,
    status_mix: StatusMix,
    /// `(status, output)` per entry of the status mix.
    outputs: Vec<(u32, String)>,
    answer_requests: bool,
    retry_min: Duration,
    retry_max: Duration,
    /// Limits handshakes in progress during the connect phase (first sessions only: a real
    /// fleet's reconnects are not coordinated).
    connect_gate: Semaphore,
    /// `None` until every agent connected (or the connect timeout passed).
    plan: watch::Receiver<Option<Arc<Plan>>>,
    counters: Counters,
    /// Sessions going up and down (not the ones the load generator closes at the end).
    /// Appended to under the lock, read once at the end.
    changes: Mutex<Vec<Change>>,
}

/// Totals that the timeline samples while agents run.
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    connected: AtomicI64,
    connected_by_url: Vec<AtomicI64>,
    /// Agents that had at least one session.
    ever_connected: AtomicUsize,
    /// Agents that stopped trying (credentials refused).
    gave_up: AtomicUsize,
}

impl Shared {
    fn session_up(&self, url: usize) {
        self.counters.connected.fetch_add(1, Ordering::Relaxed);
        self.counters.connected_by_url[url].fetch_add(1, Ordering::Relaxed);
        self.log(url, true);
    }

    /// A session ended; logged as a change when it broke (not when we closed it).
    fn session_down(&self, url: usize, broke: bool) {
        self.counters.connected.fetch_sub(1, Ordering::Relaxed);
        self.counters.connected_by_url[url].fetch_sub(1, Ordering::Relaxed);
        if broke {
            self.log(url, false);
        }
    }

    fn log(&self, url: usize, up: bool) {
        let at_s = self.t0.elapsed().as_secs_f64();
        self.changes
            .lock()
            .expect("session log")
            .push(Change { at_s, up, url });
    }

    fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.borrow().clone()
    }
}

/// One simulated agent: who it is and what it sends.
struct SimAgent {
    index: usize,
    identity: AgentIdentity,
    /// `[check * statuses + status index]`.
    templates: Vec<EventTemplate>,
    checks: usize,
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
    /// The first session's handshake (upgrade through `entity_config`), if there was one.
    handshake: Option<Duration>,
    /// Whether the very first attempt failed.
    first_attempt_failed: bool,
    /// Failed connection attempts before the first session, and after it.
    failures_before_first: u64,
    failures_after_first: u64,
    /// The first few attempt errors.
    failure_samples: Vec<String>,
    /// Sessions established, and the ones that broke (with why).
    sessions: u64,
    session_errors: Vec<String>,
    /// From a session breaking to the next one established.
    downtimes: Vec<Duration>,
    /// The agent stopped trying (credentials refused).
    gave_up: bool,
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
    ensure!(!args.agent_urls.is_empty(), "--agent-url is required");
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
    ensure!(
        args.retry_min > 0.0 && args.retry_max >= args.retry_min,
        "--retry-min must be > 0 and --retry-max at least --retry-min"
    );
    ensure!(args.series_interval > 0.0, "--series-interval must be > 0");
    let watch_pids = args
        .watch_pid
        .iter()
        .map(|spec| {
            let (name, pid) = spec
                .split_once('=')
                .with_context(|| format!("--watch-pid {spec:?}: expected name=pid"))?;
            let pid: u32 = pid
                .parse()
                .with_context(|| format!("--watch-pid {spec:?}: pid is not a number"))?;
            Ok((name.to_owned(), pid))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let started_at = unix_now();
    let started_at_ms = crate::client::unix_now_ms();
    let load_at_start = load_averages();
    let tcp_at_start = crate::procfs::tcp_counters();
    let fd_limit = crate::fdlimit::raise(args.agents as u64 + crate::fdlimit::BASE_DESCRIPTORS);
    let mut targets = Vec::with_capacity(args.agent_urls.len());
    for url in &args.agent_urls {
        targets.push(crate::sources::resolve(url).await?);
    }
    let sources = SourceAddresses::plan(
        args.spread_sources,
        &targets,
        args.agents,
        args.agents_per_source,
    )?;
    let alert_sink = match args.alert_sink_listen {
        Some(address) => {
            let sink = AlertSink::bind(address, t0).await?;
            progress(format_args!("keepalive alerts on {}", sink.address()));
            Some(sink)
        }
        None => None,
    };
    let monitor = match args.backend_pid.first() {
        Some(pid) => Some(ProcessMonitor::start(
            *pid,
            Duration::from_millis(args.rss_interval_ms.max(1)),
        )?),
        None => None,
    };
    let mut watched: Vec<(String, u32)> = args
        .backend_pid
        .iter()
        .enumerate()
        .map(|(index, pid)| (format!("backend-{index}"), *pid))
        .collect();
    watched.extend(watch_pids);
    let series = (!watched.is_empty())
        .then(|| Series::start(watched, t0, Duration::from_secs_f64(args.series_interval)));
    let phase = |name: &str| {
        progress(format_args!("phase {name}"));
        if let Some(monitor) = &monitor {
            monitor.phase(name);
        }
    };

    phase("connect");
    let (plan_sender, plan_receiver) = watch::channel(None);
    let outputs = output_lines(&args.status_mix, args.output_bytes);
    let shared = Arc::new(Shared {
        t0,
        agents: args.agents,
        targets,
        urls: args.agent_urls.clone(),
        start_on_first_url: args.start_on_first_url,
        sources,
        user: args.user.clone(),
        password: args.password.clone(),
        window: args.window,
        keepalive_interval: Duration::from_secs(args.keepalive_interval),
        keepalive_warning_timeout: args.keepalive_warning_timeout,
        resend_after: (args.resend_after > 0.0).then(|| secs(args.resend_after)),
        status_mix: args.status_mix.clone(),
        outputs: outputs.clone(),
        answer_requests: args.answer_requests,
        retry_min: secs(args.retry_min),
        retry_max: secs(args.retry_max),
        connect_gate: Semaphore::new(args.connect_concurrency),
        plan: plan_receiver,
        counters: Counters {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            connected: AtomicI64::new(0),
            connected_by_url: args.agent_urls.iter().map(|_| AtomicI64::new(0)).collect(),
            ever_connected: AtomicUsize::new(0),
            gave_up: AtomicUsize::new(0),
        },
        changes: Mutex::new(Vec::new()),
    });
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample_timeline(
        shared.clone(),
        sink.as_ref().map(|s| s.counter_reader()),
        timeline.clone(),
    ));
    let mut agents = Vec::with_capacity(args.agents);
    for index in 0..args.agents {
        agents.push(prepare_agent(&args, &outputs, index)?);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let connect_deadline = t0 + secs(args.connect_timeout);
    let mut agents = agents.into_iter();
    if args.prime_auth {
        if let Some(agent) = agents.next() {
            tasks.spawn(run_agent(agent, shared.clone()));
            wait_connected(&shared, 1, connect_deadline).await;
        }
    }
    // The connect phase: until every agent had a session (or gave up), or the timeout.
    let mass_connect = Instant::now();
    for agent in agents {
        tasks.spawn(run_agent(agent, shared.clone()));
    }
    let all_connected = wait_connected(&shared, args.agents, connect_deadline).await;
    let all_connected_after = all_connected.then(|| mass_connect.elapsed());
    let connect_wall = t0.elapsed();
    let connected = shared.counters.connected.load(Ordering::Relaxed).max(0) as usize;
    progress(format_args!(
        "{connected} of {} agents connected in {:.1} s",
        args.agents,
        connect_wall.as_secs_f64()
    ));
    if connected == 0 {
        sampler.abort();
        tasks.abort_all();
        let mut failures = Vec::new();
        while let Some(report) = tasks.join_next().await {
            if let Ok(report) = report {
                failures.extend(report.failure_samples);
            }
        }
        bail!(
            "no agent could connect to {}: {}",
            args.agent_urls.join(", "),
            summarize(failures)
        );
    }

    let start = Instant::now();
    let plan = Arc::new(Plan {
        start,
        measure_from: start + secs(args.warmup),
        send_until: start + secs(args.duration),
        drain_until: start + secs(args.duration + args.drain),
        agent_rate: args.rate / connected as f64,
        agents: connected,
    });
    let plan_start_s = start.duration_since(t0).as_secs_f64();
    let tcp_at_plan_start = crate::procfs::tcp_counters();
    plan_sender.send_replace(Some(plan.clone()));
    let handled = || sink.as_ref().map_or(0, Sink::handled);

    phase("warmup");
    tokio::time::sleep_until(plan.measure_from).await;
    phase("measure");
    let at_measure_start = (
        shared.counters.sent.load(Ordering::Relaxed),
        shared.counters.acked.load(Ordering::Relaxed),
        handled(),
    );
    tokio::time::sleep_until(plan.send_until).await;
    let at_measure_end = (
        shared.counters.sent.load(Ordering::Relaxed),
        shared.counters.acked.load(Ordering::Relaxed),
        handled(),
    );
    phase("drain");
    let mut reports = Vec::with_capacity(args.agents);
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
    let keepalive_audit = match &args.api_url {
        Some(url) => keepalive_audit(&args, url)
            .await
            .unwrap_or_else(|err| json!({"error": format!("{err:#}")})),
        None => Value::Null,
    };
    let (rss_report, phases_report) = match monitor {
        Some(monitor) => monitor.finish(),
        None => (Value::Null, Value::Null),
    };
    let measure_window_s = (
        plan.measure_from.duration_since(t0).as_secs_f64(),
        plan.send_until.duration_since(t0).as_secs_f64(),
    );
    let series_report = series.map_or(Value::Null, |s| s.finish(measure_window_s));

    let window = plan.send_until.duration_since(plan.measure_from);
    let window_s = window.as_secs_f64();
    let per_s = |from: u64, to: u64| round1(to.saturating_sub(from) as f64 / window_s);
    let latency = summary_without_rate(total.latencies, window, true);
    let handshake_summary = summary_without_rate(total.handshakes, connect_wall, false);
    let changes = {
        let mut changes = std::mem::take(&mut *shared.changes.lock().expect("session log"));
        changes.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        changes
    };
    let storm_list = storms(
        &changes,
        plan_start_s,
        connected as i64,
        connected as i64,
        args.agent_urls.len(),
    );
    let downtime_summary = summary_without_rate(total.downtimes, window, false);
    let timeline = std::mem::take(&mut *timeline.lock().expect("timeline lock"));
    let load_at_end = load_averages();
    let tcp_at_end = crate::procfs::tcp_counters();
    Ok(json!({
        "benchmark": "agents",
        "label": args.label,
        "agent_url": args.agent_urls[0],
        "agent_urls": args.agent_urls,
        "started_at_unix": started_at,
        "started_at_unix_ms": started_at_ms,
        "machine": crate::api::machine(),
        "load_average": {"at_start": load_at_start, "at_end": load_at_end},
        "fd_limit": fd_limit,
        // Machine-wide TCP counters (other processes count too).
        "tcp_counters": {
            "connect_phase": crate::procfs::tcp_counters_delta(&tcp_at_start, &tcp_at_plan_start),
            "after_connect": crate::procfs::tcp_counters_delta(&tcp_at_plan_start, &tcp_at_end),
        },
        "sources": match &shared.sources {
            Some(sources) => json!({
                "spread": true,
                "agents_per_address": args.agents_per_source,
                "addresses": sources.count(args.agents),
                "first": sources.for_agent(0).to_string(),
                "last": sources.for_agent(args.agents - 1).to_string(),
            }),
            None => json!({"spread": false}),
        },
        "parameters": {
            "agents": args.agents,
            "checks_per_agent": args.checks,
            "answer_requests": args.answer_requests,
            "subscription_groups": args.subscription_groups,
            "rate": args.rate,
            "window": args.window,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "drain_s": args.drain,
            "keepalive_interval_s": args.keepalive_interval,
            "keepalive_warning_timeout_s": args.keepalive_warning_timeout,
            "status_mix": args.status_mix.to_json(),
            "handlers": args.handlers,
            "check_interval": args.check_interval,
            "output_bytes": args.output_bytes,
            "resend_after_s": args.resend_after,
            "namespace": args.namespace,
            "connect_concurrency": args.connect_concurrency,
            "prime_auth": args.prime_auth,
            "start_on_first_url": args.start_on_first_url,
            "retry_min_s": args.retry_min,
            "retry_max_s": args.retry_max,
        },
        "handshakes": {
            "attempted": args.agents,
            "succeeded": total.ever_connected,
            "failed": args.agents - total.ever_connected,
            "connected_at_start": connected,
            // From the start of the mass connect (after the first agent with --prime-auth).
            "all_connected_after_s": all_connected_after.map(|d| round3(d.as_secs_f64())),
            "connect_phase_s": round3(connect_wall.as_secs_f64()),
            "agents_whose_first_attempt_failed": total.first_attempt_failed,
            "failed_attempts_before_connecting": total.failures_before_first,
            "gave_up": total.gave_up,
            "failures": sample_errors(total.failure_samples.clone()),
            "latency": handshake_summary,
        },
        "measure": {
            "wall_s": round3(window_s),
            "sent_per_s": per_s(at_measure_start.0, at_measure_end.0),
            "acked_per_s": per_s(at_measure_start.1, at_measure_end.1),
            "handled_per_s": sink.as_ref().map(|_| per_s(at_measure_start.2, at_measure_end.2)),
            "ack_latency": latency,
            "dispatch_latency_ms": dispatch_summary(&mut total.dispatch_ms),
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
            "sessions_ended_early": total.session_errors.len(),
            "session_errors": sample_errors(total.session_errors),
        },
        "reconnects": {
            "plan_start_s": round3(plan_start_s),
            "sessions_broken": changes.iter().filter(|c| !c.up && c.at_s >= plan_start_s).count(),
            "failed_attempts_after_connecting": total.failures_after_first,
            "downtime": downtime_summary,
            "storms": storm_list.iter().map(|s| s.to_json()).collect::<Vec<_>>(),
        },
        "keepalive_alerts": alert_sink.as_ref().map(AlertSink::report),
        "keepalive_audit": keepalive_audit,
        "sink": sink.as_ref().map(Sink::report),
        "timeline": timeline,
        "rss": rss_report,
        "phases": phases_report,
        "series": series_report,
    }))
}

/// Waits until `count` agents had a session (true) or every agent had one or gave up, or
/// `deadline` passed (false).
async fn wait_connected(shared: &Shared, count: usize, deadline: Instant) -> bool {
    let agents = shared.agents;
    loop {
        let connected = shared.counters.ever_connected.load(Ordering::Relaxed);
        let gave_up = shared.counters.gave_up.load(Ordering::Relaxed);
        if connected >= count {
            return true;
        }
        if connected + gave_up >= agents || Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.max(0.0))
}

/// A latency summary without the rate; `keep_wall` keeps `wall_s`.
fn summary_without_rate(latencies: Vec<Duration>, wall: Duration, keep_wall: bool) -> Value {
    let mut summary = PhaseTimings { latencies, wall }.summary();
    if let Some(object) = summary.as_object_mut() {
        object.remove("requests_per_s");
        if !keep_wall {
            object.remove("wall_s");
        }
    }
    summary
}

/// Agent `index`'s identity and pre-rendered results.
fn prepare_agent(
    args: &AgentsArgs,
    outputs: &[(u32, String)],
    index: usize,
) -> anyhow::Result<SimAgent> {
    let mut subscriptions = args.subscriptions.clone();
    if args.subscription_groups > 0 {
        subscriptions.push(format!(
            "{}-group-{:02}",
            args.name_prefix,
            index % args.subscription_groups
        ));
    }
    let identity = AgentIdentity {
        name: format!("{}-{index:04}", args.name_prefix),
        namespace: args.namespace.clone(),
        subscriptions,
    };
    let mut templates = Vec::with_capacity(args.checks * outputs.len());
    for check in 0..args.checks {
        let name = format!("{}-check-{check:02}", args.name_prefix);
        for (status, output) in outputs {
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
    Ok(SimAgent {
        index,
        identity,
        templates,
        checks: args.checks,
    })
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

/// The order in which agent `index` tries the `urls` backends: its own fixed random order
/// (as a real agent shuffles its list once per process), or with `first` the first URL
/// and then the others in its own order.
fn url_order(index: usize, urls: usize, first: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..urls).collect();
    let from = usize::from(first).min(urls);
    // Fisher–Yates over `order[from..]`, seeded by the agent's index.
    let mut seed = index as u64;
    for i in (from + 1..urls).rev() {
        seed = crate::api::splitmix64(seed);
        let j = from + (seed % (i - from + 1) as u64) as usize;
        order.swap(i, j);
    }
    order
}

/// Why a connection attempt failed, and whether retrying can help.
struct AttemptError {
    message: String,
    /// The backend refused the credentials or the namespace (401/403/404): no retry.
    fatal: bool,
    /// HTTP 429: wait twice as long, as the real agent does.
    overloaded: bool,
}

/// The WebSocket handshake with the agent headers over a connection from `source`, then the
/// backend's first frame, which must be `entity_config`.
async fn connect(
    shared: &Shared,
    url: usize,
    source: Option<Ipv4Addr>,
    identity: &AgentIdentity,
) -> Result<Socket, AttemptError> {
    let fail = |message: String| AttemptError {
        message,
        fatal: false,
        overloaded: false,
    };
    let request = handshake_request(&shared.urls[url], identity, &shared.user, &shared.password)
        .map_err(|err| AttemptError {
            message: format!("{err:#}"),
            fatal: true,
            overloaded: false,
        })?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let stream = match tokio::time::timeout_at(
        deadline,
        crate::sources::connect(shared.targets[url], source),
    )
    .await
    {
        Err(_) => {
            return Err(fail(format!(
                "connect timed out after {HANDSHAKE_TIMEOUT:?}"
            )))
        }
        Ok(Err(err)) => return Err(fail(format!("connect: {err}"))),
        Ok(Ok(stream)) => stream,
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(SOCKET_WRITE_BUFFER)
        .max_message_size(Some(kensa_proto::MAX_FRAME_BYTES))
        .max_frame_size(Some(kensa_proto::MAX_FRAME_BYTES));
    let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
    let (mut socket, _) = match tokio::time::timeout_at(deadline, handshake).await {
        Err(_) => {
            return Err(fail(format!(
                "handshake timed out after {HANDSHAKE_TIMEOUT:?}"
            )))
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            return Err(AttemptError {
                message: format!("handshake refused: {} {}", response.status(), body.trim()),
                fatal: matches!(status, 401 | 403 | 404),
                overloaded: status == 429,
            });
        }
        Ok(Err(err)) => return Err(fail(format!("handshake failed: {err}"))),
        Ok(Ok(connected)) => connected,
    };
    loop {
        let message = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => {
                return Err(fail(format!(
                    "no entity_config within {HANDSHAKE_TIMEOUT:?}"
                )))
            }
            Ok(None) => return Err(fail("closed before entity_config".into())),
            Ok(Some(Err(err))) => return Err(fail(format!("reading entity_config: {err}"))),
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Binary(bytes) => {
                return match BackendMessage::decode(&bytes) {
                    Ok(BackendMessage::EntityConfig(_)) => Ok(socket),
                    Ok(other) => Err(fail(format!("first frame is not entity_config: {other:?}"))),
                    Err(err) => Err(fail(format!("first frame: {err}"))),
                };
            }
            Message::Close(frame) => {
                return Err(fail(format!("closed before entity_config: {frame:?}")))
            }
            _ => continue,
        }
    }
}

fn handshake_request(
    url: &str,
    identity: &AgentIdentity,
    user: &str,
    password: &str,
) -> anyhow::Result<tokio_tungstenite::tungstenite::handshake::client::Request> {
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
    Ok(request)
}

/// Resolves when the run is over for agents (the end of the drain time).
async fn run_over(plan: &mut watch::Receiver<Option<Arc<Plan>>>) {
    loop {
        let current = plan.borrow_and_update().clone();
        if let Some(plan) = current {
            tokio::time::sleep_until(plan.drain_until).await;
            return;
        }
        if plan.changed().await.is_err() {
            // The run was abandoned before it started.
            return std::future::pending().await;
        }
    }
}

/// One agent from its first connection attempt until the run is over: sessions, and
/// reconnections when they break.
async fn run_agent(agent: SimAgent, shared: Arc<Shared>) -> AgentReport {
    let mut report = AgentReport::default();
    let mut pending: HashMap<Uuid, Pending> = HashMap::with_capacity(shared.window);
    let mut answers: HashMap<String, Vec<AnswerTemplate>> = HashMap::new();
    let mut plan = shared.plan.clone();
    let order = url_order(agent.index, shared.urls.len(), shared.start_on_first_url);
    let source = shared.sources.map(|s| s.for_agent(agent.index));
    let mut attempt = 0usize;
    let mut backoff: Option<Duration> = None;
    let mut down_since: Option<Instant> = None;
    let mut sequence = 0u64;
    loop {
        let url = order[attempt % order.len()];
        attempt += 1;
        let first = report.sessions == 0;
        let permit = if first {
            shared.connect_gate.acquire().await.ok()
        } else {
            None
        };
        let started = Instant::now();
        let result = tokio::select! {
            result = connect(&shared, url, source, &agent.identity) => result,
            _ = run_over(&mut plan) => break,
        };
        drop(permit);
        match result {
            Ok(socket) => {
                let now = Instant::now();
                backoff = None;
                if first {
                    report.handshake = Some(now - started);
                    shared
                        .counters
                        .ever_connected
                        .fetch_add(1, Ordering::Relaxed);
                }
                if let Some(since) = down_since.take() {
                    report.downtimes.push(now - since);
                }
                report.sessions += 1;
                shared.session_up(url);
                let mut session = Session {
                    agent: &agent,
                    shared: &shared,
                    plan: &mut plan,
                    report: &mut report,
                    pending: &mut pending,
                    answers: &mut answers,
                    sequence: &mut sequence,
                    retry: None,
                };
                match session.drive(socket).await {
                    Ok(()) => {
                        shared.session_down(url, false);
                        break;
                    }
                    Err(err) => {
                        shared.session_down(url, true);
                        report.session_errors.push(format!("{err:#}"));
                        down_since = Some(Instant::now());
                        // As the real agent: the next attempt at once, to the next backend.
                    }
                }
            }
            Err(err) => {
                if first {
                    report.failures_before_first += 1;
                    if attempt == 1 {
                        report.first_attempt_failed = true;
                    }
                } else {
                    report.failures_after_first += 1;
                }
                if report.failure_samples.len() < AGENT_ERROR_SAMPLES {
                    report.failure_samples.push(err.message.clone());
                }
                if err.fatal {
                    report.gave_up = true;
                    shared.counters.gave_up.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                let base = match backoff {
                    None => shared.retry_min,
                    Some(previous) => (previous * 2).min(shared.retry_max),
                };
                backoff = Some(base);
                let jitter = (crate::api::splitmix64(((agent.index as u64) << 32) ^ attempt as u64)
                    % 1000) as f64
                    / 1000.0;
                let mut wait = (base + base.mul_f64(jitter)).min(shared.retry_max);
                if err.overloaded {
                    wait *= 2;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = run_over(&mut plan) => break,
                }
            }
        }
    }
    report.unacked = pending.len() as u64;
    report
}

/// One session of one agent, with the state that outlives it.
struct Session<'a> {
    agent: &'a SimAgent,
    shared: &'a Shared,
    plan: &'a mut watch::Receiver<Option<Arc<Plan>>>,
    report: &'a mut AgentReport,
    pending: &'a mut HashMap<Uuid, Pending>,
    /// Answer templates per check name (`--answer-requests`).
    answers: &'a mut HashMap<String, Vec<AnswerTemplate>>,
    /// Results sent so far (drives the fixed rate and the status draws).
    sequence: &'a mut u64,
    /// A re-send the backend asked for (`Ack::retry_after_ms`): when, and of the events sent
    /// before which instant.
    retry: Option<(Instant, Instant)>,
}

impl Session<'_> {
    /// Runs the session until the run is over (`Ok`) or the session breaks (`Err`).
    async fn drive(&mut self, socket: Socket) -> anyhow::Result<()> {
        let shared = self.shared;
        let agent = self.agent;
        let (mut write, mut read) = socket.split();
        let statuses = shared.status_mix.0.len();
        let keepalive = |identity: &AgentIdentity| {
            identity.keepalive(
                shared.keepalive_interval.as_secs(),
                shared.keepalive_warning_timeout,
                0,
            )
        };
        write
            .send(Message::Binary(keepalive(&agent.identity)?.into()))
            .await
            .context("sending the first keepalive")?;
        self.report.keepalives += 1;
        // Like the real agent after a reconnect: everything not acknowledged goes again.
        if !self.pending.is_empty() {
            let now = Instant::now();
            for event in self.pending.values_mut() {
                write
                    .feed(Message::Binary(event.frame.clone()))
                    .await
                    .context("re-sending after reconnecting")?;
                event.last_sent = now;
            }
            write
                .flush()
                .await
                .context("re-sending after reconnecting")?;
            self.report.resent += self.pending.len() as u64;
        }
        let session_start = Instant::now();
        let mut keepalive_tick = tokio::time::interval_at(
            session_start + shared.keepalive_interval,
            shared.keepalive_interval,
        );
        let resend_scan = shared
            .resend_after
            .map_or(RESEND_SCAN_MAX, |after| after / 5)
            .clamp(RESEND_SCAN_MIN, RESEND_SCAN_MAX);
        let mut resend_tick = tokio::time::interval_at(session_start + resend_scan, resend_scan);
        let mut plan: Option<Arc<Plan>> = shared.plan();

        loop {
            if plan.is_none() {
                plan = shared.plan();
            }
            let now = Instant::now();
            let sending = plan.as_ref().is_some_and(|p| now < p.send_until);
            if plan.is_some() && !sending && self.pending.is_empty() {
                break;
            }
            let room = shared.window.saturating_sub(self.pending.len());
            // Agents start at evenly spread offsets within one period, so a fixed rate does
            // not arrive as one burst per period.
            let (rate, offset, start) = match &plan {
                Some(p) if p.agent_rate > 0.0 => (
                    p.agent_rate,
                    Duration::from_secs_f64(
                        (agent.index % p.agents) as f64 / p.agents as f64 / p.agent_rate,
                    ),
                    p.start,
                ),
                Some(p) => (0.0, Duration::ZERO, p.start),
                None => (0.0, Duration::ZERO, now),
            };
            let send_gate = if rate > 0.0 {
                let due = start + offset + Duration::from_secs_f64(*self.sequence as f64 / rate);
                Either::Left(tokio::time::sleep_until(due))
            } else {
                Either::Right(std::future::ready(()))
            };
            let send_until = plan.as_ref().map(|p| p.send_until);
            let drain_until = plan.as_ref().map(|p| p.drain_until);
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
                    let message = BackendMessage::decode(&bytes).context("decoding a backend frame")?;
                    self.received(message, plan.as_deref(), &mut write).await?;
                }
                changed = self.plan.changed(), if plan.is_none() => {
                    if changed.is_err() {
                        // The run was abandoned: nothing will ever start.
                        std::future::pending::<()>().await;
                    }
                }
                _ = keepalive_tick.tick() => {
                    write.send(Message::Binary(keepalive(&agent.identity)?.into())).await.context("sending a keepalive")?;
                    self.report.keepalives += 1;
                }
                _ = resend_tick.tick(), if shared.resend_after.is_some() => {
                    let resend_after = shared.resend_after.unwrap_or(Duration::MAX);
                    let sent_before = Instant::now().checked_sub(resend_after).unwrap_or(session_start);
                    self.resend(&mut write, sent_before).await?;
                }
                _ = sleep_until_opt(self.retry.map(|(due, _)| due)), if self.retry.is_some() => {
                    if let Some((_, sent_before)) = self.retry.take() {
                        self.resend(&mut write, sent_before).await?;
                    }
                }
                _ = send_gate, if sending && room > 0 && agent.checks > 0 => {
                    let now = Instant::now();
                    let due = if rate > 0.0 {
                        let elapsed = now.saturating_duration_since(start + offset).as_secs_f64();
                        ((elapsed * rate).floor() as u64 + 1).saturating_sub(*self.sequence)
                    } else {
                        room as u64
                    };
                    let batch = due.min(room as u64);
                    let executed = unix_now();
                    for _ in 0..batch {
                        let sequence = *self.sequence;
                        let check = (sequence as usize) % agent.checks;
                        let roll = crate::api::splitmix64(((agent.index as u64) << 40) ^ sequence);
                        let template = &agent.templates[check * statuses + shared.status_mix.pick(roll)];
                        let id = Uuid::new_v4();
                        let frame = Bytes::from(template.render(id, executed));
                        write.feed(Message::Binary(frame.clone())).await.context("sending an event")?;
                        self.pending.insert(id, Pending { first_sent: now, last_sent: now, frame });
                        *self.sequence += 1;
                    }
                    write.flush().await.context("sending events")?;
                    self.report.sent += batch;
                    shared.counters.sent.fetch_add(batch, Ordering::Relaxed);
                }
                _ = sleep_until_opt(send_until), if sending => {}
                _ = sleep_until_opt(drain_until), if plan.is_some() && !sending => break,
            }
        }
        // Best effort: the numbers are already in.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), write.send(Message::Close(None))).await;
        Ok(())
    }

    /// Sends again the pending events last sent at or before `sent_before`.
    async fn resend(
        &mut self,
        write: &mut futures::stream::SplitSink<Socket, Message>,
        sent_before: Instant,
    ) -> anyhow::Result<()> {
        let now = Instant::now();
        let mut resent = 0;
        for event in self
            .pending
            .values_mut()
            .filter(|e| e.last_sent <= sent_before)
        {
            write
                .feed(Message::Binary(event.frame.clone()))
                .await
                .context("re-sending")?;
            event.last_sent = now;
            resent += 1;
        }
        if resent > 0 {
            write.flush().await.context("re-sending")?;
            self.report.resent += resent;
        }
        Ok(())
    }

    /// Handles one backend frame.
    async fn received(
        &mut self,
        message: BackendMessage,
        plan: Option<&Plan>,
        write: &mut futures::stream::SplitSink<Socket, Message>,
    ) -> anyhow::Result<()> {
        let shared = self.shared;
        let received = Instant::now();
        let in_window = plan.is_some_and(|p| received >= p.measure_from && received < p.send_until);
        match message {
            BackendMessage::Ack(ack) => {
                if ack.retry_after_ms > 0 && self.retry.is_none() {
                    // As the agent does: after the delay plus up to as much again of jitter.
                    let after = Duration::from_millis(ack.retry_after_ms);
                    let roll = crate::api::splitmix64(
                        (self.agent.index as u64)
                            ^ received.elapsed().as_nanos() as u64
                            ^ self.report.resent,
                    );
                    let jitter = after.mul_f64((roll >> 11) as f64 / (1u64 << 53) as f64);
                    self.retry = Some((received + after + jitter, received));
                }
                for id in &ack.ids {
                    if let Some(event) = self.pending.remove(id) {
                        self.report.acked += 1;
                        shared.counters.acked.fetch_add(1, Ordering::Relaxed);
                        if in_window {
                            self.report.latencies.push(received - event.first_sent);
                        }
                    }
                }
                for rejected in &ack.rejected {
                    if self.pending.remove(&rejected.id).is_some() {
                        self.report.rejected += 1;
                        if self.report.rejections.len() < ERROR_SAMPLES {
                            self.report.rejections.push(rejected.reason.clone());
                        }
                    }
                }
            }
            BackendMessage::CheckRequest(request) => {
                self.report.check_requests += 1;
                if in_window {
                    if let Some(tick) = round_tick(&request.round) {
                        self.report
                            .dispatch_ms
                            .push(crate::client::unix_now_ms() - tick);
                    }
                }
                if shared.answer_requests {
                    let (id, frame) = self.answer(&request)?;
                    let frame = Bytes::from(frame);
                    write
                        .send(Message::Binary(frame.clone()))
                        .await
                        .context("answering a check request")?;
                    self.report.answered += 1;
                    self.report.sent += 1;
                    shared.counters.sent.fetch_add(1, Ordering::Relaxed);
                    self.pending.insert(
                        id,
                        Pending {
                            first_sent: received,
                            last_sent: received,
                            frame,
                        },
                    );
                }
            }
            BackendMessage::EntityConfig(_) => {}
        }
        Ok(())
    }

    /// The canned result of `request`, from the template of its check (built on first use,
    /// and again when the check's configuration changed).
    fn answer(&mut self, request: &kensa_proto::CheckRequest) -> anyhow::Result<(Uuid, Vec<u8>)> {
        let shared = self.shared;
        let name = &request.config.metadata.name;
        let fresh = self
            .answers
            .get(name)
            .is_some_and(|templates| templates[0].config == request.config);
        if !fresh {
            let templates = shared
                .outputs
                .iter()
                .map(|(status, output)| {
                    AnswerTemplate::new(&self.agent.identity, &request.config, *status, output)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            self.answers.insert(name.clone(), templates);
        }
        let templates = &self.answers[name];
        let sequence = *self.sequence;
        *self.sequence += 1;
        let roll = crate::api::splitmix64(((self.agent.index as u64) << 40) ^ sequence);
        let template = &templates[shared.status_mix.pick(roll)];
        let id = Uuid::new_v4();
        Ok((
            id,
            template.render(id, unix_now(), request.issued, &request.round),
        ))
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Everything the agents reported, summed.
#[derive(Default)]
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
    handshakes: Vec<Duration>,
    ever_connected: usize,
    first_attempt_failed: u64,
    failures_before_first: u64,
    failures_after_first: u64,
    failure_samples: Vec<String>,
    session_errors: Vec<String>,
    downtimes: Vec<Duration>,
    gave_up: u64,
}

fn merge(reports: Vec<AgentReport>) -> Total {
    let mut total = Total::default();
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
        total.handshakes.extend(report.handshake);
        total.ever_connected += usize::from(report.handshake.is_some());
        total.first_attempt_failed += u64::from(report.first_attempt_failed);
        total.failures_before_first += report.failures_before_first;
        total.failures_after_first += report.failures_after_first;
        total.failure_samples.extend(report.failure_samples);
        total.session_errors.extend(report.session_errors);
        total.downtimes.extend(report.downtimes);
        total.gave_up += u64::from(report.gave_up);
        for reason in report.rejections {
            if total.rejections.len() < ERROR_SAMPLES && !total.rejections.contains(&reason) {
                total.rejections.push(reason);
            }
        }
    }
    total
}

/// Up to [`ERROR_SAMPLES`] distinct messages, each with how often it occurred (most frequent
/// first).
fn sample_errors(errors: Vec<String>) -> Value {
    count_errors(errors)
        .into_iter()
        .take(ERROR_SAMPLES)
        .map(|(error, count)| json!({"error": error, "count": count}))
        .collect()
}

fn count_errors(errors: Vec<String>) -> Vec<(String, usize)> {
    let mut counted: HashMap<String, usize> = HashMap::new();
    for error in errors {
        *counted.entry(error).or_default() += 1;
    }
    let mut counted: Vec<(String, usize)> = counted.into_iter().collect();
    counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counted
}

/// `message (×n); …` of the most frequent errors.
fn summarize(errors: Vec<String>) -> String {
    count_errors(errors)
        .into_iter()
        .take(ERROR_SAMPLES)
        .map(|(error, count)| format!("{error} (×{count})"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every second from the start of the run: agents connected (per URL with several), and
/// events sent, acknowledged and handled during that second.
async fn sample_timeline(
    shared: Arc<Shared>,
    handled: Option<crate::sink::CounterReader>,
    timeline: Arc<Mutex<Vec<Value>>>,
) {
    let counters = &shared.counters;
    let mut ticker =
        tokio::time::interval_at(shared.t0 + Duration::from_secs(1), Duration::from_secs(1));
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
            "connected": counters.connected.load(Ordering::Relaxed),
            "sent": now.0 - last.0,
            "acked": now.1 - last.1,
        });
        if counters.connected_by_url.len() > 1 {
            entry["connected_by_url"] = counters
                .connected_by_url
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
        }
        if handled.is_some() {
            entry["handled"] = json!(now.2 - last.2);
        }
        timeline.lock().expect("timeline lock").push(entry);
        last = now;
    }
}

/// Reads every keepalive event through the REST API and counts, among the simulated agents'
/// (named `<name-prefix>-…`), those failing now and those with a failure in their history
/// (the last 21 keepalives).
async fn keepalive_audit(args: &AgentsArgs, api_url: &str) -> anyhow::Result<Value> {
    let client = crate::client::ApiClient::new(api_url, &args.api_user, &args.api_password, 2)?;
    let prefix = format!("{}-", args.name_prefix);
    let base = format!(
        "/api/core/v2/namespaces/{}/events?limit=500&fieldSelector=event.check.name%20%3D%3D%20keepalive",
        args.namespace
    );
    let mut next = base.clone();
    let (mut seen, mut failing, mut with_failure) = (0u64, 0u64, 0u64);
    let mut samples = Vec::new();
    loop {
        let exchange = client.send(Method::GET, &next, None).await?;
        ensure!(
            exchange.status.is_success(),
            "GET {next}: {} {}",
            exchange.status,
            String::from_utf8_lossy(&exchange.body)
        );
        let events: Vec<Value> =
            serde_json::from_slice(&exchange.body).context("decoding the keepalive events")?;
        for event in &events {
            let entity = event["entity"]["metadata"]["name"].as_str().unwrap_or("");
            if !entity.starts_with(&prefix) || event["check"]["metadata"]["name"] != "keepalive" {
                continue;
            }
            seen += 1;
            let status = event["check"]["status"].as_i64().unwrap_or(0);
            let failures = event["check"]["history"]
                .as_array()
                .map_or(0, |h| h.iter().filter(|e| e["status"] != 0).count());
            failing += u64::from(status != 0);
            with_failure += u64::from(failures > 0 || status != 0);
            if (failures > 0 || status != 0) && samples.len() < ERROR_SAMPLES {
                samples.push(json!({
                    "entity": entity,
                    "status": status,
                    "output": event["check"]["output"],
                    "failures_in_history": failures,
                }));
            }
        }
        let token = exchange
            .headers
            .get("sensu-continue")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        match token {
            Some(token) if !events.is_empty() => next = format!("{base}&continue={token}"),
            _ => break,
        }
    }
    Ok(json!({
        "keepalive_events": seen,
        "failing_now": failing,
        "with_a_failure_in_history": with_failure,
        "samples": samples,
    }))
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

/// count/p50/p90/p99/max of the tick → request-arrival latencies (ms), or null without
/// samples.
fn dispatch_summary(samples: &mut [i64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    json!({
        "count": samples.len(),
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "max": samples[samples.len() - 1],
    })
}
