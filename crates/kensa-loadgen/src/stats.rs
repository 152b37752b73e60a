//! Latency summaries: every request's duration is kept (tens of thousands of `Duration`s are
//! a few hundred KiB), sorted once, and reported as nearest-rank percentiles in milliseconds.
//! Keeping every sample instead of a histogram keeps the percentiles exact and the code small.

use std::time::Duration;

use serde_json::{json, Value};

/// The outcome of one timed phase: every request's latency and the phase's wall-clock time.
#[derive(Debug, Default)]
pub struct PhaseTimings {
    /// One entry per completed request, in no particular order (workers append their own).
    pub latencies: Vec<Duration>,
    /// From the first request sent to the last response read, across all workers.
    pub wall: Duration,
}

impl PhaseTimings {
    /// `count`, `p50/p90/p99/max/mean` in ms, and `requests_per_s` over the phase's wall time.
    pub fn summary(&self) -> Value {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let count = sorted.len();
        let total: Duration = sorted.iter().sum();
        let mean = if count == 0 {
            Duration::ZERO
        } else {
            total / count as u32
        };
        let wall_s = self.wall.as_secs_f64();
        json!({
            "count": count,
            "wall_s": round3(wall_s),
            "requests_per_s": if wall_s > 0.0 { round1(count as f64 / wall_s) } else { 0.0 },
            "p50_ms": millis(percentile(&sorted, 50.0)),
            "p90_ms": millis(percentile(&sorted, 90.0)),
            "p99_ms": millis(percentile(&sorted, 99.0)),
            "max_ms": millis(sorted.last().copied().unwrap_or_default()),
            "mean_ms": millis(mean),
        })
    }
}

/// Nearest-rank percentile of an ascending slice (`Duration::ZERO` when empty).
fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> f64 {
    round3(duration.as_secs_f64() * 1000.0)
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

pub fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |n: u64| Duration::from_millis(n);
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        for (pct, expected) in [(50.0, 50), (99.0, 99), (100.0, 100), (0.0, 1)] {
            assert_eq!(percentile(&sorted, pct), ms(expected), "p{pct}");
        }
        assert_eq!(percentile(&[ms(7)], 99.0), ms(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
