//! `opentsdb_line`: OpenTSDB's telnet format, `[put ]metric timestamp value [tag=value …]`.
//!
//! The timestamp is in seconds, or in milliseconds when it has more than ten digits (OpenTSDB
//! accepts both). Sensu demanded at least one tag, as OpenTSDB does on write; here a line
//! without tags is still a point.

use kensa_types::resources::metrics::MetricPoint;

use super::{finite, point, skipped, tag};

const FORMAT: &str = "opentsdb_line";

pub(super) fn parse(output: &str) -> Vec<MetricPoint> {
    let mut points = Vec::new();
    for (number, line) in output.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line) {
            Ok(point) => points.push(point),
            Err(reason) => skipped(FORMAT, number, line, reason),
        }
    }
    points
}

fn parse_line(line: &str) -> Result<MetricPoint, &'static str> {
    let mut fields = line.split_whitespace().peekable();
    if fields.peek() == Some(&"put") {
        fields.next();
    }
    let (Some(name), Some(timestamp), Some(value)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err("expected `metric timestamp value [tags]`");
    };
    let mut timestamp = timestamp
        .parse::<i64>()
        .map_err(|_| "timestamp is not an integer")?;
    if timestamp.abs() >= 10_000_000_000 {
        timestamp /= 1000;
    }
    let value = finite(value).ok_or("value is not a number")?;
    let mut tags = Vec::new();
    for field in fields {
        match field.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() => {
                tags.push(tag(key, value))
            }
            _ => return Err("tag is not `name=value`"),
        }
    }
    Ok(point(name, value, timestamp, tags))
}
