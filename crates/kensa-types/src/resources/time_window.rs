//! Time windows: the 6.7+ `subdues` of checks ([`TimeWindowRepeated`]: RFC 3339 begin/end,
//! optionally repeated daily, weekly, on weekdays…) and the legacy `subdue` / filter `when`
//! ([`TimeWindowWhen`]: `3:04PM`-style ranges per weekday, compared in UTC). Both validate with
//! Sensu's messages and answer "is this instant inside?" for a Unix time passed in by the caller.

use serde::{Deserialize, Serialize};

use crate::ResourceError;

/// A subdue period (`subdues[]`): `begin`/`end` are RFC 3339 strings; `repeat` names the
/// periods it recurs on (`daily`, `weekdays`, `fridays`, `monthly`…). Without `repeat` it is a
/// single absolute window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeWindowRepeated {
    pub begin: String,
    pub end: String,
    #[serde(with = "super::nullable")]
    pub repeat: Vec<String>,
}

/// The values `repeat` accepts.
pub const REPEAT_PERIODS: [&str; 13] = [
    "annually",
    "monthly",
    "weekly",
    "weekdays",
    "weekends",
    "daily",
    "sundays",
    "mondays",
    "tuesdays",
    "wednesdays",
    "thursdays",
    "fridays",
    "saturdays",
];

const SECONDS_PER_DAY: i64 = 86_400;

impl TimeWindowRepeated {
    /// Sensu's rules: both ends parse as RFC 3339, `end` is not before `begin`, every `repeat`
    /// entry is a known period.
    pub fn validate(&self) -> Result<(), ResourceError> {
        let begin = parse_rfc3339(&self.begin).ok_or_else(|| {
            ResourceError::invalid_field(
                "begin",
                format!(
                    "invalid begin time format: {:?} is not RFC 3339",
                    self.begin
                ),
            )
        })?;
        let end = parse_rfc3339(&self.end).ok_or_else(|| {
            ResourceError::invalid_field(
                "end",
                format!("invalid end time format: {:?} is not RFC 3339", self.end),
            )
        })?;
        if (end.unix, end.nanos) < (begin.unix, begin.nanos) {
            return Err(ResourceError::invalid_field(
                "end",
                "end time must be after begin time",
            ));
        }
        for (i, repeat) in self.repeat.iter().enumerate() {
            if !REPEAT_PERIODS.contains(&repeat.as_str()) {
                return Err(ResourceError::invalid_field(
                    format!("repeat[{i}]"),
                    format!("invalid repeat period: {repeat}"),
                ));
            }
        }
        Ok(())
    }

    /// Whether `now` (Unix seconds) falls in this window. Repeated windows reuse the time of day
    /// (in `begin`'s UTC offset) and the length `end - begin`; the window includes `begin` and
    /// ends one second after `end` (Sensu ≥ 6.8.1). Unparseable windows contain nothing.
    pub fn contains(&self, now: i64) -> bool {
        let (Some(begin), Some(end)) = (parse_rfc3339(&self.begin), parse_rfc3339(&self.end))
        else {
            return false;
        };
        if self.repeat.is_empty() {
            return begin.unix <= now && now < end.unix + 1;
        }
        if now < begin.unix {
            return false;
        }
        let window = RepeatedWindow {
            begin,
            length: end.unix - begin.unix,
        };
        self.repeat
            .iter()
            .any(|period| window.contains(period, now))
    }
}

/// The parts of a repeated window the recurrence rules need.
struct RepeatedWindow {
    begin: Rfc3339,
    length: i64,
}

impl RepeatedWindow {
    fn contains(&self, period: &str, now: i64) -> bool {
        let local_now = LocalDate::of(now, self.begin.offset);
        let local_begin = LocalDate::of(self.begin.unix, self.begin.offset);
        let weekday_of = |name: &str| -> Option<i64> {
            [
                "sundays",
                "mondays",
                "tuesdays",
                "wednesdays",
                "thursdays",
                "fridays",
                "saturdays",
            ]
            .iter()
            .position(|day| *day == name)
            .map(|day| day as i64)
        };
        match period {
            "daily" => self.on_day(local_now.days, now),
            "weekly" => self.on_weekday(local_now, local_begin.weekday(), now),
            "weekdays" => (1..=5).any(|day| self.on_weekday(local_now, day, now)),
            "weekends" => [6, 0]
                .into_iter()
                .any(|day| self.on_weekday(local_now, day, now)),
            "monthly" => {
                local_now.civil().2 == local_begin.civil().2 && self.on_day(local_now.days, now)
            }
            "annually" => {
                let (_, now_month, now_day) = local_now.civil();
                let (_, begin_month, begin_day) = local_begin.civil();
                (now_month, now_day) == (begin_month, begin_day) && self.on_day(local_now.days, now)
            }
            day => weekday_of(day).is_some_and(|weekday| self.on_weekday(local_now, weekday, now)),
        }
    }

    /// Whether `now` is in the occurrence starting on local day `days` at `begin`'s time of day.
    fn on_day(&self, days: i64, now: i64) -> bool {
        let seconds_into_day =
            (self.begin.unix + i64::from(self.begin.offset)).rem_euclid(SECONDS_PER_DAY);
        let start = days * SECONDS_PER_DAY + seconds_into_day - i64::from(self.begin.offset);
        start <= now && now < start + self.length + 1
    }

    /// Whether `now` is in the occurrence on `weekday` (0 = Sunday) of `now`'s week.
    fn on_weekday(&self, local_now: LocalDate, weekday: i64, now: i64) -> bool {
        self.on_day(local_now.days + weekday - local_now.weekday(), now)
    }
}

/// A day in some UTC offset, as days since 1970-01-01.
#[derive(Clone, Copy)]
struct LocalDate {
    days: i64,
}

impl LocalDate {
    fn of(unix: i64, offset: i32) -> Self {
        LocalDate {
            days: (unix + i64::from(offset)).div_euclid(SECONDS_PER_DAY),
        }
    }

    /// 0 = Sunday (1970-01-01 was a Thursday).
    fn weekday(self) -> i64 {
        (self.days + 4).rem_euclid(7)
    }

    /// `(year, month, day)`.
    fn civil(self) -> (i64, u32, u32) {
        civil_from_days(self.days)
    }
}

/// A parsed RFC 3339 timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339 {
    /// Seconds since the Unix epoch.
    pub unix: i64,
    /// The fractional second.
    pub nanos: u32,
    /// The UTC offset it was written in, in seconds (`-07:00` → -25200).
    pub offset: i32,
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as Go's `time.RFC3339` layout does.
pub fn parse_rfc3339(input: &str) -> Option<Rfc3339> {
    let bytes = input.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = bytes.get(range)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let at = |i: usize, c: u8| bytes.get(i) == Some(&c);
    if !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':')) {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(i64::from(year), month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &input[19..];
    let mut nanos = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 || len > 9 {
            return None;
        }
        let digits: u32 = fraction[..len].parse().ok()?;
        nanos = digits * 10u32.pow(9 - len as u32);
        rest = &fraction[len..];
    }
    let offset = match rest.as_bytes() {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: &u8, b: &u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i32::from(a - b'0') * 10 + i32::from(b - b'0'))
            };
            let (hours, minutes) = (two(h1, h2)?, two(m1, m2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let local = days * SECONDS_PER_DAY + i64::from(hour * 3600 + minute * 60 + second);
    Some(Rfc3339 {
        unix: local - i64::from(offset),
        nanos,
        offset,
    })
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The legacy (Sensu 1.x style) time window of `subdue` and filter `when`: ranges per weekday,
/// `all` applying to every day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeWindowWhen {
    pub days: TimeWindowDays,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeWindowDays {
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub all: Vec<TimeWindowTimeRange>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub sunday: Vec<TimeWindowTimeRange>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub monday: Vec<TimeWindowTimeRange>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub tuesday: Vec<TimeWindowTimeRange>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub wednesday: Vec<TimeWindowTimeRange>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub thursday: Vec<TimeWindowTimeRange>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub friday: Vec<TimeWindowTimeRange>,
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub saturday: Vec<TimeWindowTimeRange>,
}

/// `begin`/`end` in Go's Kitchen format (`3:00PM`; spaces are ignored, so `3:00 PM` works).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeWindowTimeRange {
    pub begin: String,
    pub end: String,
}

impl TimeWindowDays {
    /// `(name, ranges)` for `all` and each weekday, Sunday first.
    fn by_name(&self) -> [(&'static str, &[TimeWindowTimeRange]); 8] {
        [
            ("all", &self.all),
            ("sunday", &self.sunday),
            ("monday", &self.monday),
            ("tuesday", &self.tuesday),
            ("wednesday", &self.wednesday),
            ("thursday", &self.thursday),
            ("friday", &self.friday),
            ("saturday", &self.saturday),
        ]
    }
}

impl TimeWindowWhen {
    /// Every range must parse.
    pub fn validate(&self) -> Result<(), ResourceError> {
        for (day, ranges) in self.days.by_name() {
            for (i, range) in ranges.iter().enumerate() {
                range
                    .validate()
                    .map_err(|err| err.within(&format!("days.{day}[{i}]"), ""))?;
            }
        }
        Ok(())
    }

    /// Whether `now` (Unix seconds) falls in one of the `all` ranges or the ranges of `now`'s
    /// weekday, in UTC. Ranges ending before they begin wrap past midnight.
    pub fn contains(&self, now: i64) -> bool {
        let today = LocalDate::of(now, 0);
        let days = self.days.by_name();
        let (_, all) = days[0];
        let (_, weekday) = days[1 + today.weekday() as usize];
        all.iter().chain(weekday).any(|range| range.contains(now))
    }
}

impl TimeWindowTimeRange {
    pub fn validate(&self) -> Result<(), ResourceError> {
        for (field, value) in [("begin", &self.begin), ("end", &self.end)] {
            if parse_kitchen(value).is_none() {
                return Err(ResourceError::invalid_field(
                    field,
                    format!("parsing time {value:?} as \"3:04PM\": expected a time such as 3:04PM"),
                ));
            }
        }
        Ok(())
    }

    /// Sensu's `InWindow` on the UTC day of `now`.
    pub fn contains(&self, now: i64) -> bool {
        let (Some(begin), Some(end)) = (parse_kitchen(&self.begin), parse_kitchen(&self.end))
        else {
            return false;
        };
        let midnight = LocalDate::of(now, 0).days * SECONDS_PER_DAY;
        let (mut begin, mut end) = (midnight + begin, midnight + end);
        if end < begin {
            if now < end {
                begin = midnight;
            } else {
                end = midnight + SECONDS_PER_DAY - 1;
            }
        }
        begin <= now && now <= end
    }
}

/// Seconds after midnight of a Kitchen time (`3:04PM`), spaces removed first.
fn parse_kitchen(value: &str) -> Option<i64> {
    let compact: String = value.chars().filter(|c| *c != ' ').collect();
    let (hour, rest) = compact.split_once(':')?;
    if hour.is_empty() || hour.len() > 2 || !hour.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hour: i64 = hour.parse().ok()?;
    let (minute, meridiem) = (rest.get(..2)?, rest.get(2..)?);
    if !minute.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let minute: i64 = minute.parse().ok()?;
    if hour > 12 || minute > 59 {
        return None;
    }
    let hour = match meridiem {
        "AM" if hour == 12 => 0,
        "AM" => hour,
        "PM" if hour < 12 => hour + 12,
        "PM" => hour,
        _ => return None,
    };
    Some(hour * 3600 + minute * 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(begin: &str, end: &str, repeat: &[&str]) -> TimeWindowRepeated {
        TimeWindowRepeated {
            begin: begin.to_owned(),
            end: end.to_owned(),
            repeat: repeat.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn unix(rfc3339: &str) -> i64 {
        parse_rfc3339(rfc3339).expect("valid test timestamp").unix
    }

    #[test]
    fn rfc3339_parses_like_go() {
        assert_eq!(unix("1970-01-01T00:00:00Z"), 0);
        assert_eq!(unix("2022-04-18T17:00:00-07:00"), 1_650_326_400);
        assert_eq!(
            parse_rfc3339("2024-02-29T12:00:00.5+01:00").map(|t| (t.nanos, t.offset)),
            Some((500_000_000, 3600))
        );
        for bad in [
            "2022-04-18 17:00:00Z",
            "2022-02-30T00:00:00Z",
            "2022-04-18T24:00:00Z",
            "2022-04-18T17:00:00",
            "x",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        for days in [-800_000, -1, 0, 59, 365, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn repeated_windows_validate_with_sensu_messages() {
        assert!(window(
            "2022-04-18T17:00:00-07:00",
            "2022-04-19T08:00:00-07:00",
            &["weekdays"]
        )
        .validate()
        .is_ok());
        for (w, message) in [
            (
                window("yesterday", "2022-04-19T08:00:00Z", &[]),
                "begin: invalid begin time format",
            ),
            (
                window("2022-04-19T08:00:00Z", "", &[]),
                "end: invalid end time format",
            ),
            (
                window("2022-04-19T08:00:00Z", "2022-04-19T07:00:00Z", &[]),
                "end time must be after begin time",
            ),
            (
                window(
                    "2022-04-19T08:00:00Z",
                    "2022-04-19T09:00:00Z",
                    &["fortnightly"],
                ),
                "repeat[0]: invalid repeat period: fortnightly",
            ),
        ] {
            let err = w.validate().unwrap_err().to_string();
            assert!(err.contains(message), "{err}");
        }
    }

    #[test]
    fn repeated_windows_match_the_docs_examples() {
        // Subdued 17:00–08:00 PDT on weekdays, from Monday 2022-04-18.
        let weekdays = window(
            "2022-04-18T17:00:00-07:00",
            "2022-04-19T08:00:00-07:00",
            &["weekdays"],
        );
        assert!(!weekdays.contains(unix("2022-04-18T16:59:59-07:00")));
        assert!(weekdays.contains(unix("2022-04-18T17:00:00-07:00")));
        assert!(weekdays.contains(unix("2022-04-20T07:00:00-07:00")));
        assert!(
            weekdays.contains(unix("2022-04-20T08:00:00-07:00")),
            "end + 1s is exclusive"
        );
        assert!(!weekdays.contains(unix("2022-04-20T08:00:01-07:00")));
        assert!(
            !weekdays.contains(unix("2022-04-23T18:00:00-07:00")),
            "saturday evening is not a weekday start"
        );

        let fridays = window(
            "2022-04-22T10:00:00-07:00",
            "2022-04-22T11:00:00-07:00",
            &["fridays"],
        );
        assert!(fridays.contains(unix("2022-05-06T10:30:00-07:00")));
        assert!(!fridays.contains(unix("2022-05-05T10:30:00-07:00")));

        let monthly = window("2022-01-15T00:00:00Z", "2022-01-15T06:00:00Z", &["monthly"]);
        assert!(monthly.contains(unix("2022-03-15T05:00:00Z")));
        assert!(!monthly.contains(unix("2022-03-16T05:00:00Z")));

        let absolute = window("2022-01-15T00:00:00Z", "2022-01-15T06:00:00Z", &[]);
        assert!(absolute.contains(unix("2022-01-15T06:00:00Z")));
        assert!(!absolute.contains(unix("2022-01-15T06:00:01Z")));
        assert!(!absolute.contains(unix("2022-02-15T03:00:00Z")));
    }

    #[test]
    fn legacy_windows_wrap_past_midnight() {
        let when = TimeWindowWhen {
            days: TimeWindowDays {
                all: vec![TimeWindowTimeRange {
                    begin: "3:00 PM".into(),
                    end: "8:00AM".into(),
                }],
                ..Default::default()
            },
        };
        assert!(when.validate().is_ok());
        assert!(when.contains(unix("2022-01-15T16:00:00Z")));
        assert!(when.contains(unix("2022-01-15T07:59:00Z")));
        assert!(!when.contains(unix("2022-01-15T12:00:00Z")));
        let bad = TimeWindowWhen {
            days: TimeWindowDays {
                monday: vec![TimeWindowTimeRange {
                    begin: "15:00".into(),
                    end: "8:00AM".into(),
                }],
                ..Default::default()
            },
        };
        assert_eq!(
            bad.validate().unwrap_err().field(),
            Some("days.monday[0].begin")
        );
    }
}
