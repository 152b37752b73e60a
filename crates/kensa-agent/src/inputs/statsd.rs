//! The StatsD listener (reference §2.10; Sensu's default is `127.0.0.1:8125`, UDP): local
//! programs send `name:value|type` samples, the agent aggregates them and, every flush
//! interval, sends what it aggregated as ONE metrics-only event (entity = the agent,
//! `metrics.handlers` = the configured StatsD handlers, no check).
//!
//! Lines: `name:value|c[|@rate]` counters, `name:value|g` gauges (`+n`/`-n` adjust the last
//! value), `name:value|s` sets, `name:value|ms` or `|h` timers, each optionally tagged
//! `|#k:v,k2:v2`. A datagram may hold several lines; a bad line is counted and skipped.
//!
//! Points are named as Sensu (through gostatsd) named them: counters `<name>.value` and
//! `.per_second`; gauges and sets `.value` (a set's value is its number of distinct members);
//! timers `.min .max .count .per_second .mean .median .stddev .sum .sum_squares` and, for the
//! 90th percentile, `.percentile_count_90 .percentile_mean_90 .percentile_sum_90
//! .percentile_sum_squares_90 .percentile_upper_90`. Point timestamps are in **seconds**
//! (Sensu wrote nanoseconds there, unlike everywhere else: a deliberate fix).
//!
//! Only what was received during an interval is reported; nothing received, no event. A
//! gauge's last value is remembered for `+`/`-` adjustments for [`GAUGE_RETENTION_FLUSHES`]
//! intervals. Memory is bounded: at most [`MAX_SERIES`] series per metric type and
//! [`MAX_TIMER_SAMPLES`] samples per timer per interval; samples beyond are refused and
//! counted as invalid.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kensa_types::resources::event::Event;
use kensa_types::resources::metrics::{MetricPoint, MetricTag, Metrics};
use tokio::net::UdpSocket;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{unix_now, EventSink, Input, InputContext, Outcome};

/// Series (name and tags) kept per metric type and interval.
pub const MAX_SERIES: usize = 10_000;
/// Samples kept per timer and interval.
pub const MAX_TIMER_SAMPLES: usize = 10_000;
/// Flushes a gauge nobody updates is remembered for (5 minutes at the default interval, as
/// gostatsd's expiry).
pub const GAUGE_RETENTION_FLUSHES: u64 = 30;
/// The percentile timers report, gostatsd's default.
const PERCENTILE: f64 = 90.0;
const MAX_DATAGRAM_BYTES: usize = 64 * 1024;

/// Sensu's `statsd-flush-interval` default, also used for an interval of zero.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Serves StatsD on `socket` until `shutdown` is cancelled, then flushes what is pending.
/// Aggregates are sent every `flush_interval` (`statsd-flush-interval`; zero means the
/// default, as Sensu coerces it) with `metrics.handlers` = `handlers`
/// (`statsd-event-handlers`).
pub async fn serve<S: EventSink>(
    socket: UdpSocket,
    ctx: InputContext<S>,
    flush_interval: Duration,
    handlers: Vec<String>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let interval = if flush_interval.is_zero() {
        DEFAULT_FLUSH_INTERVAL
    } else {
        flush_interval
    };
    if let Ok(addr) = socket.local_addr() {
        tracing::info!(%addr, ?interval, "statsd listening");
    }
    let mut aggregator = Aggregator::default();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => flush(&mut aggregator, interval, &ctx, &handlers).await,
            received = socket.recv_from(&mut buffer) => match received {
                Ok((n, _peer)) => {
                    let text = String::from_utf8_lossy(&buffer[..n]);
                    for line in text.lines().filter(|line| !line.trim().is_empty()) {
                        let outcome = match aggregator.ingest(line) {
                            Ok(()) => Outcome::Accepted,
                            Err(reason) => {
                                tracing::debug!(line, reason, "statsd: skipping line");
                                Outcome::Invalid
                            }
                        };
                        ctx.counters.count(Input::Statsd, outcome);
                    }
                }
                Err(err) => tracing::debug!(error = %err, "statsd: receive failed"),
            },
        }
    }
    flush(&mut aggregator, interval, &ctx, &handlers).await;
    Ok(())
}

/// Sends what was aggregated since the last flush, if anything, as one event.
async fn flush<S: EventSink>(
    aggregator: &mut Aggregator,
    interval: Duration,
    ctx: &InputContext<S>,
    handlers: &[String],
) {
    let now = unix_now();
    let points = aggregator.flush(interval.as_secs_f64(), now);
    if points.is_empty() {
        return;
    }
    let entity = ctx.agent_entity();
    let mut event = Event {
        timestamp: now,
        entity: Some((*entity).clone()),
        metrics: Some(Metrics {
            handlers: handlers.to_vec(),
            points,
        }),
        id: Some(Uuid::new_v4()),
        ..Event::default()
    };
    event.metadata.namespace = entity.metadata.namespace.clone();
    // `deliver` counts and logs a failure; the aggregates are lost, as one interval's worth.
    let _ = ctx.deliver_event(event).await;
}

impl<S: EventSink> InputContext<S> {
    /// Pushes a flushed StatsD event (the per-sample counters already counted the input).
    async fn deliver_event(&self, event: Event) -> Result<(), crate::outbox::OutboxError> {
        self.outbox.push(event).await.map_err(|err| {
            tracing::warn!(error = %err, "statsd: could not store the flushed metrics");
            self.counters.count(Input::Statsd, Outcome::PushFailed);
            err
        })
    }
}

/// A series: a metric name and its sorted tags.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    tags: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Timer {
    values: Vec<f64>,
    /// Samples represented, each counting `1/rate`.
    sampled_count: f64,
}

#[derive(Debug)]
struct Gauge {
    value: f64,
    /// The flush generation of the last update; reported only when it is the current one.
    updated: u64,
}

/// The aggregation state between flushes. Pure: no I/O, no clock.
#[derive(Debug, Default)]
pub(crate) struct Aggregator {
    counters: BTreeMap<Series, f64>,
    timers: BTreeMap<Series, Timer>,
    gauges: BTreeMap<Series, Gauge>,
    sets: BTreeMap<Series, BTreeSet<String>>,
    /// Incremented by every flush.
    generation: u64,
}

impl Aggregator {
    /// Aggregates one line, or says why it is refused.
    pub(crate) fn ingest(&mut self, line: &str) -> Result<(), &'static str> {
        let sample = parse_line(line)?;
        let series = Series {
            name: sample.name.to_owned(),
            tags: sample.tags,
        };
        match sample.kind {
            "c" => {
                let value = number(sample.value)? / sample.rate;
                *entry(&mut self.counters, series, || 0.0)? += value;
            }
            "g" => {
                let delta = sample.value.starts_with(['+', '-']);
                let value = number(sample.value)?;
                let generation = self.generation;
                let gauge = entry(&mut self.gauges, series, || Gauge {
                    value: 0.0,
                    updated: generation,
                })?;
                gauge.value = if delta { gauge.value + value } else { value };
                gauge.updated = generation;
            }
            "s" => {
                entry(&mut self.sets, series, BTreeSet::new)?.insert(sample.value.to_owned());
            }
            "ms" | "h" => {
                let value = number(sample.value)?;
                let timer = entry(&mut self.timers, series, Timer::default)?;
                if timer.values.len() >= MAX_TIMER_SAMPLES {
                    return Err("too many samples for this timer in one interval");
                }
                timer.values.push(value);
                timer.sampled_count += 1.0 / sample.rate;
            }
            _ => return Err("unknown metric type"),
        }
        Ok(())
    }

    /// The points of the interval that ends now (`interval_secs` long), dated `now`; resets
    /// counters, timers and sets and forgets stale gauges.
    pub(crate) fn flush(&mut self, interval_secs: f64, now: i64) -> Vec<MetricPoint> {
        let mut points = Vec::new();
        let mut push = |series: &Series, suffix: &str, value: f64| {
            points.push(MetricPoint {
                name: format!("{}.{suffix}", series.name),
                value,
                timestamp: now,
                tags: series
                    .tags
                    .iter()
                    .map(|(name, value)| MetricTag {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            });
        };
        for (series, value) in std::mem::take(&mut self.counters) {
            push(&series, "value", value);
            push(&series, "per_second", value / interval_secs);
        }
        for (series, timer) in std::mem::take(&mut self.timers) {
            for (suffix, value) in timer_stats(timer, interval_secs) {
                push(&series, &suffix, value);
            }
        }
        let generation = self.generation;
        for (series, gauge) in &self.gauges {
            if gauge.updated == generation {
                push(series, "value", gauge.value);
            }
        }
        for (series, members) in std::mem::take(&mut self.sets) {
            push(&series, "value", members.len() as f64);
        }
        self.generation += 1;
        let oldest_kept = self.generation.saturating_sub(GAUGE_RETENTION_FLUSHES);
        self.gauges.retain(|_, gauge| gauge.updated >= oldest_kept);
        points
    }
}

/// The map entry of `series`, created with `new` unless the map is full.
fn entry<V>(
    map: &mut BTreeMap<Series, V>,
    series: Series,
    new: impl FnOnce() -> V,
) -> Result<&mut V, &'static str> {
    if map.len() >= MAX_SERIES && !map.contains_key(&series) {
        return Err("too many series in one interval");
    }
    Ok(map.entry(series).or_insert_with(new))
}

fn number(text: &str) -> Result<f64, &'static str> {
    text.parse::<f64>()
        .ok()
        .filter(|value| value.is_finite())
        .ok_or("value is not a number")
}

struct Sample<'a> {
    name: &'a str,
    value: &'a str,
    kind: &'a str,
    rate: f64,
    tags: Vec<(String, String)>,
}

/// `name:value|type[|@rate][|#tag:value,…]`.
fn parse_line(line: &str) -> Result<Sample<'_>, &'static str> {
    let (name, rest) = line.trim().split_once(':').ok_or("missing ':'")?;
    let name = name.trim();
    if name.is_empty() {
        return Err("empty metric name");
    }
    let mut sections = rest.split('|');
    let value = sections.next().unwrap_or_default().trim();
    let kind = sections.next().ok_or("missing '|type'")?.trim();
    if value.is_empty() {
        return Err("empty value");
    }
    let mut rate = 1.0;
    let mut tags = Vec::new();
    for section in sections {
        if let Some(text) = section.strip_prefix('@') {
            rate = text
                .parse::<f64>()
                .ok()
                .filter(|rate| *rate > 0.0 && *rate <= 1.0)
                .ok_or("sample rate is not in (0, 1]")?;
        } else if let Some(text) = section.strip_prefix('#') {
            for tag in text.split(',').filter(|tag| !tag.is_empty()) {
                let (key, value) = tag.split_once(':').unwrap_or((tag, ""));
                tags.push((key.to_owned(), value.to_owned()));
            }
        }
        // Other sections (DogStatsD's `|c:` container ids, `|T` timestamps) are ignored.
    }
    tags.sort();
    tags.dedup();
    Ok(Sample {
        name,
        value,
        kind,
        rate,
        tags,
    })
}

/// gostatsd's timer aggregates, in Sensu's order.
fn timer_stats(timer: Timer, interval_secs: f64) -> Vec<(String, f64)> {
    let mut values = timer.values;
    if values.is_empty() {
        return Vec::new();
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let count = n as f64;
    let sum: f64 = values.iter().sum();
    let sum_squares: f64 = values.iter().map(|v| v * v).sum();
    let mean = sum / count;
    let variance = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / count;
    let median = if n.is_multiple_of(2) {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    } else {
        values[n / 2]
    };
    let mut stats = vec![
        ("min".to_owned(), values[0]),
        ("max".to_owned(), values[n - 1]),
        ("count".to_owned(), timer.sampled_count.round()),
        ("per_second".to_owned(), timer.sampled_count / interval_secs),
        ("mean".to_owned(), mean),
        ("median".to_owned(), median),
        ("stddev".to_owned(), variance.sqrt()),
        ("sum".to_owned(), sum),
        ("sum_squares".to_owned(), sum_squares),
    ];
    // The lowest PERCENTILE % of the samples (all of a single one).
    let in_threshold = if n > 1 {
        (PERCENTILE / 100.0 * count).round() as usize
    } else {
        n
    };
    if in_threshold > 0 {
        let lowest = &values[..in_threshold];
        let pct_sum: f64 = lowest.iter().sum();
        let pct = PERCENTILE as u32;
        stats.extend([
            (format!("percentile_count_{pct}"), in_threshold as f64),
            (
                format!("percentile_mean_{pct}"),
                pct_sum / in_threshold as f64,
            ),
            (format!("percentile_sum_{pct}"), pct_sum),
            (
                format!("percentile_sum_squares_{pct}"),
                lowest.iter().map(|v| v * v).sum(),
            ),
            (format!("percentile_upper_{pct}"), lowest[in_threshold - 1]),
        ]);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(lines: &[&str], interval_secs: f64) -> BTreeMap<String, f64> {
        let mut aggregator = Aggregator::default();
        for line in lines {
            aggregator
                .ingest(line)
                .unwrap_or_else(|err| panic!("{line}: {err}"));
        }
        aggregator
            .flush(interval_secs, 1_700_000_000)
            .into_iter()
            .map(|point| {
                let tags: Vec<String> = point
                    .tags
                    .iter()
                    .map(|t| format!("{}={}", t.name, t.value))
                    .collect();
                let key = if tags.is_empty() {
                    point.name
                } else {
                    format!("{}{{{}}}", point.name, tags.join(","))
                };
                (key, point.value)
            })
            .collect()
    }

    /// (case, lines received, expected points as `name{tags}` → value)
    type AggregationCase = (
        &'static str,
        &'static [&'static str],
        &'static [(&'static str, f64)],
    );

    #[test]
    fn aggregates_each_type_like_gostatsd() {
        let cases: &[AggregationCase] = &[
            (
                "counters sum, scaled by sample rate",
                &["hits:1|c", "hits:2|c", "hits:1|c|@0.5"],
                &[("hits.value", 5.0), ("hits.per_second", 0.5)],
            ),
            (
                "gauges keep the last value, +/- adjust it",
                &["temp:20|g", "temp:+5|g", "temp:-2.5|g"],
                &[("temp.value", 22.5)],
            ),
            (
                "sets count distinct members",
                &["users:alice|s", "users:bob|s", "users:alice|s"],
                &[("users.value", 2.0)],
            ),
            (
                "tags make separate series",
                &[
                    "req:1|c|#route:/a,method:get",
                    "req:1|c|#method:get,route:/a",
                    "req:4|c|#route:/b",
                ],
                &[
                    ("req.value{method=get,route=/a}", 2.0),
                    ("req.per_second{method=get,route=/a}", 0.2),
                    ("req.value{route=/b}", 4.0),
                    ("req.per_second{route=/b}", 0.4),
                ],
            ),
        ];
        for (name, lines, expected) in cases {
            let got = points(lines, 10.0);
            let expected: BTreeMap<String, f64> =
                expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn timers_report_sensu_point_names() {
        let lines: Vec<String> = (1..=10).map(|v| format!("rt:{v}|ms")).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let got = points(&lines, 10.0);
        let expected: BTreeMap<String, f64> = [
            ("rt.min", 1.0),
            ("rt.max", 10.0),
            ("rt.count", 10.0),
            ("rt.per_second", 1.0),
            ("rt.mean", 5.5),
            ("rt.median", 5.5),
            ("rt.stddev", 8.25f64.sqrt()),
            ("rt.sum", 55.0),
            ("rt.sum_squares", 385.0),
            ("rt.percentile_count_90", 9.0),
            ("rt.percentile_mean_90", 5.0),
            ("rt.percentile_sum_90", 45.0),
            ("rt.percentile_sum_squares_90", 285.0),
            ("rt.percentile_upper_90", 9.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn bad_lines_are_refused() {
        let mut aggregator = Aggregator::default();
        for line in [
            "nocolon", ":1|c", "x:1", "x:|c", "x:abc|c", "x:1|c|@0", "x:1|c|@2", "x:1|z", "x:NaN|g",
        ] {
            assert!(aggregator.ingest(line).is_err(), "{line} should be refused");
        }
        assert!(aggregator.flush(10.0, 0).is_empty());
    }

    #[test]
    fn only_the_last_interval_is_reported_and_gauges_are_remembered() {
        let mut aggregator = Aggregator::default();
        aggregator.ingest("hits:3|c").unwrap();
        aggregator.ingest("temp:10|g").unwrap();
        assert_eq!(aggregator.flush(10.0, 1).len(), 3);
        assert!(
            aggregator.flush(10.0, 2).is_empty(),
            "nothing received, nothing reported"
        );
        aggregator.ingest("temp:+1|g").unwrap();
        let points = aggregator.flush(10.0, 3);
        assert_eq!(points.len(), 1);
        assert_eq!(
            (points[0].name.as_str(), points[0].value),
            ("temp.value", 11.0)
        );
        assert_eq!(
            points[0].timestamp, 3,
            "timestamps are the flush time in seconds"
        );
        for generation in 0..GAUGE_RETENTION_FLUSHES {
            aggregator.flush(10.0, 4 + generation as i64);
        }
        aggregator.ingest("temp:+1|g").unwrap();
        let points = aggregator.flush(10.0, 100);
        assert_eq!(points[0].value, 1.0, "a stale gauge is forgotten");
    }
}
