//! Next-fire computation for check `cron` strings. `kensa_types::cron` parses the string (the
//! API validates with the same parser, so both agree on the grammar and the error messages);
//! this module resolves its time zone and answers "when does it fire next?".
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
use kensa_types::cron::{self, CronFields};

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

/// The five fields (bit sets, see [`CronFields`]) evaluated in `zone`.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    fields: CronFields,
    zone: TimeZone,
}

/// robfig gives up looking for a fire time after five years.
const SEARCH_DAYS: u32 = 5 * 366;

impl CronSchedule {
    /// Parses `spec`; fields without a `TZ=` prefix are evaluated in `default_zone`.
    pub fn parse(spec: &str, default_zone: &TimeZone) -> Result<CronSchedule, CronError> {
        let parsed = cron::parse(spec).map_err(|err| CronError::Invalid {
            spec: spec.to_owned(),
            reason: err.to_string(),
        })?;
        let zone = match &parsed.zone {
            Some(name) => TimeZone::get(name).map_err(|_| CronError::UnknownZone {
                spec: spec.to_owned(),
                zone: name.clone(),
            })?,
            None => default_zone.clone(),
        };
        Ok(match parsed.schedule {
            // robfig truncates to whole seconds and raises anything shorter to one.
            cron::CronSchedule::Every(period) => {
                CronSchedule::Every(Duration::from_secs(period.as_secs().max(1)))
            }
            cron::CronSchedule::Fields(fields) => CronSchedule::Calendar(Calendar { fields, zone }),
        })
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
        for hour in bits(self.fields.hours) {
            // Hours well before `after` on its own day cannot be later than it (UTC offsets
            // change by less than three hours): skip converting their minutes.
            if date == start.date() && i32::from(hour) + 3 < i32::from(start.hour()) {
                continue;
            }
            for minute in bits(self.fields.minutes) {
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
        if self.fields.months & (1 << date.month()) == 0 {
            return false;
        }
        let day_of_month = self.fields.days_of_month & (1 << date.day()) != 0;
        let day_of_week =
            self.fields.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.fields.day_of_month_star || self.fields.day_of_week_star {
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
                cron::parse_go_duration(input),
                nanos.map(Duration::from_nanos),
                "{input}"
            );
        }
    }
}
