//! One module per core/v2 kind. Each kind is a struct whose serde shape is Sensu's JSON shape
//! (field names, field order, which fields are always present, which are omitted when empty),
//! and implements [`Resource`]: defaults, validation with Sensu's messages, and its
//! field-selector field set. `common` holds the small types several kinds share; the serde
//! helpers at the bottom of this file encode Go's `encoding/json` conventions.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::ResourceError;

pub mod apikey;
pub mod asset;
pub mod check;
pub mod common;
pub mod entity;
pub mod event;
pub mod filter;
pub mod handler;
pub mod hook;
pub mod metrics;
pub mod mutator;
pub mod namespace;
pub mod pipeline;
pub mod rbac;
pub mod silenced;
pub mod time_window;
pub mod user;

/// What every kind provides to [`crate::Kind`]'s dispatch.
pub trait Resource: Serialize + DeserializeOwned {
    /// Fills values Sensu derives on write (a Silenced's name from subscription and check, a
    /// RoleBinding's title-cased role_ref type…). Time-dependent defaults are the caller's.
    fn apply_defaults(&mut self) {}

    /// Checks the kind's rules in Sensu's order, with Sensu's messages.
    fn validate(&self) -> Result<(), ResourceError>;

    /// The field-selector field set (reference §2.18), including `<prefix>.labels.<key>`.
    fn fields(&self) -> Vec<(String, String)>;
}

/// Decodes `value` as `R`, reporting the JSON path of the first offending value.
///
/// Like Go's `encoding/json`, an explicit `null` member means the same as an absent one, so
/// `"cron": null` or `"proxy_requests": null` decode to the zero value.
pub fn decode<R: DeserializeOwned>(mut value: Value) -> Result<R, ResourceError> {
    strip_null_members(&mut value);
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." {
            "(body)".to_owned()
        } else {
            path
        };
        ResourceError::Decode {
            path,
            message: err.into_inner().to_string(),
        }
    })
}

/// Removes `null` members from every object in `value`, recursively.
fn strip_null_members(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, member| !member.is_null());
            map.values_mut().for_each(strip_null_members);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null_members),
        _ => {}
    }
}

/// For fields that Sensu serializes as `null` when empty but that Kensa holds as plain
/// collections: accepts `null` and a missing field alike.
pub fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Adds `<prefix>.labels.<key>` entries for every label.
pub fn label_fields(prefix: &str, meta: &crate::ObjectMeta, out: &mut Vec<(String, String)>) {
    for (key, value) in &meta.labels {
        out.push((format!("{prefix}.labels.{key}"), value.clone()));
    }
}

/// A field-set entry: `("check.name", "cpu")`.
pub(crate) fn field(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_owned(), value.into())
}

/// A field-set value for a list: entries joined with `,`, as Sensu does.
pub(crate) fn joined(items: &[String]) -> String {
    items.join(",")
}

/// A collection Go serializes as `null` when it is nil (Kensa: when it is empty).
pub trait Collection {
    fn is_empty_collection(&self) -> bool;
}

impl<T> Collection for Vec<T> {
    fn is_empty_collection(&self) -> bool {
        self.is_empty()
    }
}

impl<K, V> Collection for BTreeMap<K, V> {
    fn is_empty_collection(&self) -> bool {
        self.is_empty()
    }
}

/// `#[serde(with = "nullable")]`: a collection written as `null` when empty (Go's nil slice or
/// map without `omitempty`) and read from `null`, a missing field, or a value.
///
/// Kensa does not keep Go's distinction between a nil and an empty slice: an explicit `[]` in
/// the input also comes back as `null`, which is what Sensu emits for the common case of an
/// omitted field.
pub mod nullable {
    use super::*;

    pub fn serialize<S, C>(value: &C, serializer: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        C: Serialize + Collection,
    {
        if value.is_empty_collection() {
            serializer.serialize_none()
        } else {
            value.serialize(serializer)
        }
    }

    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Default + Deserialize<'de>,
    {
        null_default(deserializer)
    }
}

/// `#[serde(serialize_with = "go_float")]`: writes an `f64` the way Go's `encoding/json` does
/// for the common cases, i.e. integral values without a fractional part (`42`, not `42.0`).
pub fn go_float<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.is_finite() && value.fract() == 0.0 && value.abs() < EXACT_INTEGER_LIMIT {
        // Lossless: the value is an integer of at most 53 bits.
        serializer.serialize_i64(*value as i64)
    } else {
        serializer.serialize_f64(*value)
    }
}

/// `skip_serializing_if` helpers for Go's `omitempty` on numbers and booleans.
pub(crate) fn is_zero_i64(value: &i64) -> bool {
    *value == 0
}

pub(crate) fn is_zero_i32(value: &i32) -> bool {
    *value == 0
}

pub(crate) fn is_zero_f64(value: &f64) -> bool {
    *value == 0.0
}

pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_members_decode_as_absent() {
        let mut value = json!({"a": null, "b": {"c": null, "d": 1}, "e": [{"f": null}]});
        strip_null_members(&mut value);
        assert_eq!(value, json!({"b": {"d": 1}, "e": [{}]}));
    }

    #[test]
    fn floats_are_written_like_go() {
        let write = |v: f64| {
            let mut out = Vec::new();
            go_float(&v, &mut serde_json::Serializer::new(&mut out)).expect("writes");
            String::from_utf8(out).expect("utf-8")
        };
        assert_eq!(write(42.0), "42");
        assert_eq!(write(-3.0), "-3");
        assert_eq!(write(0.25), "0.25");
        assert_eq!(write(1.5e300), "1.5e+300");
    }
}
