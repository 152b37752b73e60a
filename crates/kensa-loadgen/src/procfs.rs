//! What `/proc` says while a benchmark runs, attributed to the phase that was running
//! (seeding, paging, single GETs…). The watched process is the backend for most benchmarks and
//! the agent for `agent-rss`; reports name it (`backend_cpu_s`, `agent_cpu_s`).
//!
//! - the watched process's resident memory (`VmRSS` of `/proc/<pid>/status`), sampled on a fixed
//!   interval: start, peak and end per phase. A phase whose peak grows with the number of
//!   stored resources is the symptom of something loading a whole table. `VmHWM` (the
//!   kernel's own high-water mark) is read at the end so a spike between samples is not missed;
//! - CPU time per phase of the backend and of this load generator (`/proc/<pid>/stat`), and of
//!   the whole machine (`/proc/stat`), so a report can say what the cores were busy with —
//!   "other" is everything else, mostly the PostgreSQL server in a PostgreSQL run.
//!
//! CPU times are in clock ticks; Linux fixes `USER_HZ` at 100 on every architecture it exposes
//! to user space, which is what we assume instead of calling `sysconf`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use crate::stats::{round1, round3};

/// Clock ticks per second of `/proc` CPU times.
pub(crate) const USER_HZ: f64 = 100.0;

/// Watches one process until [`ProcessMonitor::finish`].
pub struct ProcessMonitor {
    pid: u32,
    /// Shared with the sampling task. Held only for a few field updates, never across `.await`.
    state: Arc<Mutex<MonitorState>>,
    /// The RSS sampling loop; aborted by `finish` (it owns nothing but its `Arc` of the state).
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct MonitorState {
    /// What the watched process is, as named in report keys (`backend`, `agent`).
    name: &'static str,
    samples: u64,
    start_kib: u64,
    last_kib: u64,
    peak_kib: u64,
    /// In order; the last one is the phase currently running.
    phases: Vec<Phase>,
}

#[derive(Debug)]
struct Phase {
    name: String,
    started: Instant,
    cpu_at_start: CpuSnapshot,
    rss_start_kib: u64,
    rss_peak_kib: u64,
    rss_end_kib: u64,
    /// Sum and count of the samples taken during the phase, for its mean.
    rss_sum_kib: u64,
    rss_samples: u64,
    /// Filled when the phase ends.
    report: Option<Value>,
}

/// CPU ticks consumed so far by the watched process, by this process and by the whole machine.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSnapshot {
    watched: u64,
    loadgen: u64,
    machine_busy: u64,
    machine_total: u64,
}

impl MonitorState {
    fn record(&mut self, kib: u64) {
        self.samples += 1;
        self.last_kib = kib;
        self.peak_kib = self.peak_kib.max(kib);
        if let Some(phase) = self.phases.last_mut() {
            phase.rss_peak_kib = phase.rss_peak_kib.max(kib);
            phase.rss_end_kib = kib;
            phase.rss_sum_kib += kib;
            phase.rss_samples += 1;
        }
    }

    /// Ends the running phase (if any) at `now`/`cpu`.
    fn close_phase(&mut self, now: Instant, cpu: CpuSnapshot) {
        let Some(phase) = self.phases.last_mut().filter(|p| p.report.is_none()) else {
            return;
        };
        let start = phase.cpu_at_start;
        let seconds = |ticks: u64| round3(ticks as f64 / USER_HZ);
        let wall_s = now.duration_since(phase.started).as_secs_f64();
        // Percent of one core, as `top` shows it (200 % is both cores of this machine).
        let percent = |ticks: u64| {
            if wall_s > 0.0 {
                round1(ticks as f64 / USER_HZ / wall_s * 100.0)
            } else {
                0.0
            }
        };
        let watched = cpu.watched.saturating_sub(start.watched);
        let loadgen = cpu.loadgen.saturating_sub(start.loadgen);
        let busy = cpu.machine_busy.saturating_sub(start.machine_busy);
        let total = cpu.machine_total.saturating_sub(start.machine_total);
        let idle = total.saturating_sub(busy);
        let mut report = Map::new();
        report.insert("wall_s".into(), json!(round3(wall_s)));
        report.insert("rss_start_kib".into(), json!(phase.rss_start_kib));
        report.insert("rss_peak_kib".into(), json!(phase.rss_peak_kib));
        report.insert("rss_end_kib".into(), json!(phase.rss_end_kib));
        report.insert(
            "rss_mean_kib".into(),
            json!(phase
                .rss_sum_kib
                .checked_div(phase.rss_samples)
                .unwrap_or(phase.rss_end_kib)),
        );
        report.insert(format!("{}_cpu_s", self.name), json!(seconds(watched)));
        report.insert(format!("{}_cpu_pct", self.name), json!(percent(watched)));
        report.insert("loadgen_cpu_s".into(), json!(seconds(loadgen)));
        report.insert("loadgen_cpu_pct".into(), json!(percent(loadgen)));
        report.insert(
            "other_cpu_s".into(),
            json!(seconds(busy.saturating_sub(watched + loadgen))),
        );
        report.insert("idle_cpu_s".into(), json!(seconds(idle)));
        phase.report = Some(Value::Object(report));
    }
}

impl ProcessMonitor {
    /// Starts sampling the backend `pid`'s RSS every `interval`; fails when its status cannot
    /// be read.
    pub fn start(pid: u32, interval: Duration) -> anyhow::Result<Self> {
        ProcessMonitor::start_named(pid, "backend", interval)
    }

    /// Like [`ProcessMonitor::start`] for a process reported as `name`.
    pub fn start_named(pid: u32, name: &'static str, interval: Duration) -> anyhow::Result<Self> {
        let first = read_status_kib(pid, "VmRSS:")?;
        let state = Arc::new(Mutex::new(MonitorState {
            name,
            start_kib: first,
            ..MonitorState::default()
        }));
        state.lock().expect("monitor state").record(first);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                // A procfs read is a few microseconds and never blocks on I/O: no need for
                // the blocking pool. A vanished process stops the samples.
                match read_status_kib(pid, "VmRSS:") {
                    Ok(kib) => shared.lock().expect("monitor state").record(kib),
                    // Out of file descriptors, say: try again at the next tick.
                    Err(_) if exists(pid) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(Self { pid, state, task })
    }

    /// Ends the running phase and starts `name`, both at a fresh sample.
    pub fn phase(&self, name: &str) {
        let kib = read_status_kib(self.pid, "VmRSS:").ok();
        let cpu = self.cpu_snapshot();
        let now = Instant::now();
        let mut state = self.state.lock().expect("monitor state");
        if let Some(kib) = kib {
            state.record(kib);
        }
        state.close_phase(now, cpu);
        let rss = state.last_kib;
        state.phases.push(Phase {
            name: name.to_owned(),
            started: now,
            cpu_at_start: cpu,
            rss_start_kib: rss,
            rss_peak_kib: rss,
            rss_end_kib: rss,
            rss_sum_kib: 0,
            rss_samples: 0,
            report: None,
        });
    }

    /// Takes an RSS sample now and returns it (`None` once the process is gone).
    pub fn current_kib(&self) -> Option<u64> {
        let kib = read_status_kib(self.pid, "VmRSS:").ok()?;
        self.state.lock().expect("monitor state").record(kib);
        Some(kib)
    }

    /// Stops sampling; returns the overall RSS figures and the per-phase report.
    pub fn finish(self) -> (Value, Value) {
        self.task.abort();
        let final_kib = read_status_kib(self.pid, "VmRSS:").ok();
        let high_water_mark = read_status_kib(self.pid, "VmHWM:").ok();
        let cpu = self.cpu_snapshot();
        let mut state = self.state.lock().expect("monitor state");
        if let Some(kib) = final_kib {
            state.record(kib);
        }
        state.close_phase(Instant::now(), cpu);
        let rss = json!({
            "pid": self.pid,
            "samples": state.samples,
            "start_kib": state.start_kib,
            "peak_kib": state.peak_kib,
            "end_kib": state.last_kib,
            "vm_hwm_kib": high_water_mark,
        });
        let phases: Map<String, Value> = state
            .phases
            .iter()
            .map(|p| (p.name.clone(), p.report.clone().unwrap_or(Value::Null)))
            .collect();
        (rss, Value::Object(phases))
    }

    /// Missing figures (a vanished backend) count as zero rather than failing the run.
    fn cpu_snapshot(&self) -> CpuSnapshot {
        let (machine_busy, machine_total) = read_machine_ticks().unwrap_or_default();
        CpuSnapshot {
            watched: read_process_ticks(&format!("/proc/{}/stat", self.pid)).unwrap_or(0),
            loadgen: read_process_ticks("/proc/self/stat").unwrap_or(0),
            machine_busy,
            machine_total,
        }
    }
}

/// Whether process `pid` still exists (a `stat`, which needs no file descriptor).
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Some lines of `/proc/<pid>/status` as `{"VmRSS_kib": 1234, "Threads": 9}` (numbers in kB
/// get a `_kib` suffix); fields that cannot be read are left out.
pub fn status_fields(pid: u32, fields: &[&str]) -> Value {
    let path = format!("/proc/{pid}/status");
    let Ok(status) = std::fs::read_to_string(&path) else {
        return Value::Null;
    };
    let mut out = Map::new();
    for field in fields {
        let Some(line) = status.lines().find(|l| l.starts_with(field)) else {
            continue;
        };
        let name = field.trim_end_matches(':');
        let key = if line.trim_end().ends_with("kB") {
            format!("{name}_kib")
        } else {
            name.to_owned()
        };
        if let Ok(number) = parse_status_kib(&status, field) {
            out.insert(key, json!(number));
        }
    }
    Value::Object(out)
}

/// One `Vm*:` line of `/proc/<pid>/status`, in KiB.
pub(crate) fn read_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&status, field).with_context(|| format!("{path}: {field}"))
}

fn parse_status_kib(status: &str, field: &str) -> anyhow::Result<u64> {
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(field) {
            let number = rest.trim().trim_end_matches("kB").trim();
            return number
                .parse()
                .with_context(|| format!("{field} {number:?}"));
        }
    }
    bail!("no {field} line")
}

/// The kernel's TCP counters a mass connect can move, from `/proc/net/netstat` (for this
/// network namespace, so every process on the machine counts): a full listen backlog drops
/// connection attempts (`ListenOverflows`), which clients only retry after a SYN timeout.
pub const TCP_COUNTERS: [&str; 4] = [
    "ListenOverflows",
    "ListenDrops",
    "SyncookiesSent",
    "TCPTimeouts",
];

/// The [`TCP_COUNTERS`] now (empty when `/proc/net/netstat` cannot be read).
pub fn tcp_counters() -> Vec<(&'static str, u64)> {
    std::fs::read_to_string("/proc/net/netstat")
        .map(|text| parse_tcp_counters(&text))
        .unwrap_or_default()
}

/// How much each counter grew from `before` to `after`, as a JSON object.
pub fn tcp_counters_delta(before: &[(&str, u64)], after: &[(&str, u64)]) -> Value {
    let mut out = Map::new();
    for (name, value) in after {
        if let Some((_, old)) = before.iter().find(|(n, _)| n == name) {
            out.insert((*name).to_owned(), json!(value.saturating_sub(*old)));
        }
    }
    Value::Object(out)
}

fn parse_tcp_counters(text: &str) -> Vec<(&'static str, u64)> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Vec::new();
    };
    let pairs: Vec<(&str, &str)> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .collect();
    TCP_COUNTERS
        .iter()
        .filter_map(|wanted| {
            let (_, value) = pairs.iter().find(|(name, _)| name == wanted)?;
            Some((*wanted, value.parse().ok()?))
        })
        .collect()
}

/// utime + stime of a `/proc/<pid>/stat`, in ticks.
pub(crate) fn read_process_ticks(path: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    parse_process_ticks(&stat).with_context(|| format!("{path}: utime/stime"))
}

fn parse_process_ticks(stat: &str) -> anyhow::Result<u64> {
    // The command name is in parentheses and may itself contain spaces and parentheses:
    // fields are counted from the last `)`. After it come field 3 (state) onwards, so utime
    // (field 14) and stime (field 15) are at indexes 11 and 12.
    let after_name = stat.rsplit_once(')').context("no command name")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |index: usize| -> anyhow::Result<u64> {
        let text = fields.get(index).context("too few fields")?;
        text.parse().with_context(|| format!("field {:?}", text))
    };
    Ok(field(11)? + field(12)?)
}

/// (busy, total) ticks of all CPUs from the `cpu` line of `/proc/stat`.
fn read_machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_ticks(&stat)
}

fn parse_machine_ticks(stat: &str) -> anyhow::Result<(u64, u64)> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat: no cpu line")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already
    // counted in user and nice.
    let get = |index: usize| ticks.get(index).copied().unwrap_or(0);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    let idle = get(3) + get(4);
    Ok((busy, busy + idle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status_lines() {
        let status = "Name:\tkensa-backend\nVmHWM:\t  123456 kB\nVmRSS:\t   98765 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS:").unwrap(), 98765);
        assert_eq!(parse_status_kib(status, "VmHWM:").unwrap(), 123456);
        assert!(parse_status_kib(status, "VmSwap:").is_err());
    }

    #[test]
    fn reports_status_fields_with_units() {
        let fields = status_fields(std::process::id(), &["VmRSS:", "Threads:", "NoSuchField:"]);
        assert!(fields["VmRSS_kib"].as_u64().unwrap() > 0, "{fields}");
        assert!(fields["Threads"].as_u64().unwrap() >= 1, "{fields}");
        assert_eq!(fields.as_object().unwrap().len(), 2, "{fields}");
    }

    #[test]
    fn parses_cpu_ticks() {
        let stat =
            "4242 (odd) name) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_process_ticks(stat).unwrap(), 325);
        let machine = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 50 2 25 500 10 0 1 1 0 0\n";
        assert_eq!(parse_machine_ticks(machine).unwrap(), (161, 1181));
    }

    #[test]
    fn parses_tcp_counters() {
        let text =
            "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPTimeouts\n\
                    TcpExt: 5 0 120 121 7\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let before = parse_tcp_counters(text);
        assert_eq!(
            before,
            [
                ("ListenOverflows", 120),
                ("ListenDrops", 121),
                ("SyncookiesSent", 5),
                ("TCPTimeouts", 7)
            ]
        );
        let after = parse_tcp_counters(&text.replace("5 0 120 121 7", "5 0 150 151 9"));
        let delta = tcp_counters_delta(&before, &after);
        assert_eq!(delta["ListenOverflows"], 30);
        assert_eq!(delta["TCPTimeouts"], 2);
        assert_eq!(delta["SyncookiesSent"], 0);
        assert!(parse_tcp_counters("nothing").is_empty());
    }

    #[tokio::test]
    async fn reports_this_process_by_phase() {
        let monitor = ProcessMonitor::start(std::process::id(), Duration::from_millis(5)).unwrap();
        monitor.phase("first");
        tokio::time::sleep(Duration::from_millis(30)).await;
        monitor.phase("second");
        let (rss, phases) = monitor.finish();
        assert!(rss["samples"].as_u64().unwrap() >= 3, "{rss}");
        assert!(rss["peak_kib"].as_u64().unwrap() > 0, "{rss}");
        let phases = phases.as_object().unwrap();
        assert_eq!(phases.keys().collect::<Vec<_>>(), ["first", "second"]);
        assert!(
            phases["first"]["wall_s"].as_f64().unwrap() >= 0.03,
            "{phases:?}"
        );
        assert!(
            phases["second"]["rss_peak_kib"].as_u64().unwrap() > 0,
            "{phases:?}"
        );
    }
}
