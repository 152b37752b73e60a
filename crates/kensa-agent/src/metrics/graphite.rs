//! `graphite_plaintext`: one `path value [timestamp]` per line (Carbon's plaintext protocol).
//!
//! The path may carry Graphite 1.1 tags (`disk.used;host=web1;mount=/`), which become point
//! tags. The timestamp is in Unix seconds; absent or `-1` (Carbon's "now") means `now`.

use kensa_types::resources::metrics::MetricPoint;

use super::{finite, point, skipped, tag};

const FORMAT: &str = "graphite_plaintext";

pub(super) fn parse(output: &str, now: i64) -> Vec<MetricPoint> {
    let mut points = Vec::new();
    for (number, line) in output.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, now) {
            Ok(point) => points.push(point),
            Err(reason) => skipped(FORMAT, number, line, reason),
        }
    }
    points
}

fn parse_line(line: &str, now: i64) -> Result<MetricPoint, &'static str> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (path, value, timestamp) = match fields[..] {
        [path, value] => (path, value, None),
        [path, value, timestamp] => (path, value, Some(timestamp)),
        _ => return Err("expected `path value [timestamp]`"),
    };
    let mut segments = path.split(';');
    let name = segments.next().unwrap_or_default();
    if name.is_empty() {
        return Err("empty metric path");
    }
    let mut tags = Vec::new();
    for segment in segments {
        match segment.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() => {
                tags.push(tag(key, value))
            }
            _ => return Err("tag is not `name=value`"),
        }
    }
    let value = finite(value).ok_or("value is not a number")?;
    let timestamp = match timestamp {
        None => now,
        Some(text) => match text.parse::<i64>() {
            Ok(-1) => now,
            Ok(seconds) => seconds,
            // Some senders write fractional seconds.
            Err(_) => finite(text).ok_or("timestamp is not a number")?.trunc() as i64,
        },
    };
    Ok(point(name, value, timestamp, tags))
}
