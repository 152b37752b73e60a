//! `output_metric_thresholds`: turning extracted points into a check status (reference §2.5
//! step 8, resources §7.6).
//!
//! For every threshold, each point with its name and all its tags is compared with every
//! rule: below `min` or above `max` (strictly) gives the rule's status, and an annotation
//! `sensu.io/output_metric_thresholds/<name>[.<tag values>]/<min|max>/<severity>` records
//! either the breach or that the value is within bounds (`…/ok`). A threshold no point
//! matches gives its null status, annotated `…/null-status/<severity>`. The worst status wins
//! and is summarized under `sensu.io/notifications/<severity>`.
//!
//! Annotations go on the event's own metadata, where Sensu's `event.AddAnnotation` puts them.
//! Kensa's `MetricThresholdRule` carries `null_status` per rule (Sensu 6.7 moved it to the
//! threshold): a threshold's null status is the highest of its rules'.

use std::collections::BTreeMap;

use kensa_types::resources::check::MetricThreshold;
use kensa_types::resources::metrics::MetricPoint;

/// The status thresholds give and the annotations explaining it.
pub(super) struct Outcome {
    pub status: u32,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Copy)]
enum Bound {
    Min,
    Max,
}

impl Bound {
    fn measure(self) -> &'static str {
        match self {
            Bound::Min => "min",
            Bound::Max => "max",
        }
    }

    fn breached(self, value: f64, limit: f64) -> bool {
        match self {
            Bound::Min => value < limit,
            Bound::Max => value > limit,
        }
    }
}

pub(super) fn evaluate(thresholds: &[MetricThreshold], points: &[MetricPoint]) -> Outcome {
    let mut status = 0;
    let mut annotations = BTreeMap::new();
    // The message of the rule that set `status`, and the last message of any kind (the summary
    // of an OK result, as Sensu writes it).
    let mut worst_message: Option<String> = None;
    let mut last_message: Option<String> = None;

    for threshold in thresholds {
        let mut matched = false;
        for point in points.iter().filter(|point| matches(threshold, point)) {
            matched = true;
            for rule in &threshold.thresholds {
                for (bound, limit_text) in [(Bound::Min, &rule.min), (Bound::Max, &rule.max)] {
                    let limit_text = limit_text.trim();
                    if limit_text.is_empty() {
                        continue;
                    }
                    let Ok(limit) = limit_text.parse::<f64>() else {
                        continue;
                    };
                    let breached = bound.breached(point.value, limit);
                    let rule_status = if breached { rule.status } else { 0 };
                    let message =
                        value_message(threshold, bound, point.value, limit_text, breached);
                    annotations.insert(
                        annotation_key(threshold, bound.measure(), rule_status),
                        message.clone(),
                    );
                    if breached && rule.status > status {
                        status = rule.status;
                        worst_message = Some(message.clone());
                    }
                    last_message = Some(message);
                    if breached {
                        // As Sensu: a rule breached at its minimum is not also checked at its max.
                        break;
                    }
                }
            }
        }
        let null_status = threshold
            .thresholds
            .iter()
            .map(|rule| rule.null_status)
            .max()
            .unwrap_or(0);
        if !matched && null_status > 0 {
            let message = null_message(threshold, null_status);
            annotations.insert(
                annotation_key(threshold, "null-status", null_status),
                message.clone(),
            );
            if null_status > status {
                status = null_status;
                worst_message = Some(message.clone());
            }
            last_message = Some(message);
        }
    }

    let summary = if status > 0 {
        worst_message
    } else {
        last_message
    };
    if let Some(summary) = summary {
        annotations.insert(
            format!("sensu.io/notifications/{}", caption(status)),
            summary,
        );
    }
    Outcome {
        status,
        annotations,
    }
}

/// A point matches a threshold with its name and every one of its tags.
fn matches(threshold: &MetricThreshold, point: &MetricPoint) -> bool {
    threshold.name == point.name
        && threshold.tags.iter().all(|wanted| {
            point
                .tags
                .iter()
                .any(|tag| tag.name == wanted.name && tag.value == wanted.value)
        })
}

/// Sensu's `CheckStatusToCaption`.
fn caption(status: u32) -> &'static str {
    match status {
        0 => "ok",
        1 => "warning",
        2 => "critical",
        _ => "unknown",
    }
}

fn annotation_key(threshold: &MetricThreshold, measure: &str, status: u32) -> String {
    let mut key = format!("sensu.io/output_metric_thresholds/{}", threshold.name);
    for tag in &threshold.tags {
        key.push('.');
        key.push_str(&tag.value);
    }
    format!("{key}/{measure}/{}", caption(status))
}

fn value_message(
    threshold: &MetricThreshold,
    bound: Bound,
    value: f64,
    limit: &str,
    breached: bool,
) -> String {
    let tags: Vec<String> = threshold
        .tags
        .iter()
        .map(|tag| format!("{}={}", tag.name, tag.value))
        .collect();
    let subject = if tags.is_empty() {
        threshold.name.clone()
    } else {
        format!("{} ({})", threshold.name, tags.join(","))
    };
    let verdict = if breached {
        "exceeded the configured threshold"
    } else {
        "is within the configured threshold"
    };
    // `{}` of an f64 is Go's FormatFloat(v, 'f', -1): shortest, never an exponent.
    format!(
        "The value of {subject} {verdict} ({}: {limit}, actual: {value}).",
        bound.measure()
    )
}

fn null_message(threshold: &MetricThreshold, null_status: u32) -> String {
    let tags: Vec<String> = threshold
        .tags
        .iter()
        .map(|tag| format!("{}=\"{}\"", tag.name, tag.value))
        .collect();
    let mut message = format!(
        "{} : no metric matching \"{}\"",
        caption(null_status).to_ascii_uppercase(),
        threshold.name
    );
    if !tags.is_empty() {
        message.push_str(&format!(" ({})", tags.join(", ")));
    }
    message.push_str(" was found");
    for rule in &threshold.thresholds {
        let (min, max) = (rule.min.trim(), rule.max.trim());
        message.push_str("; expected ");
        if !min.is_empty() {
            message.push_str(&format!("min: {min}"));
        }
        if !min.is_empty() && !max.is_empty() {
            message.push_str(" - ");
        }
        if !max.is_empty() {
            message.push_str(&format!("max: {max}"));
        }
        message.push_str(&format!(" (status: {})", caption(rule.status)));
    }
    message
}
