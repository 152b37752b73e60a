//! The `agent-rss` benchmark: the memory and CPU of one real `kensa-agent` process, idle and
//! while it runs checks at a steady rate (issue 3's target: idle RSS under 15 MB).
//!
//! The agent is started by the bench script (this binary never starts processes); this
//! subcommand waits until the agent is connected (its keepalive event exists), watches the
//! agent's `/proc` figures while it is idle, then creates `--checks` checks with `--interval`
//! for the agent's subscription — 50 checks every second is 50 executions per second — and
//! watches again once they run. Each check names a tcp handler pointing at a built-in sink
//! (`sink.rs`), so the report says how many results per second really went agent → backend →
//! handler instead of assuming the schedule was kept. The checks and the handler are deleted
//! at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::client::{unix_now, ApiClient};
use crate::procfs::{status_fields, ProcessMonitor};
use crate::sink::Sink;
use crate::stats::round1;

/// The handler the checks name; created and deleted by this benchmark.
const HANDLER: &str = "kensa-loadgen-rss-sink";
/// `/proc/<pid>/status` fields reported at the end of each phase.
const STATUS_FIELDS: &[&str] = &["VmRSS:", "RssAnon:", "RssFile:", "VmHWM:", "Threads:"];

#[derive(Debug, Args)]
pub struct AgentRssArgs {
    /// Base URL of the backend's REST API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, default_value = "admin")]
    pub username: String,
    #[arg(
        long,
        env = "KENSA_LOADGEN_PASSWORD",
        default_value = "P@ssw0rd!",
        hide_default_value = true
    )]
    pub password: String,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// PID of the agent process.
    #[arg(long)]
    pub agent_pid: u32,
    /// The agent's entity name.
    #[arg(long)]
    pub agent_name: String,
    /// A subscription of the agent: the checks are published to it.
    #[arg(long, default_value = "rss")]
    pub subscription: String,
    /// Checks to create (`rss-check-00`…).
    #[arg(long, default_value_t = 50)]
    pub checks: usize,
    /// Their interval in seconds.
    #[arg(long, default_value_t = 1)]
    pub interval: u32,
    /// Their command.
    #[arg(long, default_value = "true")]
    pub command: String,
    /// Seconds of idle measurement (after the agent is connected).
    #[arg(long, default_value_t = 20.0)]
    pub idle_secs: f64,
    /// Seconds between creating the checks and starting the load measurement.
    #[arg(long, default_value_t = 5.0)]
    pub ramp_secs: f64,
    /// Seconds of measurement while the checks run.
    #[arg(long, default_value_t = 30.0)]
    pub load_secs: f64,
    /// Where the handler sink listens (the handler is pointed at the bound address).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub sink_listen: SocketAddr,
    #[arg(long, default_value_t = 200)]
    pub rss_interval_ms: u64,
    /// How long to wait for the backend and for the agent to connect.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
    #[arg(long, default_value = "")]
    pub label: String,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the whole benchmark and returns its report.
pub async fn run(args: AgentRssArgs) -> anyhow::Result<Value> {
    ensure!(
        args.checks > 0 && args.interval > 0,
        "--checks and --interval must be > 0"
    );
    ensure!(
        args.idle_secs > 0.0 && args.load_secs > 0.0,
        "phases must last > 0 s"
    );
    let started_at = unix_now();
    let client = ApiClient::new(&args.url, &args.username, &args.password, 8)?;
    client
        .wait_healthy(Duration::from_secs(args.wait_secs))
        .await?;
    let namespace = &args.namespace;
    let keepalive = format!(
        "/api/core/v2/namespaces/{namespace}/events/{}/keepalive",
        args.agent_name
    );
    wait_for_resource(&client, &keepalive, Duration::from_secs(args.wait_secs))
        .await
        .with_context(|| format!("agent {:?} never connected", args.agent_name))?;
    let agent_command_line = std::fs::read_to_string(format!("/proc/{}/cmdline", args.agent_pid))
        .map(|cmdline| cmdline.replace('\0', " ").trim().to_owned())
        .ok();

    let sink = Sink::bind(args.sink_listen).await?;
    let handler_path = format!("/api/core/v2/namespaces/{namespace}/handlers/{HANDLER}");
    put(
        &client,
        &handler_path,
        json!({
            "metadata": {"name": HANDLER, "namespace": namespace},
            "type": "tcp",
            "socket": {"host": sink.address().ip().to_string(), "port": sink.address().port()},
            "timeout": 10,
        }),
    )
    .await?;

    let monitor = ProcessMonitor::start_named(
        args.agent_pid,
        "agent",
        Duration::from_millis(args.rss_interval_ms.max(1)),
    )?;
    let phase = |name: &str| {
        progress(format_args!("phase {name}"));
        monitor.phase(name);
    };

    phase("idle");
    tokio::time::sleep(secs(args.idle_secs)).await;
    let idle_status = status_fields(args.agent_pid, STATUS_FIELDS);

    phase("create_checks");
    let check_paths: Vec<String> = (0..args.checks)
        .map(|i| format!("/api/core/v2/namespaces/{namespace}/checks/rss-check-{i:02}"))
        .collect();
    let outcome = async {
        for (index, path) in check_paths.iter().enumerate() {
            put(
                &client,
                path,
                json!({
                    "metadata": {"name": format!("rss-check-{index:02}"), "namespace": namespace},
                    "command": args.command,
                    "interval": args.interval,
                    "subscriptions": [args.subscription],
                    "handlers": [HANDLER],
                    "publish": true,
                }),
            )
            .await?;
        }
        phase("ramp");
        tokio::time::sleep(secs(args.ramp_secs)).await;
        phase("load");
        let handled_before = sink.handled();
        let load_started = Instant::now();
        tokio::time::sleep(secs(args.load_secs)).await;
        let handled = sink.handled() - handled_before;
        let load_wall = load_started.elapsed().as_secs_f64();
        let load_status = status_fields(args.agent_pid, STATUS_FIELDS);
        anyhow::Ok((handled, load_wall, load_status))
    }
    .await;
    let (rss, phases) = monitor.finish();
    // Stop the load whatever happened, so the agent is idle again for whoever comes next.
    for path in &check_paths {
        let _ = client.send(Method::DELETE, path, None).await;
    }
    let _ = client.send(Method::DELETE, &handler_path, None).await;
    let (handled, load_wall, load_status) = outcome?;
    let expected_per_s = args.checks as f64 / f64::from(args.interval);

    Ok(json!({
        "benchmark": "agent-rss",
        "label": args.label,
        "url": args.url,
        "started_at_unix": started_at,
        "machine": crate::api::machine(),
        "agent": {"pid": args.agent_pid, "name": args.agent_name, "command_line": agent_command_line},
        "parameters": {
            "checks": args.checks,
            "interval_s": args.interval,
            "command": args.command,
            "idle_s": args.idle_secs,
            "ramp_s": args.ramp_secs,
            "load_s": args.load_secs,
            "rss_interval_ms": args.rss_interval_ms,
        },
        "idle": summary(&phases["idle"], idle_status),
        "load": {
            "scheduled_checks_per_s": round1(expected_per_s),
            "handled_results_per_s": round1(handled as f64 / load_wall),
            "handled_results": handled,
            "process": summary(&phases["load"], load_status),
        },
        "sink": sink.report(),
        "rss": rss,
        "phases": phases,
    }))
}

/// The headline figures of one phase, plus the `/proc` status fields read at its end.
fn summary(phase: &Value, status: Value) -> Value {
    json!({
        "rss_mean_kib": phase["rss_mean_kib"],
        "rss_peak_kib": phase["rss_peak_kib"],
        "rss_mean_mb": phase["rss_mean_kib"].as_u64().map(|kib| round1(kib as f64 / 1024.0)),
        "cpu_pct": phase["agent_cpu_pct"],
        "status_at_end": status,
    })
}

async fn put(client: &ApiClient, path: &str, body: Value) -> anyhow::Result<()> {
    let exchange = client.send(Method::PUT, path, Some(&body)).await?;
    if !exchange.status.is_success() {
        bail!(
            "PUT {path}: {} {}",
            exchange.status,
            String::from_utf8_lossy(&exchange.body)
        );
    }
    Ok(())
}

/// Polls `path` until it answers 200.
async fn wait_for_resource(
    client: &ApiClient,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let exchange = client.send(Method::GET, path, None).await?;
        if exchange.status == StatusCode::OK {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "GET {path} still {} after {timeout:?}",
            exchange.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn secs(seconds: f64) -> Duration {
    Duration::from_secs_f64(seconds.max(0.0))
}

fn progress(message: std::fmt::Arguments<'_>) {
    eprintln!("kensa-loadgen: {message}");
}
