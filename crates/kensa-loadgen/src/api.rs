//! The `api` benchmark: seeds N entities and N events through the REST API (unless
//! `--skip-seed`), then measures what an operator's tools do against a large store — paging
//! the whole event list with `limit`, single-resource GETs of random events and entities, and
//! one unlimited (streamed) event listing — while sampling the backend's RSS and the CPU time
//! of backend, load generator and machine per phase.
//!
//! Names are deterministic (`bench-000042`, check `bench-0`), so `--skip-seed` can measure a
//! store seeded by an earlier run. Every response is checked (status, item counts): a
//! benchmark that silently measures error pages is worse than none. Any failure ends the run
//! with an error instead of a report.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::client::{unix_now, ApiClient, Exchange};
use crate::procfs::ProcessMonitor;
use crate::stats::{round1, round3, PhaseTimings};

#[derive(Debug, Args)]
pub struct ApiArgs {
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
    /// Entities to create (`bench-000000`…), and the number the GETs pick from.
    #[arg(long, default_value_t = 40_000)]
    pub entities: usize,
    /// Events to create: event i is entity `i % entities`, check `bench-{i / entities}`.
    #[arg(long, default_value_t = 40_000)]
    pub events: usize,
    /// Requests in flight while seeding.
    #[arg(long, default_value_t = 16)]
    pub seed_concurrency: usize,
    /// Measure a store seeded by an earlier run (same --entities/--events) without writing.
    #[arg(long)]
    pub skip_seed: bool,
    /// `limit` of the paged event listing.
    #[arg(long, default_value_t = 500)]
    pub page_limit: usize,
    /// Times the whole event list is paged through (more passes, steadier percentiles).
    #[arg(long, default_value_t = 3)]
    pub page_passes: usize,
    /// Single GETs per kind (events, then entities), of random seeded names.
    #[arg(long, default_value_t = 5_000)]
    pub gets: usize,
    /// Requests in flight during the single GETs.
    #[arg(long, default_value_t = 8)]
    pub get_concurrency: usize,
    /// Skip the unlimited (streamed) listing of all events.
    #[arg(long)]
    pub skip_full_listing: bool,
    /// PID of the backend, to sample its RSS and CPU time from /proc (omit for no such figures).
    #[arg(long)]
    pub backend_pid: Option<u32>,
    #[arg(long, default_value_t = 100)]
    pub rss_interval_ms: u64,
    /// A name for this run in the report, such as the store ("sqlite", "postgres").
    #[arg(long, default_value = "")]
    pub label: String,
    /// How long to wait for the backend's /health before giving up.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
    /// Seed of the random picks of the single GETs (same seed, same sequence).
    #[arg(long, default_value_t = 1)]
    pub random_seed: u64,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the whole benchmark and returns its report.
pub async fn run(args: ApiArgs) -> anyhow::Result<Value> {
    ensure!(
        args.entities > 0 || args.events == 0,
        "--entities must be > 0 when --events is"
    );
    ensure!(
        args.seed_concurrency > 0 && args.get_concurrency > 0,
        "concurrency must be > 0"
    );
    ensure!(args.page_limit > 0, "--page-limit must be > 0");
    let started_at = unix_now();
    let started = Instant::now();
    let pool = args.seed_concurrency.max(args.get_concurrency);
    let client = Arc::new(ApiClient::new(
        &args.url,
        &args.username,
        &args.password,
        pool,
    )?);
    client
        .wait_healthy(Duration::from_secs(args.wait_secs))
        .await?;
    let backend_version = client
        .send(Method::GET, "/version", None)
        .await
        .ok()
        .and_then(|e| serde_json::from_slice::<Value>(&e.body).ok());
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
    let names = Names {
        namespace: args.namespace.clone(),
        entities: args.entities,
    };

    let seed = if args.skip_seed {
        Value::Null
    } else {
        phase("seed_entities");
        let entities = seed_entities(&client, &names, args.seed_concurrency).await?;
        phase("seed_events");
        let events = seed_events(&client, &names, args.events, args.seed_concurrency).await?;
        json!({"entities": entities, "events": events})
    };

    phase("page_events");
    let paging = page_events(
        &client,
        &names,
        args.page_limit,
        args.page_passes,
        args.events,
        monitor.as_ref(),
    )
    .await?;

    phase("get_events");
    let get_events = random_gets(
        "get_events",
        &client,
        args.gets,
        args.get_concurrency,
        args.random_seed,
        {
            let names = names.clone();
            let events = args.events;
            move |pick| names.event_path(pick % events.max(1))
        },
    )
    .await?;

    phase("get_entities");
    let get_entities = random_gets(
        "get_entities",
        &client,
        args.gets,
        args.get_concurrency,
        args.random_seed.wrapping_add(1),
        {
            let names = names.clone();
            move |pick| names.entity_path(pick % names.entities.max(1))
        },
    )
    .await?;

    let full_listing = if args.skip_full_listing {
        Value::Null
    } else {
        phase("full_listing_events");
        full_listing(&client, &names).await?
    };

    let (rss_report, phases_report) = match monitor {
        Some(monitor) => monitor.finish(),
        None => (Value::Null, Value::Null),
    };
    Ok(json!({
        "benchmark": "api",
        "label": args.label,
        "url": args.url,
        "started_at_unix": started_at,
        "duration_s": round3(started.elapsed().as_secs_f64()),
        "machine": machine(),
        "backend_version": backend_version,
        "parameters": {
            "namespace": args.namespace,
            "entities": args.entities,
            "events": args.events,
            "seeded": !args.skip_seed,
            "seed_concurrency": args.seed_concurrency,
            "page_limit": args.page_limit,
            "page_passes": args.page_passes,
            "gets": args.gets,
            "get_concurrency": args.get_concurrency,
            "random_seed": args.random_seed,
            "rss_interval_ms": args.rss_interval_ms,
        },
        "seed": seed,
        "paging": paging,
        "get_event": get_events,
        "get_entity": get_entities,
        "full_listing": full_listing,
        "rss": rss_report,
        "phases": phases_report,
    }))
}

/// The deterministic names of seeded resources and their API paths.
#[derive(Clone)]
struct Names {
    namespace: String,
    entities: usize,
}

impl Names {
    fn entity(&self, index: usize) -> String {
        format!("bench-{index:06}")
    }

    /// Event `index`: entity `index % entities`, check `bench-{index / entities}`.
    fn event(&self, index: usize) -> (String, String) {
        (
            self.entity(index % self.entities),
            format!("bench-{}", index / self.entities),
        )
    }

    fn entity_path(&self, index: usize) -> String {
        format!(
            "/api/core/v2/namespaces/{}/entities/{}",
            self.namespace,
            self.entity(index)
        )
    }

    fn event_path(&self, index: usize) -> String {
        let (entity, check) = self.event(index);
        format!(
            "/api/core/v2/namespaces/{}/events/{entity}/{check}",
            self.namespace
        )
    }

    fn events_path(&self) -> String {
        format!("/api/core/v2/namespaces/{}/events", self.namespace)
    }
}

async fn seed_entities(
    client: &Arc<ApiClient>,
    names: &Names,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let timings = run_concurrent("seed_entities", names.entities, concurrency, {
        let client = client.clone();
        let names = names.clone();
        move |index| {
            let client = client.clone();
            let name = names.entity(index);
            let path = names.entity_path(index);
            async move {
                let body = json!({
                    "entity_class": "proxy",
                    "metadata": {"name": name},
                    "subscriptions": ["linux"],
                    "system": {"hostname": name},
                });
                let exchange = client.send(Method::PUT, &path, Some(&body)).await?;
                expect_success(&exchange, "PUT", &path)?;
                Ok(exchange.elapsed)
            }
        }
    })
    .await?;
    let mut summary = timings.summary();
    summary["entities_per_s"] = summary["requests_per_s"].clone();
    Ok(summary)
}

async fn seed_events(
    client: &Arc<ApiClient>,
    names: &Names,
    events: usize,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let executed = unix_now();
    let timings = run_concurrent("seed_events", events, concurrency, {
        let client = client.clone();
        let names = names.clone();
        move |index| {
            let client = client.clone();
            let path = names.event_path(index);
            async move {
                let body = json!({"check": {"status": 0, "output": "OK", "interval": 60, "executed": executed}});
                let exchange = client.send(Method::PUT, &path, Some(&body)).await?;
                expect_success(&exchange, "PUT", &path)?;
                Ok(exchange.elapsed)
            }
        }
    })
    .await?;
    let mut summary = timings.summary();
    summary["events_per_s"] = summary["requests_per_s"].clone();
    Ok(summary)
}

/// Pages through all events `passes` times, one page at a time, following `Sensu-Continue`.
///
/// Besides the latency summary it reports the first pass page by page, in order (a page whose
/// cost grows with its position means the store scans from the start instead of seeking), and
/// the backend's RSS after the first page and after each pass (growth pass over pass would be
/// a leak; growth with the table size, something holding the table).
async fn page_events(
    client: &ApiClient,
    names: &Names,
    limit: usize,
    passes: usize,
    expected: usize,
    monitor: Option<&ProcessMonitor>,
) -> anyhow::Result<Value> {
    let mut timings = PhaseTimings::default();
    let mut items_per_pass = Vec::with_capacity(passes);
    let mut first_pass_page_ms = Vec::new();
    let mut rss_after_first_page_kib = None;
    let mut rss_after_pass_kib = Vec::with_capacity(passes);
    let mut body_bytes = 0usize;
    let started = Instant::now();
    for pass in 0..passes {
        let mut items = 0usize;
        let mut continue_token: Option<String> = None;
        loop {
            let mut path = format!("{}?limit={limit}", names.events_path());
            if let Some(token) = &continue_token {
                path.push_str("&continue=");
                path.push_str(&percent_encode(token));
            }
            let exchange = client.send(Method::GET, &path, None).await?;
            expect_success(&exchange, "GET", &path)?;
            timings.latencies.push(exchange.elapsed);
            if pass == 0 {
                first_pass_page_ms.push(round3(exchange.elapsed.as_secs_f64() * 1000.0));
                if first_pass_page_ms.len() == 1 {
                    rss_after_first_page_kib = monitor.and_then(ProcessMonitor::current_kib);
                }
            }
            body_bytes += exchange.body.len();
            let page: Value = serde_json::from_slice(&exchange.body)
                .with_context(|| format!("GET {path}: decoding"))?;
            let count = page
                .as_array()
                .with_context(|| format!("GET {path}: not a JSON array"))?
                .len();
            ensure!(
                count <= limit,
                "GET {path}: {count} items for limit {limit}"
            );
            items += count;
            continue_token = exchange
                .headers
                .get("sensu-continue")
                .and_then(|v| v.to_str().ok())
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if continue_token.is_none() {
                break;
            }
            ensure!(count > 0, "GET {path}: empty page with a continue token");
        }
        ensure!(
            items >= expected,
            "paging pass {pass}: {items} events listed, at least {expected} expected"
        );
        items_per_pass.push(items);
        rss_after_pass_kib.push(monitor.and_then(ProcessMonitor::current_kib));
    }
    timings.wall = started.elapsed();
    let pages = timings.latencies.len();
    Ok(json!({
        "limit": limit,
        "passes": passes,
        "pages": pages,
        "items_per_pass": items_per_pass,
        "avg_page_bytes": body_bytes.checked_div(pages).unwrap_or(0),
        "latency": timings.summary(),
        "first_pass_page_ms": first_pass_page_ms,
        "rss_after_first_page_kib": rss_after_first_page_kib,
        "rss_after_pass_kib": rss_after_pass_kib,
    }))
}

/// `count` GETs of `path_of(random index)` with `concurrency` in flight; each must be a 200.
async fn random_gets(
    name: &str,
    client: &Arc<ApiClient>,
    count: usize,
    concurrency: usize,
    seed: u64,
    path_of: impl Fn(usize) -> String + Send + Sync + 'static,
) -> anyhow::Result<Value> {
    let path_of = Arc::new(path_of);
    let timings = run_concurrent(name, count, concurrency, {
        let client = client.clone();
        move |index| {
            let client = client.clone();
            // The i-th pick depends only on (seed, i): reproducible whatever the scheduling.
            let path = path_of(
                splitmix64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) as usize,
            );
            async move {
                let exchange = client.send(Method::GET, &path, None).await?;
                ensure!(
                    exchange.status == StatusCode::OK,
                    "GET {path}: {} {}",
                    exchange.status,
                    snippet(&exchange.body)
                );
                Ok(exchange.elapsed)
            }
        }
    })
    .await?;
    Ok(timings.summary())
}

/// One unlimited listing of every event: the backend streams it page by page.
async fn full_listing(client: &ApiClient, names: &Names) -> anyhow::Result<Value> {
    let path = names.events_path();
    let streamed = client.get_streamed(&path).await?;
    ensure!(
        streamed.status == StatusCode::OK,
        "GET {path}: {}",
        streamed.status
    );
    Ok(json!({
        "path": path,
        "body_bytes": streamed.body_bytes,
        "first_byte_ms": round3(streamed.first_byte.as_secs_f64() * 1000.0),
        "total_ms": round3(streamed.elapsed.as_secs_f64() * 1000.0),
        "mib_per_s": round1(streamed.body_bytes as f64 / 1_048_576.0 / streamed.elapsed.as_secs_f64().max(1e-9)),
    }))
}

/// Runs `job(0..count)` on `concurrency` workers that each take the next index when done, so
/// exactly `concurrency` requests are in flight until the end. The first error stops the
/// phase (remaining workers are aborted when the set is dropped).
async fn run_concurrent<F, Fut>(
    name: &str,
    count: usize,
    concurrency: usize,
    job: F,
) -> anyhow::Result<PhaseTimings>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Duration>> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let report_every = (count / 10).max(1);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(count) {
        let (job, next, done) = (job.clone(), next.clone(), done.clone());
        let name = name.to_owned();
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(count / concurrency + 1);
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                latencies.push(job(index).await?);
                let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                if finished % report_every == 0 {
                    let rate = finished as f64 / started.elapsed().as_secs_f64();
                    progress(format_args!("{name}: {finished}/{count} ({rate:.0}/s)"));
                }
            }
        });
    }
    let mut timings = PhaseTimings::default();
    while let Some(result) = workers.join_next().await {
        timings
            .latencies
            .extend(result.context("worker panicked")??);
    }
    timings.wall = started.elapsed();
    Ok(timings)
}

fn expect_success(exchange: &Exchange, method: &str, path: &str) -> anyhow::Result<()> {
    if !exchange.status.is_success() {
        bail!(
            "{method} {path}: {} {}",
            exchange.status,
            snippet(&exchange.body)
        );
    }
    Ok(())
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// Percent-encodes everything but RFC 3986 unreserved characters (the token is opaque).
fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                encoded.push(byte as char)
            }
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

/// SplitMix64: a good-enough, dependency-free mixer for picking random names.
pub(crate) fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// CPU count and memory of the machine running the benchmark.
pub(crate) fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.trim_start_matches("MemTotal:")
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        });
    json!({"cpus": cpus, "mem_total_kib": mem_total_kib})
}

fn progress(message: std::fmt::Arguments<'_>) {
    eprintln!("kensa-loadgen: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_spread_over_entities_then_checks() {
        let names = Names {
            namespace: "default".into(),
            entities: 3,
        };
        let cases = [
            (0, "bench-000000", "bench-0"),
            (2, "bench-000002", "bench-0"),
            (3, "bench-000000", "bench-1"),
            (7, "bench-000001", "bench-2"),
        ];
        for (index, entity, check) in cases {
            assert_eq!(
                names.event(index),
                (entity.to_owned(), check.to_owned()),
                "event {index}"
            );
        }
        assert_eq!(
            names.event_path(4),
            "/api/core/v2/namespaces/default/events/bench-000001/bench-1"
        );
    }

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(percent_encode("WyJkZWZhdWx0Il0-_.~"), "WyJkZWZhdWx0Il0-_.~");
        assert_eq!(percent_encode("a+b/c="), "a%2Bb%2Fc%3D");
    }
}
