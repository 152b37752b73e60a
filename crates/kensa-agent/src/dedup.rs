//! Check-request deduplication by `(execution key, round)`.
//!
//! An agent with several subscriptions matching one check receives the same request once per
//! subscription, and a backend may re-deliver a request after a reconnect; each scheduled round
//! must still run once. Sensu compared wall-clock `issued` seconds from several backends'
//! clocks, which dropped newer rounds after a reconnect to a backend whose clock was behind and
//! dropped an ad hoc run issued in the same second as a scheduled one (reference §8.7). Here a
//! round is an opaque id chosen by the scheduler: only *the same* round is a duplicate, nothing
//! is ever "older", and the memory survives reconnects.
//!
//! The memory is bounded twice: entries expire after a TTL (measured on the monotonic clock,
//! so wall-clock jumps do not matter), and when `capacity` entries are live the oldest is
//! forgotten first. Forgetting can only let a very late duplicate run a second time.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// How long a round is remembered. Duplicates arrive within milliseconds (several
/// subscriptions) or after a reconnect (seconds to minutes).
pub const ROUND_TTL: Duration = Duration::from_secs(3600);

/// How many rounds are remembered at most (a few hundred checks × their rounds per hour stays
/// far below; the cap only matters for a runaway ad hoc loop).
pub const ROUND_CAPACITY: usize = 16_384;

/// The rounds already seen.
#[derive(Debug)]
pub struct RoundDedup {
    ttl: Duration,
    capacity: usize,
    seen: HashSet<(String, String)>,
    /// Insertion order, for expiry and eviction.
    order: VecDeque<(Instant, (String, String))>,
}

impl RoundDedup {
    pub fn new(ttl: Duration, capacity: usize) -> RoundDedup {
        RoundDedup {
            ttl,
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `(key, round)` and returns `true` the first time, `false` for a duplicate.
    pub fn first_time(&mut self, key: &str, round: &str, now: Instant) -> bool {
        while self
            .order
            .front()
            .is_some_and(|(seen_at, _)| now.duration_since(*seen_at) >= self.ttl)
        {
            self.forget_oldest();
        }
        let entry = (key.to_owned(), round.to_owned());
        if self.seen.contains(&entry) {
            return false;
        }
        while self.order.len() >= self.capacity {
            self.forget_oldest();
        }
        self.seen.insert(entry.clone());
        self.order.push_back((now, entry));
        true
    }

    fn forget_oldest(&mut self) {
        if let Some((_, entry)) = self.order.pop_front() {
            self.seen.remove(&entry);
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

impl Default for RoundDedup {
    fn default() -> Self {
        RoundDedup::new(ROUND_TTL, ROUND_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_round_is_a_duplicate_and_any_other_round_runs() {
        let start = Instant::now();
        let mut dedup = RoundDedup::new(Duration::from_secs(60), 100);
        // (key, round, seconds after start, expected first_time)
        let cases = [
            ("disk", "r2", 0, true),
            ("disk", "r2", 0, false),
            ("disk", "r1", 1, true), // "older" rounds are not rejected
            ("disk/router", "r2", 1, true),
            ("cpu", "r2", 1, true),
            ("disk", "r2", 59, false),
            ("disk", "r2", 61, true), // expired
        ];
        for (key, round, after, expected) in cases {
            let now = start + Duration::from_secs(after);
            assert_eq!(
                dedup.first_time(key, round, now),
                expected,
                "{key} {round} +{after}s"
            );
        }
    }

    #[test]
    fn capacity_bounds_memory() {
        let now = Instant::now();
        let mut dedup = RoundDedup::new(Duration::from_secs(60), 3);
        for round in ["a", "b", "c", "d"] {
            assert!(dedup.first_time("k", round, now));
        }
        assert_eq!(dedup.len(), 3);
        assert!(dedup.first_time("k", "a", now), "the oldest was forgotten");
        assert!(!dedup.first_time("k", "d", now));
    }
}
