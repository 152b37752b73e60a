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

/// How a sampled quantity (such as the backend's RSS) moved over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    pub samples: usize,
    /// Mean of the samples in the first third of the time span.
    pub first_third_mean: f64,
    /// Mean of the samples in the last third of the time span.
    pub last_third_mean: f64,
    /// Least-squares slope, per minute.
    pub slope_per_min: f64,
}

impl Trend {
    /// The trend of `(seconds, value)` samples in time order; `None` with fewer than 3.
    pub fn of(samples: &[(f64, f64)]) -> Option<Trend> {
        if samples.len() < 3 {
            return None;
        }
        let first_t = samples[0].0;
        let last_t = samples[samples.len() - 1].0;
        let span = last_t - first_t;
        if span <= 0.0 {
            return None;
        }
        let mean_of = |keep: &dyn Fn(f64) -> bool| {
            let values: Vec<f64> = samples
                .iter()
                .filter(|(t, _)| keep(*t))
                .map(|(_, v)| *v)
                .collect();
            values.iter().sum::<f64>() / values.len().max(1) as f64
        };
        let first_third_mean = mean_of(&|t| t <= first_t + span / 3.0);
        let last_third_mean = mean_of(&|t| t >= last_t - span / 3.0);
        let n = samples.len() as f64;
        let mean_t = samples.iter().map(|(t, _)| t).sum::<f64>() / n;
        let mean_v = samples.iter().map(|(_, v)| v).sum::<f64>() / n;
        let covariance: f64 = samples
            .iter()
            .map(|(t, v)| (t - mean_t) * (v - mean_v))
            .sum();
        let variance: f64 = samples.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
        Some(Trend {
            samples: samples.len(),
            first_third_mean,
            last_third_mean,
            slope_per_min: covariance / variance * 60.0,
        })
    }

    /// The report section, values divided by `unit` (e.g. 1024 for KiB → MiB).
    pub fn to_json(&self, unit: f64) -> Value {
        let change_pct = if self.first_third_mean > 0.0 {
            round1((self.last_third_mean / self.first_third_mean - 1.0) * 100.0)
        } else {
            0.0
        };
        json!({
            "samples": self.samples,
            "first_third_mean": round1(self.first_third_mean / unit),
            "last_third_mean": round1(self.last_third_mean / unit),
            "last_vs_first_third_pct": change_pct,
            "slope_per_min": round3(self.slope_per_min / unit),
        })
    }
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

    #[test]
    fn trends_compare_thirds_and_fit_a_slope() {
        // Flat with noise: no slope to speak of, thirds equal.
        let flat: Vec<(f64, f64)> = (0..60)
            .map(|i| (i as f64 * 10.0, 100.0 + if i % 2 == 0 { 1.0 } else { -1.0 }))
            .collect();
        let trend = Trend::of(&flat).unwrap();
        assert!(trend.slope_per_min.abs() < 0.05, "{trend:?}");
        assert!(
            (trend.first_third_mean - trend.last_third_mean).abs() < 0.1,
            "{trend:?}"
        );

        // Growing by 2 per second = 120 per minute; samples at 0..=90 s.
        let growing: Vec<(f64, f64)> = (0..=90).map(|s| (s as f64, 2.0 * s as f64)).collect();
        let trend = Trend::of(&growing).unwrap();
        assert!((trend.slope_per_min - 120.0).abs() < 1e-6, "{trend:?}");
        assert_eq!(trend.first_third_mean, 30.0); // 0..=30 s
        assert_eq!(trend.last_third_mean, 150.0); // 60..=90 s
        let report = trend.to_json(1.0);
        assert_eq!(report["last_vs_first_third_pct"], 400.0);
        assert_eq!(
            Trend::of(&growing).unwrap().to_json(2.0)["slope_per_min"],
            60.0
        );

        assert_eq!(Trend::of(&growing[..2]), None);
        assert_eq!(Trend::of(&[(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)]), None);
    }
}
