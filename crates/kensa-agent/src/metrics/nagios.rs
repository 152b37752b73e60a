//! `nagios_perfdata`: the performance data of a Nagios plugin, per the plugin guidelines.
//!
//! ```text
//! DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968
//! / 15272 MB (77%);
//! /boot 68 MB (69%); | /boot=68MB;88;93;0;98
//! /home=69357MB;253404;253409;0;253414
//! ```
//!
//! Perfdata is what follows the `|` of the first line, plus what follows the first `|` in the
//! long text and every line after it. Each item is `label=value[UOM][;warn;crit;min;max]`; a
//! label with spaces is single-quoted (`''` is a literal quote). A point is named after its
//! label with spaces turned into `_` (as Sensu does) and valued without its unit; perfdata
//! has no timestamp, so the caller passes the execution time.

use kensa_types::resources::metrics::MetricPoint;

use super::{finite, point, skipped};

const FORMAT: &str = "nagios_perfdata";

pub(super) fn parse(output: &str, timestamp: i64) -> Vec<MetricPoint> {
    let perfdata = perfdata(output);
    let mut points = Vec::new();
    for (index, item) in items(&perfdata).into_iter().enumerate() {
        match item.and_then(|(label, rest)| parse_item(&label, rest)) {
            Ok((name, value)) => points.push(point(name, value, timestamp, Vec::new())),
            Err((text, reason)) => skipped(FORMAT, index, text, reason),
        }
    }
    points
}

/// The perfdata parts of `output`, one per line.
fn perfdata(output: &str) -> String {
    let mut lines = output.lines();
    let mut perfdata = String::new();
    if let Some((_, data)) = lines.next().and_then(|first| first.split_once('|')) {
        perfdata.push_str(data);
        perfdata.push('\n');
    }
    let mut in_perfdata = false;
    for line in lines {
        if in_perfdata {
            perfdata.push_str(line);
            perfdata.push('\n');
        } else if let Some((_, data)) = line.split_once('|') {
            in_perfdata = true;
            perfdata.push_str(data);
            perfdata.push('\n');
        }
    }
    perfdata
}

type Item<'a> = Result<(String, &'a str), (&'a str, &'static str)>;

/// Splits perfdata into `(label, text after '=')` items; a malformed item is an error carrying
/// its text, so the caller can skip it alone.
fn items(perfdata: &str) -> Vec<Item<'_>> {
    let mut items = Vec::new();
    let mut rest = perfdata.trim_start();
    while !rest.is_empty() {
        let (item, next) = if let Some(quoted) = rest.strip_prefix('\'') {
            quoted_item(rest, quoted)
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let token = &rest[..end];
            let item = match token.split_once('=') {
                Some((label, value)) => Ok((label.to_owned(), value)),
                None => Err((token, "missing '='")),
            };
            (item, &rest[end..])
        };
        items.push(item);
        rest = next.trim_start();
    }
    items
}

/// `'label with spaces'=value…`: `whole` starts at the opening quote, `quoted` just after it.
fn quoted_item<'a>(whole: &'a str, quoted: &'a str) -> (Item<'a>, &'a str) {
    let mut label = String::new();
    let mut chars = quoted.char_indices().peekable();
    let mut after_label = None;
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if let Some((_, '\'')) = chars.peek() {
                chars.next();
                label.push('\'');
                continue;
            }
            after_label = Some(&quoted[i + 1..]);
            break;
        }
        label.push(c);
    }
    let token_end = |text: &'a str| text.find(char::is_whitespace).unwrap_or(text.len());
    match after_label {
        None => (Err((whole.trim_end(), "unterminated quoted label")), ""),
        Some(after) => {
            let end = token_end(after);
            let (token, next) = (&after[..end], &after[end..]);
            match token.strip_prefix('=') {
                Some(value) => (Ok((label, value)), next),
                None => {
                    let whole_end = whole.len() - next.len();
                    (Err((&whole[..whole_end], "missing '='")), next)
                }
            }
        }
    }
}

/// `label` and `value[UOM][;warn;crit;min;max]` → the point's name and value.
fn parse_item<'a>(label: &str, rest: &'a str) -> Result<(String, f64), (&'a str, &'static str)> {
    let name = label.trim().replace(' ', "_");
    if name.is_empty() {
        return Err((rest, "empty label"));
    }
    let value = rest.split(';').next().unwrap_or_default();
    let number = numeric_prefix(value);
    if number.is_empty() {
        // `U` (the plugin could not measure) lands here too.
        return Err((rest, "value is not a number"));
    }
    let value = finite(number).ok_or((rest, "value is not a number"))?;
    Ok((name, value))
}

/// The leading number of `value` (`0.80` of `0.80ms`, `-1.5e3` of `-1.5e3B`).
fn numeric_prefix(value: &str) -> &str {
    let bytes = value.as_bytes();
    let mut end = 0;
    while end < bytes.len() && matches!(bytes[end], b'0'..=b'9' | b'.' | b'-' | b'+') {
        end += 1;
    }
    // An exponent only when digits follow it, so units such as `E` stay units.
    if end > 0 && end < bytes.len() && matches!(bytes[end], b'e' | b'E') {
        let mut exp = end + 1;
        if exp < bytes.len() && matches!(bytes[exp], b'-' | b'+') {
            exp += 1;
        }
        let digits = bytes[exp..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 0 {
            end = exp + digits;
        }
    }
    &value[..end]
}
