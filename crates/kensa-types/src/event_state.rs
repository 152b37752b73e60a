//! The per-(entity, check) state rules Sensu applies when a new result arrives (reference
//! §2.2 "Event history/state algorithm"), with Sensu's flap-detection defects fixed
//! (sensu-internals §8.5): total state change is computed over the entries available rather
//! than only once 21 exist, and the low-threshold hysteresis works because the previous state
//! (`flapping` or not) is taken from the previous event.
//!
//! Pure: no I/O, no clock (the caller passes the previous check, if any).

use serde_json::{json, Value};

/// Sensu keeps the last 21 results.
pub const HISTORY_LEN: usize = 21;

/// Total state change in percent over `statuses` (oldest first): transitions are weighted
/// from 0.80 (oldest) rising by 0.02 up to 1.18 (newest of 21), as Sensu and Nagios do. With
/// fewer entries, the newest transitions keep the weights they would have in a full history.
pub fn total_state_change(statuses: &[u64]) -> u32 {
    let transitions = statuses.len().saturating_sub(1).min(HISTORY_LEN - 1);
    if transitions == 0 {
        return 0;
    }
    let recent = &statuses[statuses.len() - transitions - 1..];
    // Weights in hundredths, so the result is exact: 80 + 2k.
    let first_weight = 80 + 2 * (HISTORY_LEN - 1 - transitions) as u64;
    let sum: u64 = recent
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| pair[0] != pair[1])
        .map(|(i, _)| first_weight + 2 * i as u64)
        .sum();
    (sum / transitions as u64) as u32
}

/// One entry of a check's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryEntry {
    pub status: u64,
    pub executed: i64,
    /// Whether the check was flapping after this result (Kensa's addition, see [`merge_check`]).
    pub flapping: bool,
}

/// What the next merge needs of a check: everything but its output and configuration. Small
/// and typed, so a backend can keep one per (entity, check) in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckState {
    /// Oldest first, at most [`HISTORY_LEN`].
    pub history: Vec<HistoryEntry>,
    pub flapping: bool,
    pub last_ok: i64,
    pub occurrences: i64,
    pub occurrences_watermark: i64,
}

impl CheckState {
    /// The state carried by a stored event's check (missing or mistyped fields count as 0).
    pub fn of(check: &Value) -> CheckState {
        let history = check["history"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|entry| HistoryEntry {
                        status: entry["status"].as_u64().unwrap_or(0),
                        executed: entry["executed"].as_i64().unwrap_or(0),
                        flapping: entry["flapping"].as_bool().unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default();
        CheckState {
            history,
            flapping: check["state"] == "flapping",
            last_ok: check["last_ok"].as_i64().unwrap_or(0),
            occurrences: check["occurrences"].as_i64().unwrap_or(0),
            occurrences_watermark: check["occurrences_watermark"].as_i64().unwrap_or(0),
        }
    }
}

/// Merges a new check result into the state carried by `previous` (the stored event's check,
/// if any) and returns the check with history, total_state_change, state, occurrences,
/// occurrences_watermark and last_ok set, and the new state itself (what the next merge needs).
/// The fields the client sent for these are ignored.
pub fn merge_check(previous: Option<CheckState>, mut check: Value) -> (Value, CheckState) {
    let status = check["status"].as_u64().unwrap_or(0);
    let executed = check["executed"].as_i64().unwrap_or(0);

    let had_previous = previous.is_some();
    let previous = previous.unwrap_or_default();
    // The previous state is consumed: its history moves into the new one, nothing is copied.
    let mut history = previous.history;
    history.push(HistoryEntry {
        status,
        executed,
        flapping: false,
    });
    if history.len() > HISTORY_LEN {
        history.drain(..history.len() - HISTORY_LEN);
    }
    let statuses: Vec<u64> = history.iter().map(|h| h.status).collect();
    let tsc = total_state_change(&statuses);

    let low = check["low_flap_threshold"].as_u64().unwrap_or(0) as u32;
    let high = check["high_flap_threshold"].as_u64().unwrap_or(0) as u32;
    let was_flapping = had_previous && previous.flapping;
    let flapping = low > 0 && high > 0 && if was_flapping { tsc > low } else { tsc >= high };

    let mut last_ok = previous.last_ok;
    let state = if flapping {
        "flapping"
    } else if status == 0 {
        "passing"
    } else {
        "failing"
    };
    if status == 0 {
        last_ok = executed;
    }

    let (occurrences, watermark) = if had_previous {
        let prev_status = statuses.len().checked_sub(2).map(|i| statuses[i]);
        let occurrences = if prev_status == Some(status) {
            previous.occurrences + 1
        } else {
            1
        };
        let watermark = if status != 0 && prev_status == Some(0) {
            1
        } else if occurrences <= previous.occurrences_watermark {
            previous.occurrences_watermark
        } else {
            previous.occurrences_watermark + 1
        };
        (occurrences, watermark)
    } else {
        (1, 1)
    };

    // Kensa records whether each result was flapping (Sensu's field exists but is never set),
    // so filters can tell a flap's start and end (`is_flapping_start`/`_end`).
    if let Some(last) = history.last_mut() {
        last.flapping = flapping;
    }
    let history_value = history
        .iter()
        .map(|entry| {
            let mut object = serde_json::Map::new();
            object.insert("status".into(), json!(entry.status));
            object.insert("executed".into(), json!(entry.executed));
            if entry.flapping {
                object.insert("flapping".into(), json!(true));
            }
            Value::Object(object)
        })
        .collect();
    let object = check.as_object_mut().expect("a check is an object");
    object.insert("history".into(), Value::Array(history_value));
    object.insert("total_state_change".into(), json!(tsc));
    object.insert("state".into(), json!(state));
    object.insert("last_ok".into(), json!(last_ok));
    object.insert("occurrences".into(), json!(occurrences));
    object.insert("occurrences_watermark".into(), json!(watermark));
    let state = CheckState {
        history,
        flapping,
        last_ok,
        occurrences,
        occurrences_watermark: watermark,
    };
    (check, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(statuses: &[u64], low: u64, high: u64) -> Vec<Value> {
        let mut previous: Option<CheckState> = None;
        let mut out = Vec::new();
        for (i, status) in statuses.iter().enumerate() {
            let check = json!({"status": status, "executed": 1000 + i as i64, "low_flap_threshold": low, "high_flap_threshold": high});
            let (merged, state) = merge_check(previous.take(), check);
            // What a backend reads back from a stored event is what it kept in memory.
            assert_eq!(CheckState::of(&merged), state, "after result {i}");
            previous = Some(state);
            out.push(merged);
        }
        out
    }

    #[test]
    fn total_state_change_matches_sensu_on_full_history() {
        let alternating: Vec<u64> = (0..21).map(|i| i % 2).collect();
        // Every transition changes: (80 + 82 + … + 118) / 20 = 99.
        assert_eq!(total_state_change(&alternating), 99);
        assert_eq!(total_state_change(&[0; 21]), 0);
        // One change at the newest transition: 118 / 20 = 5.
        let mut one = vec![0; 20];
        one.push(2);
        assert_eq!(total_state_change(&one), 5);
        // Short histories weigh their transitions as the newest ones.
        assert_eq!(total_state_change(&[0, 2]), 118);
        assert_eq!(total_state_change(&[0]), 0);
    }

    #[test]
    fn occurrences_watermark_and_last_ok() {
        let events = run(&[0, 0, 2, 2, 2, 0, 1], 0, 0);
        let occ: Vec<i64> = events
            .iter()
            .map(|e| e["occurrences"].as_i64().unwrap())
            .collect();
        assert_eq!(occ, vec![1, 2, 1, 2, 3, 1, 1]);
        let wm: Vec<i64> = events
            .iter()
            .map(|e| e["occurrences_watermark"].as_i64().unwrap())
            .collect();
        assert_eq!(wm, vec![1, 2, 1, 2, 3, 3, 1]);
        assert_eq!(events[4]["last_ok"], 1001);
        assert_eq!(events[5]["last_ok"], 1005);
        assert_eq!(events[4]["state"], "failing");
        assert_eq!(events[5]["state"], "passing");
    }

    #[test]
    fn flapping_starts_at_high_and_ends_below_low() {
        // Alternate until flapping, then stay stable until it ends.
        let mut statuses: Vec<u64> = (0..10).map(|i| (i % 2) * 2).collect();
        statuses.extend(std::iter::repeat_n(0, 21));
        let events = run(&statuses, 20, 40);
        let states: Vec<&str> = events
            .iter()
            .map(|e| e["state"].as_str().unwrap())
            .collect();
        let start = states
            .iter()
            .position(|s| *s == "flapping")
            .expect("flapping starts");
        assert!(events[start]["total_state_change"].as_u64().unwrap() >= 40);
        let end = start
            + states[start..]
                .iter()
                .position(|s| *s != "flapping")
                .expect("flapping ends");
        // Hysteresis: while flapping, it stays flapping as long as TSC > low (20), even below high.
        for e in &events[start..end] {
            assert!(e["total_state_change"].as_u64().unwrap() > 20);
        }
        assert!(events[end]["total_state_change"].as_u64().unwrap() <= 20);
        assert!(
            events[start..end]
                .iter()
                .any(|e| e["total_state_change"].as_u64().unwrap() < 40),
            "hysteresis kept it flapping below high"
        );
        assert_eq!(
            events.last().unwrap()["history"].as_array().unwrap().len(),
            HISTORY_LEN
        );
    }
}
