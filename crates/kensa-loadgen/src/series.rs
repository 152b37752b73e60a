//! Watched processes (the backends, and e.g. nats-server) over time: every interval, each one's
//! resident memory (`VmRSS`) and CPU use since the previous sample, and the machine's load
//! average. A long run is judged on these: a backend whose memory trends upward over a
//! ten-minute run at constant load has a leak or an unbounded queue, whatever its peak was.
//!
//! A process that exits (a backend the bench script kills) just stops having samples; the
//! report says when it was found gone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::procfs::{read_process_ticks, read_status_kib, USER_HZ};
use crate::stats::{round1, round3, Trend};

/// Samples of every watched process, until [`Series::finish`].
pub struct Series {
    /// Shared with the sampling task; locked for a few pushes at a time, never across `.await`.
    state: Arc<Mutex<SeriesState>>,
    /// The sampling loop; aborted by `finish`.
    task: tokio::task::JoinHandle<()>,
    interval: Duration,
}

struct SeriesState {
    tracks: Vec<Track>,
    /// `(t, 1-minute load average)`.
    load: Vec<(f64, f64)>,
}

struct Track {
    name: String,
    pid: u32,
    /// `(t, rss KiB, % of one core since the previous sample)`; the first sample has no CPU
    /// figure (0).
    samples: Vec<(f64, u64, f64)>,
    /// CPU ticks at the previous sample.
    last_ticks: Option<(f64, u64)>,
    /// When a read first failed: the process is gone.
    gone_at_s: Option<f64>,
}

impl Series {
    /// Starts sampling `processes` (`(name, pid)`) every `interval`; times are seconds since
    /// `t0`.
    pub fn start(processes: Vec<(String, u32)>, t0: Instant, interval: Duration) -> Series {
        let state = Arc::new(Mutex::new(SeriesState {
            tracks: processes
                .into_iter()
                .map(|(name, pid)| Track {
                    name,
                    pid,
                    samples: Vec::new(),
                    last_ticks: None,
                    gone_at_s: None,
                })
                .collect(),
            load: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let t = t0.elapsed().as_secs_f64();
                // procfs reads take microseconds and never block on I/O.
                let load = read_load_average();
                let mut state = shared.lock().expect("series state");
                if let Some(load) = load {
                    state.load.push((t, load));
                }
                for track in state.tracks.iter_mut().filter(|t| t.gone_at_s.is_none()) {
                    let rss = read_status_kib(track.pid, "VmRSS:");
                    let ticks = read_process_ticks(&format!("/proc/{}/stat", track.pid));
                    let (Ok(rss), Ok(ticks)) = (rss, ticks) else {
                        // A read can also fail because this process is out of file
                        // descriptors: only a missing /proc entry means the process is gone.
                        if !crate::procfs::exists(track.pid) {
                            track.gone_at_s = Some(t);
                        }
                        continue;
                    };
                    let cpu_pct = match track.last_ticks {
                        Some((at, before)) if t > at => {
                            ticks.saturating_sub(before) as f64 / USER_HZ / (t - at) * 100.0
                        }
                        _ => 0.0,
                    };
                    track.last_ticks = Some((t, ticks));
                    track.samples.push((t, rss, cpu_pct));
                }
            }
        });
        Series {
            state,
            task,
            interval,
        }
    }

    /// Stops sampling. Per process: every sample, and over `window` (seconds since `t0`,
    /// typically the measurement) the RSS trend, peak and mean CPU.
    pub fn finish(self, window: (f64, f64)) -> Value {
        self.task.abort();
        let state = self.state.lock().expect("series state");
        let in_window = |t: f64| t >= window.0 && t <= window.1;
        let processes: Vec<Value> = state
            .tracks
            .iter()
            .map(|track| {
                let measured: Vec<&(f64, u64, f64)> =
                    track.samples.iter().filter(|s| in_window(s.0)).collect();
                let rss: Vec<(f64, f64)> = measured.iter().map(|s| (s.0, s.1 as f64)).collect();
                // The first sample in the window covers CPU from before it.
                let cpu: Vec<f64> = measured.iter().skip(1).map(|s| s.2).collect();
                json!({
                    "name": track.name,
                    "pid": track.pid,
                    "gone_at_s": track.gone_at_s.map(round3),
                    "measure": {
                        "rss_trend_mib": Trend::of(&rss).map(|t| t.to_json(1024.0)),
                        "rss_peak_mib": measured.iter().map(|s| s.1).max().map(|k| round1(k as f64 / 1024.0)),
                        "cpu_mean_pct": (!cpu.is_empty()).then(|| round1(cpu.iter().sum::<f64>() / cpu.len() as f64)),
                    },
                    // [t, RSS MiB, CPU % of one core]
                    "samples": track.samples.iter().map(|(t, kib, cpu)| {
                        json!([round1(*t), round1(*kib as f64 / 1024.0), round1(*cpu)])
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        let load_in_window: Vec<f64> = state
            .load
            .iter()
            .filter(|(t, _)| in_window(*t))
            .map(|(_, l)| *l)
            .collect();
        json!({
            "interval_s": self.interval.as_secs_f64(),
            "window_s": [round1(window.0), round1(window.1)],
            "load_average_1m": {
                "mean_in_window": (!load_in_window.is_empty())
                    .then(|| round1(load_in_window.iter().sum::<f64>() / load_in_window.len() as f64)),
                "max_in_window": load_in_window.iter().copied().reduce(f64::max),
                "samples": state.load.iter().map(|(t, l)| json!([round1(*t), l])).collect::<Vec<_>>(),
            },
            "processes": processes,
        })
    }
}

/// The 1-, 5- and 15-minute load averages of `/proc/loadavg`.
pub fn load_averages() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

fn read_load_average() -> Option<f64> {
    load_averages().map(|l| l[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn samples_a_running_process_and_notices_one_that_is_gone() {
        let t0 = Instant::now();
        let series = Series::start(
            vec![
                ("self".to_owned(), std::process::id()),
                // Above the default pid_max: never a live process.
                ("gone".to_owned(), 4_194_304 + 17),
            ],
            t0,
            Duration::from_millis(10),
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        let report = series.finish((0.0, 10.0));
        let processes = report["processes"].as_array().unwrap();
        let me = &processes[0];
        assert!(me["samples"].as_array().unwrap().len() >= 5, "{me}");
        assert!(
            me["measure"]["rss_peak_mib"].as_f64().unwrap() > 0.0,
            "{me}"
        );
        assert!(me["measure"]["rss_trend_mib"].is_object(), "{me}");
        assert_eq!(me["gone_at_s"], Value::Null);
        let gone = &processes[1];
        assert!(gone["gone_at_s"].as_f64().is_some(), "{gone}");
        assert!(gone["samples"].as_array().unwrap().is_empty(), "{gone}");
        assert!(load_averages().is_some());
    }
}
