//! Parsing only the parts of a stored document that the dashboard index summarizes.
//!
//! The index follows every event write, and building the whole event as a `serde_json::Value`
//! (entity system facts, check command, hooks, …) was most of what that cost. [`parse`] builds
//! the same `Value` as `serde_json::from_str` except that objects described by a [`Keep`] list
//! only the listed keys; everything else is still read (the text must be valid JSON) but never
//! built. Whatever is kept is exactly what the full parse holds there — a kept key whose value
//! is not an object, a repeated key (the last one wins) — so a summary computed from the pruned
//! value equals one computed from the full value as long as it reads only kept keys.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Which keys of an object to build.
pub(crate) enum Keep {
    /// The whole value.
    All,
    /// Only these keys, each pruned by its own rule; other keys are skipped.
    Keys(&'static [(&'static str, Keep)]),
}

/// `text` parsed as JSON, objects pruned by `keep`.
pub(crate) fn parse(text: &str, keep: &'static Keep) -> serde_json::Result<Value> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Pruned(keep).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

struct Pruned(&'static Keep);

impl<'de> DeserializeSeed<'de> for Pruned {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self.0 {
            Keep::All => Value::deserialize(deserializer),
            Keep::Keys(keys) => deserializer.deserialize_any(PrunedVisitor(keys)),
        }
    }
}

/// Builds what `Value`'s own visitor builds, except for the keys of an object.
struct PrunedVisitor(&'static [(&'static str, Keep)]);

impl<'de> Visitor<'de> for PrunedVisitor {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        // Like serde_json: a non-finite float is null.
        Ok(Value::from(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        // An array where an object was expected: built whole, as a full parse would.
        Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match self.0.iter().find(|(name, _)| *name == key) {
                Some((_, keep)) => {
                    let value = map.next_value_seed(Pruned(keep))?;
                    object.insert(key, value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static KEEP: Keep = Keep::Keys(&[("a", Keep::All), ("b", Keep::Keys(&[("c", Keep::All)]))]);

    #[test]
    fn builds_only_the_kept_keys() {
        let cases = [
            (
                r#"{"a": {"x": [1, 2.5, "s", null, true]}, "b": {"c": 1, "d": 2}, "z": {"deep": [{}]}}"#,
                r#"{"a":{"x":[1,2.5,"s",null,true]},"b":{"c":1}}"#,
            ),
            // A kept key that is not an object, or absent, is what a full parse holds.
            (
                r#"{"b": [1, {"d": 2}], "a": -3}"#,
                r#"{"b":[1,{"d":2}],"a":-3}"#,
            ),
            (r#"{"b": "text"}"#, r#"{"b":"text"}"#),
            (r#"{}"#, r#"{}"#),
            // Not an object at all.
            (r#"[{"z": 1}]"#, r#"[{"z":1}]"#),
            (r#"18446744073709551615"#, r#"18446744073709551615"#),
            // A repeated key: the last one wins, in the first one's place.
            (r#"{"a": 1, "b": {}, "a": 2}"#, r#"{"a":2,"b":{}}"#),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text, &KEEP).unwrap().to_string(), expected, "{text}");
        }
    }

    #[test]
    fn invalid_json_is_an_error_even_where_skipped() {
        for text in [r#"{"z": [1,}"#, r#"{"a": 1} trailing"#, r#"{"z": tru}"#, ""] {
            assert!(parse(text, &KEEP).is_err(), "{text}");
        }
    }
}
