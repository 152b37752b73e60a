//! Reconnect storms, read from the log of sessions going up and down.
//!
//! Every agent logs when a session is established and when one breaks (a session the load
//! generator closes itself at the end is not logged). A *storm* starts when the number of
//! connected agents drops below the baseline — the number connected when sending started —
//! and ends when it is back at the baseline: how long that took is what a user of a cluster
//! cares about when a backend dies ("time until every agent is connected elsewhere").

use serde_json::{json, Value};

use crate::stats::round3;

/// A session established (`Up`) or broken (`Down`) at `at_s` seconds, to the URL `url`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    pub at_s: f64,
    pub up: bool,
    pub url: usize,
}

/// One period with fewer agents connected than the baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Storm {
    pub started_s: f64,
    /// `None`: not every agent was connected again by the end of the log.
    pub ended_s: Option<f64>,
    /// Sessions that broke during the storm (an agent can count more than once).
    pub disconnects: u64,
    /// Sessions established during the storm.
    pub reconnects: u64,
    /// The fewest agents connected at any moment of it.
    pub lowest: i64,
    /// Sessions that broke, per URL they were connected to.
    pub disconnects_by_url: Vec<u64>,
    /// Sessions established, per URL.
    pub reconnects_by_url: Vec<u64>,
}

impl Storm {
    pub fn to_json(&self) -> Value {
        json!({
            "started_s": round3(self.started_s),
            "ended_s": self.ended_s.map(round3),
            "all_connected_again_after_s": self.ended_s.map(|end| round3(end - self.started_s)),
            "disconnects": self.disconnects,
            "reconnects": self.reconnects,
            "lowest_connected": self.lowest,
            "disconnects_by_url": self.disconnects_by_url,
            "reconnects_by_url": self.reconnects_by_url,
        })
    }
}

/// The storms in `changes` (in time order) from `from_s` on, given `connected` agents at
/// `from_s` and a `baseline`; `urls` sizes the per-URL counts.
pub fn storms(
    changes: &[Change],
    from_s: f64,
    connected: i64,
    baseline: i64,
    urls: usize,
) -> Vec<Storm> {
    let mut storms = Vec::new();
    let mut current: Option<Storm> = None;
    let mut count = connected;
    for change in changes.iter().filter(|c| c.at_s >= from_s) {
        count += if change.up { 1 } else { -1 };
        if current.is_none() && !change.up && count < baseline {
            current = Some(Storm {
                started_s: change.at_s,
                ended_s: None,
                disconnects: 0,
                reconnects: 0,
                lowest: count,
                disconnects_by_url: vec![0; urls],
                reconnects_by_url: vec![0; urls],
            });
        }
        let Some(storm) = current.as_mut() else {
            continue;
        };
        let by_url = if change.up {
            storm.reconnects += 1;
            &mut storm.reconnects_by_url
        } else {
            storm.disconnects += 1;
            &mut storm.disconnects_by_url
        };
        if let Some(slot) = by_url.get_mut(change.url) {
            *slot += 1;
        }
        storm.lowest = storm.lowest.min(count);
        if count >= baseline {
            storm.ended_s = Some(change.at_s);
            storms.extend(current.take());
        }
    }
    storms.extend(current);
    storms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(at_s: f64, up: bool, url: usize) -> Change {
        Change { at_s, up, url }
    }

    #[test]
    fn a_storm_lasts_until_every_agent_is_back() {
        let changes = [
            change(1.0, true, 0), // before `from`: ignored
            change(10.0, false, 0),
            change(10.001, false, 0),
            change(10.002, false, 0),
            change(10.5, true, 1),
            change(11.0, true, 2),
            change(12.25, true, 1),
            change(20.0, false, 1),
            change(20.1, true, 2),
        ];
        let found = storms(&changes, 5.0, 3, 3, 3);
        assert_eq!(found.len(), 2, "{found:?}");
        let first = &found[0];
        assert_eq!(first.started_s, 10.0);
        assert_eq!(first.ended_s, Some(12.25));
        assert_eq!(
            (first.disconnects, first.reconnects, first.lowest),
            (3, 3, 0)
        );
        assert_eq!(first.disconnects_by_url, [3, 0, 0]);
        assert_eq!(first.reconnects_by_url, [0, 2, 1]);
        assert_eq!(first.to_json()["all_connected_again_after_s"], 2.25);
        assert_eq!(found[1].ended_s, Some(20.1));
        assert_eq!(found[1].lowest, 2);
    }

    #[test]
    fn a_storm_that_never_ends_has_no_end() {
        let changes = [
            change(3.0, false, 0),
            change(4.0, true, 0),
            change(4.5, false, 1),
        ];
        let found = storms(&changes, 0.0, 2, 2, 2);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[1].ended_s, None);
        assert_eq!(
            found[1].to_json()["all_connected_again_after_s"],
            Value::Null
        );
    }

    #[test]
    fn no_disconnects_no_storm() {
        let changes = [change(1.0, true, 0), change(2.0, true, 0)];
        assert!(storms(&changes, 0.0, 0, 2, 1).is_empty());
    }
}
