//! Metric extraction from check output (`output_metric_format`), tags, thresholds.
//!
//! The check executor calls [`process_check_output`] once per finished execution. Each format
//! lives in its own module with one `parse` function from output text to points; they share
//! one rule, which is the reason this is hand-written rather than five strict parsers: a line
//! that does not parse is skipped (with a debug log) and never costs the points of the lines
//! around it. Values that are not finite numbers (`NaN`, `+Inf`) are skipped too, because JSON,
//! and therefore the event, cannot carry them.
//!
//! Deliberate differences from Sensu (reference §2.5 step 8, resources §7):
//! - `output_metric_tags` are added to the points of every format (Sensu dropped them for
//!   graphite); a tag the output already set is replaced rather than duplicated;
//! - nagios perfdata follows the plugin guidelines: perfdata after the first line's `|` and
//!   after the `|` of the long text, quoted labels (`'disk usage'=10`); Sensu required exactly
//!   one `|` in the whole output;
//! - influxdb integer (`5i`, `5u`) and boolean fields become numbers, string fields are skipped
//!   without losing the line's numeric fields;
//! - the threshold summary annotation carries the message of the rule that set the status.

mod graphite;
mod influxdb;
mod nagios;
mod opentsdb;
mod prometheus;
mod thresholds;

#[cfg(test)]
mod tests;

use kensa_types::resources::event::Event;
use kensa_types::resources::metrics::{MetricPoint, MetricTag, Metrics};

/// Applies the check's metric settings to a finished check event: extracts points from
/// `check.output` per `output_metric_format`, adds `output_metric_tags`, sets
/// `metrics.handlers` from `output_metric_handlers`, applies `output_metric_thresholds` (status
/// and annotations), and blanks the output when `discard_output` is set. `now` is Unix seconds.
pub fn process_check_output(event: &mut Event, now: i64) {
    let Event {
        check,
        metrics,
        metadata,
        ..
    } = event;
    let Some(check) = check.as_mut() else {
        return;
    };
    if !check.output_metric_format.is_empty() || !check.output_metric_handlers.is_empty() {
        let metrics = metrics.get_or_insert_with(Metrics::default);
        if !check.output_metric_format.is_empty() {
            // Nagios perfdata has no timestamps; Sensu dates its points at the execution.
            let executed = if check.executed > 0 {
                check.executed
            } else {
                now
            };
            let mut points = extract(
                &check.output_metric_format,
                &check.output,
                now,
                executed,
                &check.metadata.name,
            );
            add_tags(&mut points, &check.output_metric_tags);
            metrics.points.extend(points);
        }
        if !check.output_metric_handlers.is_empty() {
            metrics.handlers = check.output_metric_handlers.clone();
        }
        if check.status == 0
            && !metrics.points.is_empty()
            && !check.output_metric_thresholds.is_empty()
        {
            let outcome = thresholds::evaluate(&check.output_metric_thresholds, &metrics.points);
            check.status = outcome.status;
            metadata.annotations.extend(outcome.annotations);
        }
    }
    if check.discard_output {
        check.output.clear();
    }
}

/// Parses `output` in `format`; an unknown format (the check was not validated) gives nothing.
fn extract(format: &str, output: &str, now: i64, executed: i64, check: &str) -> Vec<MetricPoint> {
    match format {
        "nagios_perfdata" => nagios::parse(output, executed),
        "graphite_plaintext" => graphite::parse(output, now),
        "influxdb_line" => influxdb::parse(output, now),
        "opentsdb_line" => opentsdb::parse(output),
        "prometheus_text" => prometheus::parse(output, now),
        _ => {
            tracing::warn!(
                check,
                format,
                "unknown output metric format, no metrics extracted"
            );
            Vec::new()
        }
    }
}

/// Adds `tags` to every point, replacing a tag of the same name the output already set.
fn add_tags(points: &mut [MetricPoint], tags: &[MetricTag]) {
    for point in points {
        for tag in tags {
            match point.tags.iter_mut().find(|t| t.name == tag.name) {
                Some(existing) => existing.value = tag.value.clone(),
                None => point.tags.push(tag.clone()),
            }
        }
    }
}

/// A point with its tags, for the parsers.
fn point(name: impl Into<String>, value: f64, timestamp: i64, tags: Vec<MetricTag>) -> MetricPoint {
    MetricPoint {
        name: name.into(),
        value,
        timestamp,
        tags,
    }
}

fn tag(name: impl Into<String>, value: impl Into<String>) -> MetricTag {
    MetricTag {
        name: name.into(),
        value: value.into(),
    }
}

/// A finite `f64`, or `None` (JSON cannot carry `NaN` or infinities).
fn finite(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|value| value.is_finite())
}

/// Logs a skipped line (or perfdata item); `index` counts from 0. Shared so every format
/// reports the same way.
fn skipped(format: &str, index: usize, text: &str, reason: &str) {
    tracing::debug!(
        format,
        position = index + 1,
        text,
        reason,
        "skipping malformed metric"
    );
}
