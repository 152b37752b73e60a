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

/// Merges a new check result into the state carried by `previous` (the stored event's check,
/// if any) and returns the check with history, total_state_change, state, occurrences,
/// occurrences_watermark and last_ok set. The fields the client sent for these are ignored.
pub fn merge_check(mut previous: Option<Value>, mut check: Value) -> Value {
    let status = check["status"].as_u64().unwrap_or(0);
    let executed = check["executed"].as_i64().unwrap_or(0);

    // The previous state is consumed: its history moves into the new one, nothing is copied.
    let mut history: Vec<Value> = match previous
        .as_mut()
        .and_then(|p| p.get_mut("history"))
        .map(Value::take)
    {
        Some(Value::Array(history)) => history,
        _ => Vec::new(),
    };
    let previous = previous.as_ref();
    history.push(json!({"status": status, "executed": executed}));
    if history.len() > HISTORY_LEN {
        history.drain(..history.len() - HISTORY_LEN);
    }
    let statuses: Vec<u64> = history
        .iter()
        .map(|h| h["status"].as_u64().unwrap_or(0))
        .collect();
    let tsc = total_state_change(&statuses);

    let low = check["low_flap_threshold"].as_u64().unwrap_or(0) as u32;
    let high = check["high_flap_threshold"].as_u64().unwrap_or(0) as u32;
    let was_flapping = previous.is_some_and(|p| p["state"] == "flapping");
    let flapping = low > 0 && high > 0 && if was_flapping { tsc > low } else { tsc >= high };

    let mut last_ok = previous.and_then(|p| p["last_ok"].as_i64()).unwrap_or(0);
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

    let (occurrences, watermark) = match previous {
        None => (1, 1),
        Some(previous) => {
            let prev_occurrences = previous["occurrences"].as_i64().unwrap_or(0);
            let prev_watermark = previous["occurrences_watermark"].as_i64().unwrap_or(0);
            let prev_status = statuses.len().checked_sub(2).map(|i| statuses[i]);
            let occurrences = if prev_status == Some(status) {
                prev_occurrences + 1
            } else {
                1
            };
            let watermark = if status != 0 && prev_status == Some(0) {
                1
            } else if occurrences <= prev_watermark {
                prev_watermark
            } else {
                prev_watermark + 1
            };
            (occurrences, watermark)
        }
    };

    // Kensa records whether each result was flapping (Sensu's field exists but is never set),
    // so filters can tell a flap's start and end (`is_flapping_start`/`_end`).
    if flapping {
        if let Some(last) = history.last_mut() {
            last["flapping"] = json!(true);
        }
    }
    let object = check.as_object_mut().expect("a check is an object");
    object.insert("history".into(), Value::Array(history));
    object.insert("total_state_change".into(), json!(tsc));
    object.insert("state".into(), json!(state));
    object.insert("last_ok".into(), json!(last_ok));
    object.insert("occurrences".into(), json!(occurrences));
    object.insert("occurrences_watermark".into(), json!(watermark));
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(statuses: &[u64], low: u64, high: u64) -> Vec<Value> {
        let mut previous: Option<Value> = None;
        let mut out = Vec::new();
        for (i, status) in statuses.iter().enumerate() {
            let check = json!({"status": status, "executed": 1000 + i as i64, "low_flap_threshold": low, "high_flap_threshold": high});
            let merged = merge_check(previous.clone(), check);
            previous = Some(merged.clone());
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
