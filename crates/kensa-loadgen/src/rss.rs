//! Resident memory of the backend under test, sampled from `/proc/<pid>/status` (`VmRSS`) on a
//! fixed interval while the benchmark runs, and attributed to the phase that was running
//! (seeding, paging, single GETs…). A phase whose peak grows with the number of stored
//! resources is the symptom of something loading a whole table; per-phase start/peak/end make
//! that visible. `VmHWM` (the kernel's own high-water mark) is read at the end so a spike
//! shorter than the sampling interval is not missed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Samples one process's RSS in a background task until [`RssSampler::finish`].
pub struct RssSampler {
    pid: u32,
    /// Shared with the sampling task. Only held for a few field updates, never across `.await`.
    state: Arc<Mutex<RssState>>,
    /// The sampling loop; aborted by `finish` (it owns nothing but its `Arc` of the state).
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct RssState {
    samples: u64,
    start_kib: u64,
    last_kib: u64,
    peak_kib: u64,
    /// In order; the last one is the phase currently running.
    phases: Vec<PhaseRss>,
}

#[derive(Debug)]
struct PhaseRss {
    name: String,
    start_kib: u64,
    peak_kib: u64,
    end_kib: u64,
}

impl RssState {
    fn record(&mut self, kib: u64) {
        self.samples += 1;
        self.last_kib = kib;
        self.peak_kib = self.peak_kib.max(kib);
        if let Some(phase) = self.phases.last_mut() {
            phase.peak_kib = phase.peak_kib.max(kib);
            phase.end_kib = kib;
        }
    }
}

impl RssSampler {
    /// Starts sampling `pid` every `interval`; fails when its status cannot be read.
    pub fn start(pid: u32, interval: Duration) -> anyhow::Result<Self> {
        let first = read_status_kib(pid, "VmRSS:")?;
        let state = Arc::new(Mutex::new(RssState {
            start_kib: first,
            ..RssState::default()
        }));
        state.lock().expect("rss state").record(first);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                // A procfs read is a few microseconds and never blocks on I/O: no need for
                // the blocking pool. A vanished process just stops the samples.
                match read_status_kib(pid, "VmRSS:") {
                    Ok(kib) => shared.lock().expect("rss state").record(kib),
                    Err(_) => return,
                }
            }
        });
        Ok(Self { pid, state, task })
    }

    /// Closes the running phase and opens `name`, both at a fresh sample.
    pub fn phase(&self, name: &str) {
        let kib = read_status_kib(self.pid, "VmRSS:").ok();
        let mut state = self.state.lock().expect("rss state");
        if let Some(kib) = kib {
            state.record(kib);
        }
        let now = state.last_kib;
        state.phases.push(PhaseRss {
            name: name.to_owned(),
            start_kib: now,
            peak_kib: now,
            end_kib: now,
        });
    }

    /// Takes a sample now and returns it (`None` once the process is gone).
    pub fn current_kib(&self) -> Option<u64> {
        let kib = read_status_kib(self.pid, "VmRSS:").ok()?;
        self.state.lock().expect("rss state").record(kib);
        Some(kib)
    }

    /// Stops sampling and reports overall and per-phase figures, in KiB.
    pub fn finish(self) -> Value {
        self.task.abort();
        let final_kib = read_status_kib(self.pid, "VmRSS:").ok();
        let high_water_mark = read_status_kib(self.pid, "VmHWM:").ok();
        let mut state = self.state.lock().expect("rss state");
        if let Some(kib) = final_kib {
            state.record(kib);
        }
        let phases: serde_json::Map<String, Value> = state
            .phases
            .iter()
            .map(|p| {
                let phase =
                    json!({"start_kib": p.start_kib, "peak_kib": p.peak_kib, "end_kib": p.end_kib});
                (p.name.clone(), phase)
            })
            .collect();
        json!({
            "pid": self.pid,
            "samples": state.samples,
            "start_kib": state.start_kib,
            "peak_kib": state.peak_kib,
            "end_kib": state.last_kib,
            "vm_hwm_kib": high_water_mark,
            "phases": phases,
        })
    }
}

/// One `Vm*:` line of `/proc/<pid>/status`, in KiB.
fn read_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&status, field).with_context(|| format!("{path}: no {field} line"))
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
    bail!("missing")
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

    #[tokio::test]
    async fn samples_this_process_by_phase() {
        let sampler = RssSampler::start(std::process::id(), Duration::from_millis(5)).unwrap();
        sampler.phase("first");
        tokio::time::sleep(Duration::from_millis(30)).await;
        sampler.phase("second");
        let report = sampler.finish();
        assert!(report["samples"].as_u64().unwrap() >= 3, "{report}");
        assert!(report["peak_kib"].as_u64().unwrap() > 0, "{report}");
        let phases = report["phases"].as_object().unwrap();
        assert_eq!(phases.keys().collect::<Vec<_>>(), ["first", "second"]);
    }
}
