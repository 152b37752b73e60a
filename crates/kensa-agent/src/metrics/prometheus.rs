//! `prometheus_text`: the Prometheus text exposition format (0.0.4).
//!
//! ```text
//! # HELP http_requests_total The total number of HTTP requests.
//! # TYPE http_requests_total counter
//! http_requests_total{method="post",code="200"} 1027 1395066363000
//! ```
//!
//! Each sample is a point named after the sample, its labels as tags, then (as Sensu does) a
//! `prom_type` tag with its family's type (`counter`, `gauge`, `histogram`, `summary`,
//! `untyped`) and a `prom_help` tag with the family's HELP text when there is one. Histogram
//! and summary samples (`_bucket`, `_sum`, `_count`) belong to their family. The optional
//! timestamp is in milliseconds and becomes seconds; without one the point gets `now`.
//! `NaN` and infinite samples are dropped.

use std::collections::HashMap;

use kensa_types::resources::metrics::{MetricPoint, MetricTag};

use super::{finite, point, skipped, tag};

const FORMAT: &str = "prometheus_text";

pub(super) fn parse(output: &str, now: i64) -> Vec<MetricPoint> {
    // HELP and TYPE are gathered first, so a sample's family is known wherever they appear.
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut helps: HashMap<&str, String> = HashMap::new();
    for line in output.lines() {
        let Some(comment) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let mut words = comment.trim_start().splitn(3, char::is_whitespace);
        match (words.next(), words.next(), words.next()) {
            (Some("TYPE"), Some(name), Some(kind)) => {
                types.insert(name, kind.trim());
            }
            (Some("HELP"), Some(name), help) => {
                helps.insert(name, unescape_help(help.unwrap_or_default().trim()));
            }
            _ => {}
        }
    }

    let mut points = Vec::new();
    for (number, line) in output.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_sample(trimmed) {
            Ok(Some(sample)) => {
                let family = family_of(sample.name, &types);
                let mut tags = sample.labels;
                let kind = types.get(family).copied().unwrap_or("untyped");
                tags.push(tag("prom_type", kind.to_ascii_lowercase()));
                if let Some(help) = helps.get(family).filter(|help| !help.is_empty()) {
                    tags.push(tag("prom_help", help.clone()));
                }
                let timestamp = sample
                    .timestamp_ms
                    .map_or(now, |millis| millis.div_euclid(1000));
                points.push(point(sample.name, sample.value, timestamp, tags));
            }
            Ok(None) => {} // NaN or infinite: not representable in an event
            Err(reason) => skipped(FORMAT, number, line, reason),
        }
    }
    points
}

struct Sample<'a> {
    name: &'a str,
    labels: Vec<MetricTag>,
    value: f64,
    timestamp_ms: Option<i64>,
}

/// The family a sample belongs to: its own name when it has a TYPE, else the histogram or
/// summary (or OpenMetrics counter) it is a series of.
fn family_of<'a>(name: &'a str, types: &HashMap<&str, &str>) -> &'a str {
    if types.contains_key(name) {
        return name;
    }
    let suffixes: [(&str, &[&str]); 4] = [
        ("_bucket", &["histogram"]),
        ("_sum", &["histogram", "summary"]),
        ("_count", &["histogram", "summary"]),
        ("_total", &["counter"]),
    ];
    for (suffix, kinds) in suffixes {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|kind| kinds.contains(kind)) {
                return base;
            }
        }
    }
    name
}

/// `name[{labels}] value [timestamp]`; `Ok(None)` for a sample whose value is not finite.
fn parse_sample(line: &str) -> Result<Option<Sample<'_>>, &'static str> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("invalid metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.trim_start().strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    if !rest.starts_with(char::is_whitespace) {
        return Err("expected whitespace before the value");
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("missing value")?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| "timestamp is not an integer")?,
        ),
    };
    if fields.next().is_some() {
        return Err("unexpected text after the timestamp");
    }
    let value = match value {
        "NaN" | "+Inf" | "-Inf" | "Inf" => return Ok(None),
        text => finite(text).ok_or("value is not a number")?,
    };
    Ok(Some(Sample {
        name,
        labels,
        value,
        timestamp_ms,
    }))
}

/// Labels after the opening brace, up to and including the closing one.
fn parse_labels(mut text: &str) -> Result<(Vec<MetricTag>, &str), &'static str> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let name_end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated label set")?;
        let name = &text[..name_end];
        if name.is_empty() {
            return Err("invalid label name");
        }
        text = text[name_end..].trim_start();
        text = text
            .strip_prefix('=')
            .ok_or("expected '=' after a label name")?;
        text = text.trim_start();
        text = text.strip_prefix('"').ok_or("label value is not quoted")?;
        let (value, after) = label_value(text)?;
        labels.push(tag(name, value));
        text = after.trim_start();
        if let Some(after) = text.strip_prefix(',') {
            text = after;
        } else if !text.starts_with('}') {
            return Err("expected ',' or '}' after a label");
        }
    }
}

/// A label value after its opening quote: the unescaped value and the text after the closing
/// quote.
fn label_value(text: &str) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => value.push(other),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err("unterminated label value")
}

/// HELP text escapes: `\\` and `\n`.
fn unescape_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}
