//! When a check fires: [`CheckSchedule`] turns a check's `interval` or `cron` into absolute
//! fire times (Unix milliseconds), and [`TimerQueue`] holds what the scheduler task must do
//! next, earliest first.
//!
//! Interval checks (and `@every`) fire on a fixed grid `phase + k × period`, where the phase is
//! a stable hash of (namespace, name): a restart keeps the phase, every backend computes the
//! same ticks (so the round id of a tick is the same everywhere), and checks with the same
//! interval spread over it instead of firing together. Sensu hashes the check name only
//! (reference §3.4.1), so same-named checks of different namespaces thundered together.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use kensa_types::resources::check::CheckConfig;
use sha2::{Digest, Sha256};

use super::cron::{Calendar, CronError, CronSchedule};

/// A check's schedule, resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckSchedule {
    /// Fires at every `phase_ms + k × period_ms` (Unix milliseconds).
    Periodic { period_ms: i64, phase_ms: i64 },
    /// Fires at the calendar's times.
    Calendar(Calendar),
}

/// What decides a check's fire times: when it is unchanged, a config update swaps the
/// definition in place and keeps the timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSource {
    pub interval: u32,
    pub cron: String,
}

impl ScheduleSource {
    pub fn of(config: &CheckConfig) -> ScheduleSource {
        ScheduleSource {
            interval: config.interval,
            cron: config.cron.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Cron(#[from] CronError),
    #[error("check has neither an interval nor a cron schedule")]
    None,
}

impl CheckSchedule {
    /// The schedule of the check `(namespace, name)`; `cron` strings without a `TZ=` prefix
    /// are evaluated in `default_zone`.
    pub fn of(
        namespace: &str,
        name: &str,
        source: &ScheduleSource,
        default_zone: &TimeZone,
    ) -> Result<CheckSchedule, ScheduleError> {
        let period_ms = if !source.cron.is_empty() {
            match CronSchedule::parse(&source.cron, default_zone)? {
                CronSchedule::Calendar(calendar) => return Ok(CheckSchedule::Calendar(calendar)),
                CronSchedule::Every(period) => period.as_millis() as i64,
            }
        } else if source.interval > 0 {
            i64::from(source.interval) * 1000
        } else {
            return Err(ScheduleError::None);
        };
        Ok(CheckSchedule::Periodic {
            period_ms,
            phase_ms: (splay_hash(namespace, name) % period_ms as u64) as i64,
        })
    }

    /// The first fire time strictly after `after_ms`; `None` for a calendar that never fires.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            CheckSchedule::Periodic {
                period_ms,
                phase_ms,
            } => {
                let since_tick = (after_ms - phase_ms).rem_euclid(*period_ms);
                Some(after_ms - since_tick + period_ms)
            }
            CheckSchedule::Calendar(calendar) => {
                let after = Timestamp::from_millisecond(after_ms).ok()?;
                calendar.next_after(after).map(|next| next.as_millisecond())
            }
        }
    }

    /// The time proxy requests of the round fired at `tick_ms` may spread over (before
    /// `splay_coverage`): the period, or the time until the next cron fire — the one after it
    /// when that is under five seconds away (Sensu's rule, reference §3.4.4).
    pub fn round_length_ms(&self, tick_ms: i64) -> i64 {
        const MIN_ROUND_MS: i64 = 5_000;
        match self {
            CheckSchedule::Periodic { period_ms, .. } => *period_ms,
            CheckSchedule::Calendar(_) => {
                let Some(next) = self.next_after(tick_ms) else {
                    return 0;
                };
                if next - tick_ms >= MIN_ROUND_MS {
                    return next - tick_ms;
                }
                self.next_after(next)
                    .map_or(0, |following| following - tick_ms)
            }
        }
    }
}

/// The first eight bytes of SHA-256(namespace NUL name), little-endian: stable across
/// versions, platforms and restarts (std's hashers promise none of that).
pub fn splay_hash(namespace: &str, name: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(namespace.as_bytes())
        .chain_update([0u8])
        .chain_update(name.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Something the scheduler task must do at `due_ms` (Unix milliseconds).
struct Entry<T> {
    due_ms: i64,
    /// Insertion order, so entries due at the same instant run first in, first out.
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ms, self.seq) == (other.due_ms, other.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due_ms, self.seq).cmp(&(other.due_ms, other.seq))
    }
}

/// The one timer queue of the scheduler task: a min-heap on due time. Entries are never
/// removed early; an entry that no longer applies (its check was deleted or rescheduled) is
/// recognised by its generation when it comes due and dropped then.
pub struct TimerQueue<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    next_seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }
}

impl<T> TimerQueue<T> {
    pub fn push(&mut self, due_ms: i64, item: T) {
        self.next_seq += 1;
        self.heap.push(Reverse(Entry {
            due_ms,
            seq: self.next_seq,
            item,
        }));
    }

    /// When the earliest entry is due.
    pub fn next_due(&self) -> Option<i64> {
        self.heap.peek().map(|Reverse(entry)| entry.due_ms)
    }

    /// The earliest entry if it is due at `now_ms`.
    pub fn pop_due(&mut self, now_ms: i64) -> Option<(i64, T)> {
        if self.next_due()? > now_ms {
            return None;
        }
        self.heap
            .pop()
            .map(|Reverse(entry)| (entry.due_ms, entry.item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(interval: u32, cron: &str) -> ScheduleSource {
        ScheduleSource {
            interval,
            cron: cron.into(),
        }
    }

    #[test]
    fn the_phase_is_stable_and_within_the_interval() {
        // Pinned: a change here moves every check's phase on upgrade (and breaks round ids
        // agreeing across backends of different versions).
        assert_eq!(splay_hash("default", "check-cpu"), 0x6921_5f10_5c8b_b99b);
        let names: Vec<String> = (0..200).map(|i| format!("check-{i}")).collect();
        let mut phases = std::collections::BTreeSet::new();
        for name in &names {
            let schedule = CheckSchedule::of("default", name, &source(60, ""), &TimeZone::UTC)
                .expect("interval schedule");
            let again = CheckSchedule::of("default", name, &source(60, ""), &TimeZone::UTC)
                .expect("interval schedule");
            assert_eq!(schedule, again, "{name}: same phase on every computation");
            let CheckSchedule::Periodic { phase_ms, .. } = schedule else {
                panic!("periodic expected");
            };
            assert!((0..60_000).contains(&phase_ms), "{name}: {phase_ms}");
            phases.insert(phase_ms / 1000);
        }
        // 200 checks over 60 one-second buckets: spread, not clumped.
        assert!(
            phases.len() > 45,
            "phases cover only {} seconds",
            phases.len()
        );
        // The namespace is part of the hash.
        assert_ne!(splay_hash("default", "cpu"), splay_hash("prod", "cpu"));
    }

    #[test]
    fn periodic_ticks_sit_on_the_phase_grid() {
        let schedule = CheckSchedule::Periodic {
            period_ms: 60_000,
            phase_ms: 7_000,
        };
        let cases = [
            (0, 7_000),
            (6_999, 7_000),
            (7_000, 67_000),
            (7_001, 67_000),
            (1_700_000_000_000, 1_700_000_047_000),
            (-1, 7_000),
        ];
        for (after, next) in cases {
            assert_eq!(schedule.next_after(after), Some(next), "after {after}");
        }
    }

    #[test]
    fn every_is_periodic_on_the_check_phase() {
        let schedule =
            CheckSchedule::of("default", "web", &source(0, "@every 90s"), &TimeZone::UTC)
                .expect("parses");
        let CheckSchedule::Periodic {
            period_ms,
            phase_ms,
        } = schedule
        else {
            panic!("periodic expected");
        };
        assert_eq!(period_ms, 90_000);
        let now = 1_700_000_000_123;
        let next = schedule.next_after(now).expect("periodic");
        assert!(next > now && next <= now + 90_000);
        assert_eq!((next - phase_ms) % 90_000, 0);
        assert_eq!(schedule.next_after(next), Some(next + 90_000));
    }

    #[test]
    fn cron_round_length_skips_a_fire_closer_than_five_seconds() {
        let schedule =
            CheckSchedule::of("default", "web", &source(0, "*/15 * * * *"), &TimeZone::UTC)
                .expect("parses");
        let tick = 1_700_000_100_000; // 2023-11-14T22:15:00Z
        assert_eq!(schedule.next_after(tick - 1), Some(tick));
        assert_eq!(schedule.round_length_ms(tick), 15 * 60_000);
        // Fired late, 2 s before the next fire: the round runs until the one after.
        let late = tick + 15 * 60_000 - 2_000;
        assert_eq!(schedule.round_length_ms(late), 2_000 + 15 * 60_000);
        assert_eq!(
            CheckSchedule::of("default", "web", &source(0, ""), &TimeZone::UTC),
            Err(ScheduleError::None)
        );
    }

    #[test]
    fn timers_pop_in_due_order_and_fifo_on_ties() {
        let mut queue = TimerQueue::default();
        queue.push(30, "c");
        queue.push(10, "a");
        queue.push(30, "d");
        queue.push(20, "b");
        assert_eq!(queue.next_due(), Some(10));
        assert_eq!(queue.pop_due(5), None);
        let mut popped = Vec::new();
        while let Some((_, item)) = queue.pop_due(30) {
            popped.push(item);
        }
        assert_eq!(popped, ["a", "b", "c", "d"]);
        assert_eq!(queue.next_due(), None);
    }
}
