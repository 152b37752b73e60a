//! Next-fire computation for check `cron` strings. `kensa_types::cron` only says whether a
//! string is valid (the API uses it on write, and it is what this module runs first, so both
//! agree on the grammar and the error messages); this module turns a valid string into a
//! [`CronSchedule`] and answers "when does it fire next?".
//!
//! Semantics follow robfig/cron v3's standard parser, which Sensu uses (reference §3.4.2):
//! five fields (minute, hour, day of month, month, day of week), names, ranges, steps, lists,
//! the `@yearly`…`@hourly` descriptors, `@every <go duration>`, and a `CRON_TZ=Zone ` or
//! `TZ=Zone ` prefix evaluated in that zone (without one, in the zone the caller passes — the
//! backend's local zone, as robfig's `time.Local`). When both day of month and day of week are
//! restricted, a day matching either fires; when either starts with `*`, both must match.
//! Like robfig, a schedule that finds no time within five years never fires.
//!
//! Daylight-saving transitions: a wall-clock time skipped by a spring-forward gap fires at the
//! corresponding time after the gap, and a time repeated by a fall-back fold fires once, at
//! its first occurrence (robfig can fire twice there).

use std::time::Duration;

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Why a cron string cannot be scheduled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The grammar rejects it (the API normally refuses such checks on write).
    #[error("invalid cron schedule {spec:?}: {reason}")]
    Invalid { spec: String, reason: String },
    /// The `TZ=`/`CRON_TZ=` zone is not in the time-zone database (the API only checks the
    /// zone's shape, so this one reaches the scheduler).
    #[error("cron schedule {spec:?}: unknown time zone {zone:?}")]
    UnknownZone { spec: String, zone: String },
}

/// A parsed `cron` string.
#[derive(Debug, Clone, PartialEq)]
pub enum CronSchedule {
    /// `@every <duration>`: a constant period, whole seconds, at least one second (robfig
    /// truncates to seconds and raises anything shorter to one).
    Every(Duration),
    /// Five fields evaluated in a time zone.
    Calendar(Calendar),
}

/// The five fields as bit sets (bit `n` set: value `n` matches), in `zone`.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// The day-of-month field started with `*`/`?` (robfig's star bit): day matching is then
    /// an AND of the two day fields instead of an OR.
    day_of_month_star: bool,
    day_of_week_star: bool,
    zone: TimeZone,
}

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
const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAYS_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: MONTH_NAMES,
};
const DAYS_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: WEEKDAY_NAMES,
};

/// robfig gives up looking for a fire time after five years.
const SEARCH_DAYS: u32 = 5 * 366;

impl CronSchedule {
    /// Parses `spec`; fields without a `TZ=` prefix are evaluated in `default_zone`.
    pub fn parse(spec: &str, default_zone: &TimeZone) -> Result<CronSchedule, CronError> {
        let invalid = |reason: String| CronError::Invalid {
            spec: spec.to_owned(),
            reason,
        };
        kensa_types::cron::validate(spec).map_err(|err| invalid(err.to_string()))?;
        let (zone, schedule) = match spec
            .strip_prefix("CRON_TZ=")
            .or_else(|| spec.strip_prefix("TZ="))
        {
            Some(rest) => {
                let (name, schedule) = rest
                    .split_once(' ')
                    .ok_or_else(|| invalid("missing schedule after time zone".into()))?;
                let zone = TimeZone::get(name).map_err(|_| CronError::UnknownZone {
                    spec: spec.to_owned(),
                    zone: name.to_owned(),
                })?;
                (zone, schedule.trim())
            }
            None => (default_zone.clone(), spec.trim()),
        };
        let fields = match schedule {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => match other.strip_prefix("@every ") {
                Some(duration) => {
                    let period = parse_go_duration(duration.trim())
                        .ok_or_else(|| invalid(format!("invalid duration {duration:?}")))?;
                    let whole_seconds = Duration::from_secs(period.as_secs().max(1));
                    return Ok(CronSchedule::Every(whole_seconds));
                }
                None => other,
            },
        };
        let fields: Vec<&str> = fields.split_whitespace().collect();
        let [minute, hour, day_of_month, month, day_of_week] = fields.as_slice() else {
            return Err(invalid(format!(
                "expected exactly 5 fields, found {}",
                fields.len()
            )));
        };
        let field = |text: &str, bounds: &Bounds| parse_field(text, bounds).map_err(invalid);
        let (minutes, _) = field(minute, &MINUTES)?;
        let (hours, _) = field(hour, &HOURS)?;
        let (days_of_month, day_of_month_star) = field(day_of_month, &DAYS_OF_MONTH)?;
        let (months, _) = field(month, &MONTHS)?;
        let (days_of_week, day_of_week_star) = field(day_of_week, &DAYS_OF_WEEK)?;
        Ok(CronSchedule::Calendar(Calendar {
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            day_of_month_star,
            day_of_week_star,
            zone,
        }))
    }
}

impl Calendar {
    /// The first fire time strictly after `after`, or `None` when there is none within five
    /// years (`0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = self.zone.to_datetime(after);
        let mut date = start.date();
        for _ in 0..SEARCH_DAYS {
            if self.day_matches(date) {
                if let Some(fire) = self.first_on(date, start, after) {
                    return Some(fire);
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The first matching time of `date` later than `after`. Wall-clock times map to instants
    /// monotonically under the "compatible" rule (gap: after it; fold: the first one), so the
    /// first candidate in wall-clock order that is later than `after` is the earliest.
    fn first_on(&self, date: Date, start: DateTime, after: Timestamp) -> Option<Timestamp> {
        for hour in bits(self.hours) {
            // Hours well before `after` on its own day cannot be later than it (UTC offsets
            // change by less than three hours): skip converting their minutes.
            if date == start.date() && i32::from(hour) + 3 < i32::from(start.hour()) {
                continue;
            }
            for minute in bits(self.minutes) {
                let wall = date.at(hour, minute, 0, 0);
                let Ok(fire) = self.zone.to_ambiguous_timestamp(wall).compatible() else {
                    continue;
                };
                if fire > after {
                    return Some(fire);
                }
            }
        }
        None
    }

    /// robfig's `dayMatches`.
    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day_of_month = self.days_of_month & (1 << date.day()) != 0;
        let day_of_week = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.day_of_month_star || self.day_of_week_star {
            day_of_month && day_of_week
        } else {
            day_of_month || day_of_week
        }
    }
}

/// The values set in `set`, ascending (each fits an `i8`: fields stop at 59).
fn bits(set: u64) -> impl Iterator<Item = i8> {
    (0..64i8).filter(move |bit| set & (1 << bit) != 0)
}

/// One field (a comma-separated list) as a bit set, and whether any part started with `*` or
/// `?` without a step above one (robfig's star bit). The grammar was validated before.
fn parse_field(field: &str, bounds: &Bounds) -> Result<(u64, bool), String> {
    let mut set = 0u64;
    let mut star = false;
    for expr in field.split(',') {
        let (range, step) = match expr.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (expr, None),
        };
        let (mut start, mut end, mut is_star) = if range == "*" || range == "?" {
            (bounds.min, bounds.max, true)
        } else {
            match range.split_once('-') {
                Some((low, high)) => (value(low, bounds)?, value(high, bounds)?, false),
                None => {
                    let single = value(range, bounds)?;
                    (single, single, false)
                }
            }
        };
        let step = match step {
            None => 1,
            Some(step) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("failed to parse int from {step}: {expr}"))?;
                if !range.contains('-') {
                    // `5/15`: from 5 to the end of the range, every 15.
                    end = bounds.max;
                }
                if step > 1 {
                    is_star = false;
                }
                step
            }
        };
        if step == 0 || start < bounds.min || end > bounds.max || start > end {
            return Err(format!("invalid range: {expr}"));
        }
        while start <= end {
            set |= 1 << start;
            start += step;
        }
        star |= is_star;
    }
    Ok((set, star))
}

fn value(text: &str, bounds: &Bounds) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    match bounds.names.iter().find(|(name, _)| *name == lower) {
        Some((_, number)) => Ok(*number),
        None => text
            .parse()
            .map_err(|_| format!("failed to parse int from {text}")),
    }
}

/// Go's `time.ParseDuration` (the grammar `kensa_types::cron::validate_go_duration` checks);
/// negative durations come out as zero.
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
    let nanos = u64::try_from(total_nanos).ok()?;
    Some(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("test timestamps are RFC 3339")
    }

    /// `spec` evaluated from `from`: the next `expected.len()` fire times.
    fn fires(spec: &str, from: &str) -> Vec<String> {
        let schedule = CronSchedule::parse(spec, &TimeZone::UTC).expect(spec);
        let CronSchedule::Calendar(calendar) = schedule else {
            panic!("{spec} is not a calendar schedule");
        };
        let mut out = Vec::new();
        let mut after = at(from);
        for _ in 0..3 {
            match calendar.next_after(after) {
                Some(next) => {
                    out.push(next.to_string());
                    after = next;
                }
                None => break,
            }
        }
        out
    }

    #[test]
    fn next_fire_times() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "*/15 * * * *",
                "2024-03-05T10:07:30Z",
                &[
                    "2024-03-05T10:15:00Z",
                    "2024-03-05T10:30:00Z",
                    "2024-03-05T10:45:00Z",
                ],
            ),
            // A fire time is strictly after the reference instant.
            (
                "*/15 * * * *",
                "2024-03-05T10:15:00Z",
                &[
                    "2024-03-05T10:30:00Z",
                    "2024-03-05T10:45:00Z",
                    "2024-03-05T11:00:00Z",
                ],
            ),
            (
                "5/20 * * * *",
                "2024-03-05T10:00:00Z",
                &[
                    "2024-03-05T10:05:00Z",
                    "2024-03-05T10:25:00Z",
                    "2024-03-05T10:45:00Z",
                ],
            ),
            // 9:00 on weekdays in New York: EST (-05:00) before the 2024-03-10 switch, EDT
            // (-04:00) after it; the weekend is skipped.
            (
                "CRON_TZ=America/New_York 0 9 * * 1-5",
                "2024-03-07T15:00:00Z",
                &[
                    "2024-03-08T14:00:00Z",
                    "2024-03-11T13:00:00Z",
                    "2024-03-12T13:00:00Z",
                ],
            ),
            (
                "TZ=Asia/Tokyo 30 8 * * *",
                "2024-01-01T00:00:00Z",
                &[
                    "2024-01-01T23:30:00Z",
                    "2024-01-02T23:30:00Z",
                    "2024-01-03T23:30:00Z",
                ],
            ),
            // Both day fields restricted: the 1st and 15th OR any Monday (robfig's rule).
            (
                "0 0 1,15 * mon",
                "2024-04-16T00:00:00Z",
                &[
                    "2024-04-22T00:00:00Z",
                    "2024-04-29T00:00:00Z",
                    "2024-05-01T00:00:00Z",
                ],
            ),
            // Day of month is `*`: both must match, so only Mondays.
            (
                "0 0 * * mon",
                "2024-04-16T00:00:00Z",
                &[
                    "2024-04-22T00:00:00Z",
                    "2024-04-29T00:00:00Z",
                    "2024-05-06T00:00:00Z",
                ],
            ),
            // `*/2` has no star bit: the 1st, 3rd, 5th… OR Sundays.
            (
                "0 12 */2 * sun",
                "2024-06-01T13:00:00Z",
                &[
                    "2024-06-02T12:00:00Z",
                    "2024-06-03T12:00:00Z",
                    "2024-06-05T12:00:00Z",
                ],
            ),
            // Month and weekday names, case-insensitive.
            (
                "30 2 * JAN,jul sun",
                "2024-06-20T00:00:00Z",
                &[
                    "2024-07-07T02:30:00Z",
                    "2024-07-14T02:30:00Z",
                    "2024-07-21T02:30:00Z",
                ],
            ),
            (
                "0 0 29 feb *",
                "2024-03-01T00:00:00Z",
                &[
                    "2028-02-29T00:00:00Z",
                    "2032-02-29T00:00:00Z",
                    "2036-02-29T00:00:00Z",
                ],
            ),
            (
                "@hourly",
                "2024-03-05T10:07:00Z",
                &[
                    "2024-03-05T11:00:00Z",
                    "2024-03-05T12:00:00Z",
                    "2024-03-05T13:00:00Z",
                ],
            ),
            (
                "@weekly",
                "2024-03-05T10:07:00Z",
                &[
                    "2024-03-10T00:00:00Z",
                    "2024-03-17T00:00:00Z",
                    "2024-03-24T00:00:00Z",
                ],
            ),
            (
                "@yearly",
                "2024-03-05T10:07:00Z",
                &[
                    "2025-01-01T00:00:00Z",
                    "2026-01-01T00:00:00Z",
                    "2027-01-01T00:00:00Z",
                ],
            ),
            // Never: robfig gives up after five years, so do we.
            ("0 0 30 2 *", "2024-01-01T00:00:00Z", &[]),
        ];
        for (spec, from, expected) in cases {
            assert_eq!(fires(spec, from), *expected, "{spec} from {from}");
        }
    }

    #[test]
    fn daylight_saving_gaps_and_folds() {
        // 2:30 does not exist on 2024-03-10 in New York: it fires just after the gap (3:30
        // EDT). On 2024-11-03, 1:30 happens twice: it fires once, at the first (EDT).
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "TZ=America/New_York 30 2 * * *",
                "2024-03-09T12:00:00Z",
                &[
                    "2024-03-10T07:30:00Z",
                    "2024-03-11T06:30:00Z",
                    "2024-03-12T06:30:00Z",
                ],
            ),
            (
                "TZ=America/New_York 30 1 * * *",
                "2024-11-02T12:00:00Z",
                &[
                    "2024-11-03T05:30:00Z",
                    "2024-11-04T06:30:00Z",
                    "2024-11-05T06:30:00Z",
                ],
            ),
        ];
        for (spec, from, expected) in cases {
            assert_eq!(fires(spec, from), *expected, "{spec} from {from}");
        }
    }

    #[test]
    fn the_default_zone_applies_without_a_prefix() {
        let paris = TimeZone::get("Europe/Paris").expect("tz database");
        let CronSchedule::Calendar(calendar) =
            CronSchedule::parse("0 9 * * *", &paris).expect("parses")
        else {
            panic!("calendar expected");
        };
        assert_eq!(
            calendar.next_after(at("2024-01-10T00:00:00Z")),
            Some(at("2024-01-10T08:00:00Z"))
        );
    }

    #[test]
    fn every_takes_go_durations_in_whole_seconds() {
        let cases: &[(&str, u64)] = &[
            ("@every 90s", 90),
            ("@every 1m30s", 90),
            ("@every 1.5h", 5400),
            ("@every 2500ms", 2),
            ("@every 10ms", 1),
            ("TZ=UTC @every 1h", 3600),
        ];
        for (spec, seconds) in cases {
            assert_eq!(
                CronSchedule::parse(spec, &TimeZone::UTC),
                Ok(CronSchedule::Every(Duration::from_secs(*seconds))),
                "{spec}"
            );
        }
    }

    #[test]
    fn rejects_invalid_strings_and_unknown_zones() {
        let cases: &[(&str, &str)] = &[
            ("* * * *", "expected exactly 5 fields"),
            ("61 * * * *", "above maximum"),
            ("@often", "unrecognized descriptor"),
            (
                "TZ=Mars/Olympus * * * * *",
                "unknown time zone \"Mars/Olympus\"",
            ),
        ];
        for (spec, message) in cases {
            let err = CronSchedule::parse(spec, &TimeZone::UTC)
                .expect_err(spec)
                .to_string();
            assert!(err.contains(message), "{spec}: {err}");
        }
    }

    #[test]
    fn go_durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("1h2m3s", Some(3_723_000_000_000)),
            ("1.5s", Some(1_500_000_000)),
            (".5m", Some(30_000_000_000)),
            ("300ms", Some(300_000_000)),
            ("2us", Some(2_000)),
            ("-5s", Some(0)),
            ("5", None),
            ("1x", None),
            ("", None),
        ];
        for (input, nanos) in cases {
            assert_eq!(
                parse_go_duration(input),
                nanos.map(Duration::from_nanos),
                "{input}"
            );
        }
    }
}
