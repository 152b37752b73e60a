//! The "synthesized" views of events and entities that filter expressions and token templates
//! see: every object carrying Sensu `metadata` also gets its `name`, `namespace`, `labels` and
//! `annotations` at the top level (Sensu's `dynamic.Synthesize`), labels and annotations are
//! never null, and events gain the derived booleans of [`EventFacts`].
//!
//! Everything here is a pure function of its input. The `metadata` object itself is kept, so
//! both `event.check.name` (Sensu filter style) and `event.check.metadata.name` (JSON style) work.
//! Redaction is not applied here: callers pass the entity as the API would show it.

use serde_json::{Map, Value};

/// The derived booleans Sensu exposes on the filter `event` object (and uses for the built-in
/// `is_incident`, `not_silenced` and `has_metrics` filters).
///
/// Flapping start/end need the previous flapping state. Sensu reads it from a per-history-entry
/// `flapping` bit that it never actually sets, so in Sensu `is_flapping_start` is true for every
/// flapping event and `is_flapping_end` is never true. Kensa reads the same bit from
/// `check.history[len-2].flapping` when present (a Kensa extension of the history entry); when
/// the bit is absent the result degrades to exactly Sensu's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventFacts {
    /// The event has a `check` object.
    pub has_check: bool,
    /// The event has a `metrics` object.
    pub has_metrics: bool,
    /// `check.status != 0`.
    pub is_incident: bool,
    /// The previous history status was non-zero and the current status is 0.
    pub is_resolution: bool,
    /// `check.is_silenced` is true or `check.silenced` is non-empty.
    pub is_silenced: bool,
    /// The check state is `flapping` and the previous history entry was not flagged flapping.
    pub is_flapping_start: bool,
    /// The check state is not `flapping` and the previous history entry was flagged flapping.
    pub is_flapping_end: bool,
}

impl EventFacts {
    /// Computes the facts of an unwrapped Sensu event (`{entity, check, metrics, metadata, ...}`).
    pub fn of(event: &Value) -> EventFacts {
        let has_metrics = event.get("metrics").is_some_and(Value::is_object);
        let Some(check) = event.get("check").filter(|check| check.is_object()) else {
            return EventFacts {
                has_metrics,
                ..EventFacts::default()
            };
        };
        let status = status_of(check);
        let history = check
            .get("history")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // The current result is the last history entry; the one before it is the previous state.
        let previous = history.len().checked_sub(2).map(|index| &history[index]);
        let previous_status = previous.map(status_of);
        let previous_flapping = previous
            .and_then(|entry| entry.get("flapping"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let flapping = check.get("state").and_then(Value::as_str) == Some("flapping");
        let silenced = check.get("is_silenced").and_then(Value::as_bool) == Some(true)
            || check
                .get("silenced")
                .and_then(Value::as_array)
                .is_some_and(|names| !names.is_empty());
        EventFacts {
            has_check: true,
            has_metrics,
            is_incident: status != 0,
            is_resolution: status == 0 && previous_status.is_some_and(|previous| previous != 0),
            is_silenced: silenced,
            is_flapping_start: previous.is_some() && flapping && !previous_flapping,
            is_flapping_end: previous.is_some() && !flapping && previous_flapping,
        }
    }

    fn insert_into(self, event: &mut Map<String, Value>) {
        let facts = [
            ("has_check", self.has_check),
            ("has_metrics", self.has_metrics),
            ("is_incident", self.is_incident),
            ("is_resolution", self.is_resolution),
            ("is_silenced", self.is_silenced),
            ("is_flapping_start", self.is_flapping_start),
            ("is_flapping_end", self.is_flapping_end),
        ];
        for (name, fact) in facts {
            event.insert(name.to_owned(), Value::Bool(fact));
        }
    }
}

/// A check status or history entry status as an integer (0 when absent or not a number).
fn status_of(value: &Value) -> i64 {
    let status = value.get("status");
    status
        .and_then(Value::as_i64)
        .or_else(|| status.and_then(Value::as_f64).map(|status| status as i64))
        .unwrap_or(0)
}

/// The entity with metadata flattened: `.name`, `.namespace`, `.labels` and `.annotations`
/// (always objects) at the top level. Used as token-substitution data and as the JavaScript
/// `entity` of proxy-request and asset-filter expressions.
pub fn synthesize_entity(entity: &Value) -> Value {
    let mut entity = entity.clone();
    flatten_metadata(&mut entity);
    if let Value::Object(map) = &mut entity {
        ensure_label_maps(map);
    }
    entity
}

/// The event as filter expressions see it: metadata flattened into every object, labels and
/// annotations never null on the event, its check and its entity, `event.namespace` filled from
/// the entity when the event has no metadata, and the [`EventFacts`] booleans added.
pub fn synthesize_event(event: &Value) -> Value {
    let facts = EventFacts::of(event);
    let mut event = event.clone();
    flatten_metadata(&mut event);
    let Value::Object(map) = &mut event else {
        return event;
    };
    for part in ["check", "entity"] {
        if let Some(Value::Object(part)) = map.get_mut(part) {
            ensure_label_maps(part);
        }
    }
    ensure_label_maps(map);
    if !map.get("namespace").is_some_and(Value::is_string) {
        let namespace = map
            .get("entity")
            .and_then(|entity| entity.get("namespace"))
            .cloned()
            .unwrap_or_else(|| Value::String(String::new()));
        map.insert("namespace".to_owned(), namespace);
    }
    facts.insert_into(map);
    event
}

/// Copies the keys of every nested `metadata` object into the object that holds it, without
/// overwriting keys the object already has, and turns null labels/annotations into `{}`.
fn flatten_metadata(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.values_mut().for_each(flatten_metadata);
            let Some(Value::Object(metadata)) = map.get_mut("metadata") else {
                return;
            };
            ensure_label_maps(metadata);
            let metadata = metadata.clone();
            for (key, value) in metadata {
                map.entry(key).or_insert(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(flatten_metadata),
        _ => {}
    }
}

/// Makes `labels` and `annotations` objects (empty when absent or null).
fn ensure_label_maps(map: &mut Map<String, Value>) {
    for key in ["labels", "annotations"] {
        let entry = map
            .entry(key.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if entry.is_null() {
            *entry = Value::Object(Map::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entity_metadata_is_flattened_and_label_maps_exist() {
        let entity = json!({
            "entity_class": "proxy",
            "metadata": {"name": "web1", "namespace": "default", "labels": null}
        });
        let synthesized = synthesize_entity(&entity);
        assert_eq!(synthesized["name"], "web1");
        assert_eq!(synthesized["namespace"], "default");
        assert_eq!(synthesized["labels"], json!({}));
        assert_eq!(synthesized["annotations"], json!({}));
        assert_eq!(synthesized["metadata"]["labels"], json!({}));
    }

    #[test]
    fn event_namespace_falls_back_to_the_entity() {
        let event = json!({
            "entity": {"metadata": {"name": "web1", "namespace": "prod"}},
            "check": {"metadata": {"name": "ping"}, "status": 0}
        });
        let synthesized = synthesize_event(&event);
        assert_eq!(synthesized["namespace"], "prod");
        assert_eq!(synthesized["check"]["name"], "ping");
        assert_eq!(synthesized["check"]["labels"], json!({}));
        assert_eq!(synthesized["has_check"], true);
        assert_eq!(synthesized["has_metrics"], false);
    }

    #[test]
    fn flapping_transitions_use_the_previous_history_flag() {
        let event = |state: &str, previous_flapping: Option<bool>| {
            let mut previous = json!({"status": 1, "executed": 1});
            if let Some(flag) = previous_flapping {
                previous["flapping"] = json!(flag);
            }
            json!({"check": {"status": 1, "state": state,
                             "history": [previous, {"status": 1, "executed": 2}]}})
        };
        let facts = EventFacts::of(&event("flapping", None));
        assert!(facts.is_flapping_start && !facts.is_flapping_end);
        let facts = EventFacts::of(&event("flapping", Some(true)));
        assert!(!facts.is_flapping_start && !facts.is_flapping_end);
        let facts = EventFacts::of(&event("failing", Some(true)));
        assert!(!facts.is_flapping_start && facts.is_flapping_end);
    }
}
