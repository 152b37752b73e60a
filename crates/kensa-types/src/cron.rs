//! Validation of check `cron` strings with the grammar Sensu accepts (robfig/cron's
//! `ParseStandard`): five fields (minute, hour, day of month, month, day of week) made of `*`,
//! `?`, numbers, month/weekday names, ranges `a-b`, steps `/n` and lists `a,b`; the descriptors
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly` and
//! `@every <go duration>`; and an optional `CRON_TZ=Zone ` or `TZ=Zone ` prefix.
//!
//! This module parses a string into its parts ([`CronSpec`]: the fields as bit sets, or an
//! `@every` period, and the zone name) and says why a string is invalid; computing fire times in
//! a real time zone is the scheduler's business. Time-zone names are checked for shape only (Kensa carries no tz
//! database here), so `TZ=Mars/Olympus * * * * *` passes.

use std::time::Duration;

use thiserror::Error;

/// Why a cron string was rejected, in robfig/cron's words where it has them.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct CronError(String);

fn fail<T>(message: impl Into<String>) -> Result<T, CronError> {
    Err(CronError(message.into()))
}

/// The inclusive bounds of one field, and the names it accepts.
struct Bounds {
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MONTH_NAMES: &[(&str, u32)] = &[
    ("jan", 1),
    ("feb", 2),
    ("mar", 3),
    ("apr", 4),
    ("may", 5),
    ("jun", 6),
    ("jul", 7),
    ("aug", 8),
    ("sep", 9),
    ("oct", 10),
    ("nov", 11),
    ("dec", 12),
];
const WEEKDAY_NAMES: &[(&str, u32)] = &[
    ("sun", 0),
    ("mon", 1),
    ("tue", 2),
    ("wed", 3),
    ("thu", 4),
    ("fri", 5),
    ("sat", 6),
];

const FIELDS: [Bounds; 5] = [
    Bounds {
        min: 0,
        max: 59,
        names: &[],
    },
    Bounds {
        min: 0,
        max: 23,
        names: &[],
    },
    Bounds {
        min: 1,
        max: 31,
        names: &[],
    },
    Bounds {
        min: 1,
        max: 12,
        names: MONTH_NAMES,
    },
    Bounds {
        min: 0,
        max: 6,
        names: WEEKDAY_NAMES,
    },
];

/// The descriptors and the five fields each stands for.
const DESCRIPTORS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// A parsed cron string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSpec {
    /// The `TZ=`/`CRON_TZ=` zone name, checked for shape only.
    pub zone: Option<String>,
    pub schedule: CronSchedule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronSchedule {
    /// `@every <duration>`, as Go parses it.
    Every(Duration),
    /// Five fields (descriptors expanded).
    Fields(CronFields),
}

/// The five fields as bit sets: bit `n` set means value `n` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CronFields {
    pub minutes: u64,
    pub hours: u64,
    pub days_of_month: u64,
    pub months: u64,
    pub days_of_week: u64,
    /// The day-of-month field started with `*`/`?` without a step above one (robfig's star
    /// bit): day matching is then an AND of the two day fields instead of an OR.
    pub day_of_month_star: bool,
    pub day_of_week_star: bool,
}

/// Checks `spec` the way Sensu's CheckConfig validation does.
pub fn validate(spec: &str) -> Result<(), CronError> {
    parse(spec).map(|_| ())
}

/// Parses `spec` (robfig/cron's `ParseStandard` grammar), with robfig's error messages.
pub fn parse(spec: &str) -> Result<CronSpec, CronError> {
    if spec.is_empty() {
        return fail("empty spec string");
    }
    let (zone, spec) = strip_time_zone(spec)?;
    let zone = zone.map(str::to_owned);
    let fields = match spec.strip_prefix('@') {
        Some(descriptor) => match DESCRIPTORS.iter().find(|(name, _)| *name == spec) {
            Some((_, fields)) => *fields,
            None => {
                let period = parse_descriptor_period(descriptor, spec)?;
                return Ok(CronSpec {
                    zone,
                    schedule: CronSchedule::Every(period),
                });
            }
        },
        None => spec,
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    if fields.len() != FIELDS.len() {
        return fail(format!(
            "expected exactly 5 fields, found {}: {spec}",
            fields.len()
        ));
    }
    let mut parsed = [(0u64, false); 5];
    for ((field, bounds), slot) in fields.iter().zip(&FIELDS).zip(parsed.iter_mut()) {
        for expr in field.split(',') {
            let (bits, star) = parse_range(expr, bounds)?;
            slot.0 |= bits;
            slot.1 |= star;
        }
    }
    Ok(CronSpec {
        zone,
        schedule: CronSchedule::Fields(CronFields {
            minutes: parsed[0].0,
            hours: parsed[1].0,
            days_of_month: parsed[2].0,
            months: parsed[3].0,
            days_of_week: parsed[4].0,
            day_of_month_star: parsed[2].1,
            day_of_week_star: parsed[4].1,
        }),
    })
}

/// Splits off a leading `TZ=Zone ` / `CRON_TZ=Zone `, checking the zone's shape.
fn strip_time_zone(spec: &str) -> Result<(Option<&str>, &str), CronError> {
    let Some(rest) = spec
        .strip_prefix("CRON_TZ=")
        .or_else(|| spec.strip_prefix("TZ="))
    else {
        return Ok((None, spec));
    };
    let Some((zone, schedule)) = rest.split_once(' ') else {
        return fail(format!("missing schedule after time zone: {spec}"));
    };
    let zone_shape = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '/');
    if zone.is_empty() || !zone.chars().all(zone_shape) {
        return fail(format!(
            "provided bad location {zone}: unknown time zone {zone}"
        ));
    }
    Ok((Some(zone), schedule.trim()))
}

/// The period of `@every <duration>`.
fn parse_descriptor_period(descriptor: &str, spec: &str) -> Result<Duration, CronError> {
    match descriptor.strip_prefix("every ") {
        Some(duration) => parse_go_duration(duration).ok_or_else(|| {
            CronError(format!(
                "failed to parse duration {spec}: time: invalid duration {duration:?}"
            ))
        }),
        None => fail(format!("unrecognized descriptor: {spec}")),
    }
}

/// One comma-separated part of a field — `*`, `?`, `n`, `a-b`, with an optional `/step` — as a
/// bit set, and whether it is a star without a step above one.
fn parse_range(expr: &str, bounds: &Bounds) -> Result<(u64, bool), CronError> {
    let mut range_and_step = expr.split('/');
    let range = range_and_step.next().unwrap_or_default();
    let step = range_and_step.next();
    if range_and_step.next().is_some() {
        return fail(format!("too many slashes: {expr}"));
    }
    let low_and_high: Vec<&str> = range.split('-').collect();
    let mut star = low_and_high[0] == "*" || low_and_high[0] == "?";
    let (start, mut end) = if star {
        (bounds.min, bounds.max)
    } else {
        let start = parse_int_or_name(low_and_high[0], bounds, expr)?;
        match low_and_high.len() {
            1 => (start, start),
            2 => (start, parse_int_or_name(low_and_high[1], bounds, expr)?),
            _ => return fail(format!("too many hyphens: {expr}")),
        }
    };
    let step = match step {
        None => 1,
        Some(step) => {
            let step = parse_int(step, expr)?;
            if low_and_high.len() == 1 {
                // `5/15` means "from 5 to the end, every 15".
                end = bounds.max;
            }
            if step == 0 {
                return fail(format!("step of range should be a positive number: {expr}"));
            }
            star &= step == 1;
            step
        }
    };
    if start < bounds.min {
        return fail(format!(
            "beginning of range ({start}) below minimum ({}): {expr}",
            bounds.min
        ));
    }
    if end > bounds.max {
        return fail(format!(
            "end of range ({end}) above maximum ({}): {expr}",
            bounds.max
        ));
    }
    if start > end {
        return fail(format!(
            "beginning of range ({start}) beyond end of range ({end}): {expr}"
        ));
    }
    let bits = (start..=end)
        .step_by(step as usize)
        .fold(0u64, |bits, value| bits | 1 << value);
    Ok((bits, star))
}

fn parse_int_or_name(value: &str, bounds: &Bounds, expr: &str) -> Result<u32, CronError> {
    let lower = value.to_ascii_lowercase();
    match bounds.names.iter().find(|(name, _)| *name == lower) {
        Some((_, number)) => Ok(*number),
        None => parse_int(value, expr),
    }
}

fn parse_int(value: &str, expr: &str) -> Result<u32, CronError> {
    if let Some(negative) = value
        .strip_prefix('-')
        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty())
    {
        return fail(format!("negative number (-{negative}) not allowed: {expr}"));
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return fail(format!("failed to parse int from {value}: {expr}"));
    }
    value
        .parse()
        .or_else(|_| fail(format!("failed to parse int from {value}: {expr}")))
}

/// Go's `time.ParseDuration` grammar: `[-+]?` then `0` or one or more `<decimal><unit>`, unit
/// one of `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`.
pub fn validate_go_duration(input: &str) -> Result<(), CronError> {
    parse_go_duration(input)
        .map(|_| ())
        .ok_or_else(|| CronError(format!("time: invalid duration {input:?}")))
}

/// Go's `time.ParseDuration`, to nanosecond precision; negative durations come out as zero.
pub fn parse_go_duration(input: &str) -> Option<Duration> {
    let (negative, unsigned) = match input.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, input.strip_prefix('+').unwrap_or(input)),
    };
    if unsigned == "0" {
        return Some(Duration::ZERO);
    }
    if unsigned.is_empty() {
        return None;
    }
    let mut total_nanos: u128 = 0;
    let mut rest = unsigned;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after_number) = rest.split_at(number_len);
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return None;
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        total_nanos = total_nanos.checked_add(whole.checked_mul(unit_nanos)?)?;
        // Go keeps the fraction to nanosecond precision; so do we.
        let mut scale = unit_nanos;
        for digit in fraction.bytes().take(20) {
            scale /= 10;
            total_nanos += u128::from(digit - b'0') * scale;
        }
        rest = after_unit;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    Some(Duration::from_nanos(u64::try_from(total_nanos).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_robfig_accepts() {
        for spec in [
            "* * * * *",
            "*/5 * * * *",
            "0 9-17 * * mon-fri",
            "0 0 1,15 * *",
            "30 2 * jan,JUL sun",
            "5/15 * * * ?",
            "0 0 * * 6",
            "@hourly",
            "@midnight",
            "@every 1m",
            "@every 1h30m",
            "@every 1.5h",
            "CRON_TZ=Asia/Tokyo * * * * *",
            "TZ=America/New_York 0 6 * * *",
            "TZ=Etc/GMT+5 @daily",
        ] {
            assert_eq!(validate(spec), Ok(()), "{spec}");
        }
    }

    #[test]
    fn rejects_with_robfig_messages() {
        for (spec, message) in [
            ("", "empty spec string"),
            ("* * * *", "expected exactly 5 fields, found 4: * * * *"),
            ("* * * * * *", "expected exactly 5 fields, found 6"),
            ("60 * * * *", "end of range (60) above maximum (59): 60"),
            ("* 24 * * *", "end of range (24) above maximum (23)"),
            ("* * 0 * *", "beginning of range (0) below minimum (1)"),
            ("* * * 13 *", "end of range (13) above maximum (12)"),
            ("* * * * 7", "end of range (7) above maximum (6)"),
            (
                "10-5 * * * *",
                "beginning of range (10) beyond end of range (5)",
            ),
            ("*/0 * * * *", "step of range should be a positive number"),
            ("1/2/3 * * * *", "too many slashes"),
            ("1-2-3 * * * *", "too many hyphens"),
            ("x * * * *", "failed to parse int from x"),
            ("1,,2 * * * *", "failed to parse int from "),
            ("@often", "unrecognized descriptor: @often"),
            ("@every 5", "failed to parse duration"),
            ("@every", "unrecognized descriptor"),
            ("TZ=Asia/Tokyo", "missing schedule after time zone"),
            ("TZ=Bad;Zone * * * * *", "unknown time zone"),
        ] {
            let err = validate(spec).expect_err(spec).to_string();
            assert!(
                err.contains(message),
                "{spec:?}: {err:?} does not contain {message:?}"
            );
        }
    }

    #[test]
    fn go_durations() {
        for ok in [
            "0", "1s", "1.5h", "2h45m", "300ms", "-1m", "+5us", "1µs", ".5s", "1.s",
        ] {
            assert_eq!(validate_go_duration(ok), Ok(()), "{ok}");
        }
        for bad in ["", "5", "1x", "h", ".s", "1..2s", "1s2"] {
            assert!(validate_go_duration(bad).is_err(), "{bad}");
        }
    }
}
