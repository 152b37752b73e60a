//! `influxdb_line`: InfluxDB line protocol,
//! `measurement[,tag=value…] field=value[,field=value…] [timestamp]`.
//!
//! Each numeric field becomes a point named `measurement.field` with the line's tags. Floats,
//! integers (`5i`, `5u`) and booleans (`t`/`true` → 1, `f`/`false` → 0) are numbers; string
//! fields (`"…"`) are skipped. Backslash escapes (`\ `, `\,`, `\=`, `\"`) are honoured.
//!
//! The timestamp is meant in nanoseconds, but senders pick their precision, so like Sensu the
//! first ten digits are kept: nanoseconds, microseconds, milliseconds and seconds of this era
//! all become seconds. Without a timestamp the point gets `now`.

use kensa_types::resources::metrics::{MetricPoint, MetricTag};

use super::{finite, point, skipped, tag};

const FORMAT: &str = "influxdb_line";

pub(super) fn parse(output: &str, now: i64) -> Vec<MetricPoint> {
    let mut points = Vec::new();
    for (number, line) in output.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed, now) {
            Ok(line_points) => points.extend(line_points),
            Err(reason) => skipped(FORMAT, number, line, reason),
        }
    }
    points
}

fn parse_line(line: &str, now: i64) -> Result<Vec<MetricPoint>, &'static str> {
    let sections = split_unescaped(line, ' ', true);
    let sections: Vec<&str> = sections.into_iter().filter(|s| !s.is_empty()).collect();
    let (key, fields, timestamp) = match sections[..] {
        [key, fields] => (key, fields, None),
        [key, fields, timestamp] => (key, fields, Some(timestamp)),
        _ => return Err("expected `measurement[,tags] fields [timestamp]`"),
    };

    let mut key_parts = split_unescaped(key, ',', false).into_iter();
    let measurement = unescape(key_parts.next().unwrap_or_default());
    if measurement.is_empty() {
        return Err("empty measurement");
    }
    let mut tags: Vec<MetricTag> = Vec::new();
    for part in key_parts {
        match split_once_unescaped(part, '=') {
            Some((name, value)) if !name.is_empty() && !value.is_empty() => {
                tags.push(tag(unescape(name), unescape(value)));
            }
            _ => return Err("tag is not `name=value`"),
        }
    }

    let timestamp = match timestamp {
        None => now,
        Some(text) => seconds(text).ok_or("timestamp is not an integer")?,
    };

    let mut points = Vec::new();
    for field in split_unescaped(fields, ',', true) {
        let (name, value) = split_once_unescaped(field, '=').ok_or("field is not `name=value`")?;
        let name = unescape(name);
        if name.is_empty() {
            return Err("empty field name");
        }
        match field_value(value)? {
            Some(value) => points.push(point(
                format!("{measurement}.{name}"),
                value,
                timestamp,
                tags.clone(),
            )),
            None => continue, // a string field
        }
    }
    if points.is_empty() {
        return Err("no numeric field");
    }
    Ok(points)
}

/// A field's numeric value, `None` for a string field, an error for anything else.
fn field_value(text: &str) -> Result<Option<f64>, &'static str> {
    if text.starts_with('"') {
        return if text.len() >= 2 && text.ends_with('"') {
            Ok(None)
        } else {
            Err("unterminated string field")
        };
    }
    let number = match text {
        "t" | "T" | "true" | "True" | "TRUE" => Some(1.0),
        "f" | "F" | "false" | "False" | "FALSE" => Some(0.0),
        _ => {
            if let Some(integer) = text.strip_suffix('i') {
                integer.parse::<i64>().ok().map(|value| value as f64)
            } else if let Some(unsigned) = text.strip_suffix('u') {
                unsigned.parse::<u64>().ok().map(|value| value as f64)
            } else {
                finite(text)
            }
        }
    };
    number.map(Some).ok_or("field value is not a number")
}

/// An integer timestamp of any precision, as Unix seconds (its first ten digits).
fn seconds(text: &str) -> Option<i64> {
    let mut value = text.parse::<i64>().ok()?;
    while value.abs() >= 10_000_000_000 {
        value /= 10;
    }
    Some(value)
}

/// Splits `text` on `separator` where it is not backslash-escaped (nor, with `quotes`, inside a
/// double-quoted string). The pieces keep their escapes.
fn split_unescaped(text: &str, separator: char, quotes: bool) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut escaped, mut in_quotes) = (0, false, false);
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if quotes && c == '"' {
            in_quotes = !in_quotes;
        } else if c == separator && !in_quotes {
            pieces.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    pieces.push(&text[start..]);
    pieces
}

fn split_once_unescaped(text: &str, separator: char) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == separator {
            return Some((&text[..i], &text[i + c.len_utf8()..]));
        }
    }
    None
}

/// Drops the backslash of every escape (`\\` is a literal backslash).
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}
