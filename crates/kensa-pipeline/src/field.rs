//! Reading one field of a serializable value (the event) without serializing the rest: a
//! serde `Serializer` that follows a path of object keys through structs and maps and turns
//! only the leaf into JSON. For a filter like `event.check.status >= 0` this replaces building
//! the whole event as a `serde_json::Value`, which cost more than deciding the filter.
//!
//! What it returns is exactly what `serde_json::to_value` would hold at that path: structs and
//! maps are objects keyed by their field names or string keys (the last of repeated map keys
//! wins, as in `serde_json::Map`), `Option`s and newtypes are transparent, and the leaf is
//! serialized by `serde_json`'s own value serializer. Everything else (sequences on the way,
//! enum variants, non-string keys, a leaf that is not a string, number or boolean) answers
//! [`Field::Unknown`], and the caller builds the whole value instead.

use std::fmt;

use serde::ser::{self, Impossible, Serialize, Serializer};
use serde_json::Value;

/// What a path leads to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Field {
    /// A string, number or boolean.
    Leaf(Value),
    /// The last key is missing from an object (everything before it exists).
    Absent,
    /// Anything else: ask the whole value.
    Unknown,
}

/// The field of `value` at `path` (object keys, outermost first).
pub(crate) fn field<T: Serialize + ?Sized>(value: &T, path: &[String]) -> Field {
    value.serialize(Follow { path }).unwrap_or(Field::Unknown)
}

/// Raised to stop at something this module does not follow.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not followed")
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Stop {
        Stop
    }
}

/// Follows `path` into the value being serialized; at the end of the path, the leaf.
struct Follow<'p> {
    path: &'p [String],
}

impl Follow<'_> {
    /// A primitive at the end of the path, serialized by serde_json; anywhere else on the way
    /// it is not an object, so the path cannot be followed.
    fn leaf(
        self,
        serialize: impl FnOnce(serde_json::value::Serializer) -> Result<Value, serde_json::Error>,
    ) -> Result<Field, Stop> {
        if !self.path.is_empty() {
            return Ok(Field::Unknown);
        }
        match serialize(serde_json::value::Serializer) {
            Ok(value @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => {
                Ok(Field::Leaf(value))
            }
            _ => Ok(Field::Unknown),
        }
    }
}

/// An object being walked: the field named `path[0]` is followed, the others skipped.
struct Object<'p> {
    path: &'p [String],
    found: Option<Field>,
    /// A map's pending entry matches `path[0]`.
    key_matches: bool,
}

impl<'p> Object<'p> {
    fn new(path: &'p [String]) -> Result<Object<'p>, Stop> {
        // An object at the end of the path is not a leaf.
        if path.is_empty() {
            return Err(Stop);
        }
        Ok(Object {
            path,
            found: None,
            key_matches: false,
        })
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
        // Later entries with the same key replace earlier ones, as in serde_json's Map.
        self.found = Some(value.serialize(Follow {
            path: &self.path[1..],
        })?);
        Ok(())
    }

    fn end(self) -> Result<Field, Stop> {
        Ok(match self.found {
            Some(found) => found,
            None if self.path.len() == 1 => Field::Absent,
            None => Field::Unknown,
        })
    }
}

impl ser::SerializeStruct for Object<'_> {
    type Ok = Field;
    type Error = Stop;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        if key == self.path[0] {
            self.value(value)?;
        }
        Ok(())
    }

    fn end(self) -> Result<Field, Stop> {
        Object::end(self)
    }
}

impl ser::SerializeMap for Object<'_> {
    type Ok = Field;
    type Error = Stop;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Stop> {
        // serde_json turns the key into a string; only string keys are compared here.
        self.key_matches = key.serialize(KeyIs(&self.path[0]))?;
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
        if self.key_matches {
            self.value(value)?;
        }
        Ok(())
    }

    fn end(self) -> Result<Field, Stop> {
        Object::end(self)
    }
}

macro_rules! leaf {
    ($($method:ident($type:ty)),* $(,)?) => {
        $(
            fn $method(self, value: $type) -> Result<Field, Stop> {
                self.leaf(|serializer| serializer.$method(value))
            }
        )*
    };
}

impl<'p> Serializer for Follow<'p> {
    type Ok = Field;
    type Error = Stop;
    type SerializeSeq = Impossible<Field, Stop>;
    type SerializeTuple = Impossible<Field, Stop>;
    type SerializeTupleStruct = Impossible<Field, Stop>;
    type SerializeTupleVariant = Impossible<Field, Stop>;
    type SerializeMap = Object<'p>;
    type SerializeStruct = Object<'p>;
    type SerializeStructVariant = Impossible<Field, Stop>;

    leaf!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
    );

    fn serialize_bytes(self, _: &[u8]) -> Result<Field, Stop> {
        Err(Stop)
    }
    fn serialize_none(self) -> Result<Field, Stop> {
        // null: not a leaf, and nothing to follow into.
        Ok(Field::Unknown)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Field, Stop> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Field, Stop> {
        Ok(Field::Unknown)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Field, Stop> {
        Ok(Field::Unknown)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Field, Stop> {
        self.leaf(|serializer| serializer.serialize_str(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Field, Stop> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Field, Stop> {
        Err(Stop)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Stop> {
        Err(Stop)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Stop> {
        Err(Stop)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Stop> {
        Err(Stop)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Stop> {
        Err(Stop)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Object<'p>, Stop> {
        Object::new(self.path)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Object<'p>, Stop> {
        Object::new(self.path)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Stop> {
        Err(Stop)
    }
}

/// Whether a map key is the string `.0`; any other kind of key stops the walk.
struct KeyIs<'a>(&'a str);

impl Serializer for KeyIs<'_> {
    type Ok = bool;
    type Error = Stop;
    type SerializeSeq = Impossible<bool, Stop>;
    type SerializeTuple = Impossible<bool, Stop>;
    type SerializeTupleStruct = Impossible<bool, Stop>;
    type SerializeTupleVariant = Impossible<bool, Stop>;
    type SerializeMap = Impossible<bool, Stop>;
    type SerializeStruct = Impossible<bool, Stop>;
    type SerializeStructVariant = Impossible<bool, Stop>;

    fn serialize_str(self, key: &str) -> Result<bool, Stop> {
        Ok(key == self.0)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<bool, Stop> {
        value.serialize(self)
    }
    fn serialize_bool(self, _: bool) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_i8(self, _: i8) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_i16(self, _: i16) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_i32(self, _: i32) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_i64(self, _: i64) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_u8(self, _: u8) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_u16(self, _: u16) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_u32(self, _: u32) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_u64(self, _: u64) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_f32(self, _: f32) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_f64(self, _: f64) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_char(self, _: char) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_none(self) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_unit(self) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<bool, Stop> {
        Err(Stop)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Stop> {
        Err(Stop)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Stop> {
        Err(Stop)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Stop> {
        Err(Stop)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Stop> {
        Err(Stop)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Stop> {
        Err(Stop)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Stop> {
        Err(Stop)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Stop> {
        Err(Stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Every path of `value` (and some that are not there) read through `field` agrees with
    /// `serde_json::to_value`.
    fn agrees_with_to_value<T: Serialize>(value: &T, extra: &[&[&str]]) {
        let whole = serde_json::to_value(value).unwrap();
        fn paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            out.push(prefix.clone());
            if let Value::Object(map) = value {
                for (key, child) in map {
                    prefix.push(key.clone());
                    paths(child, prefix, out);
                    prefix.pop();
                }
            }
        }
        let mut all = Vec::new();
        paths(&whole, &mut Vec::new(), &mut all);
        all.extend(
            extra
                .iter()
                .map(|path| path.iter().map(|name| (*name).to_owned()).collect()),
        );
        for path in all {
            let parent = path[..path.len().saturating_sub(1)]
                .iter()
                .try_fold(&whole, |value, name| value.as_object()?.get(name));
            let expected = path
                .iter()
                .try_fold(&whole, |value, name| value.as_object()?.get(name));
            match field(value, &path) {
                Field::Leaf(leaf) => assert_eq!(Some(&leaf), expected, "{path:?}"),
                Field::Absent => {
                    assert!(!path.is_empty());
                    assert!(parent.is_some_and(Value::is_object), "{path:?}");
                    assert_eq!(expected, None, "{path:?}");
                }
                Field::Unknown => assert!(
                    !matches!(
                        expected,
                        Some(Value::Bool(_) | Value::Number(_) | Value::String(_))
                    ),
                    "{path:?} is a leaf that was not read"
                ),
            }
        }
    }

    #[test]
    fn reads_what_to_value_holds() {
        let value = json!({
            "a": {"b": 1, "c": "x", "d": null, "e": [1, {"f": 2}], "g": 1.5, "h": true},
            "empty": {},
            "big": u64::MAX,
            "negative": -3,
        });
        agrees_with_to_value(
            &value,
            &[&["a", "missing"], &["missing", "b"], &["a", "e", "f"]],
        );
    }

    #[test]
    fn reads_typed_events() {
        let event: kensa_types::resources::event::Event = serde_json::from_value(json!({
            "timestamp": 1700000000,
            "entity": {
                "entity_class": "agent",
                "metadata": {"name": "web1", "namespace": "default", "labels": {"a": "b"}},
                "subscriptions": ["linux"],
                "system": {"hostname": "web1", "network": {"interfaces": []}},
            },
            "check": {
                "metadata": {"name": "disk", "namespace": "default"},
                "status": 2,
                "interval": 60,
                "output": "out",
                "handlers": ["sink"],
                "history": [{"status": 2, "executed": 1}],
                "ttl": 0,
            },
            "metadata": {"namespace": "default"},
        }))
        .unwrap();
        agrees_with_to_value(
            &event,
            &[
                &["check", "name"],
                &["check", "metadata", "missing"],
                &["entity", "system", "missing"],
                &["metrics", "points"],
            ],
        );
        assert_eq!(
            field(&event, &["check".into(), "status".into()]),
            Field::Leaf(json!(2))
        );
        assert_eq!(
            field(&event, &["check".into(), "name".into()]),
            Field::Absent
        );
    }

    #[test]
    fn repeated_map_keys_keep_the_last_value() {
        struct Twice;
        impl Serialize for Twice {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("k", &1)?;
                map.serialize_entry("k", &2)?;
                map.end()
            }
        }
        assert_eq!(serde_json::to_value(&Twice).unwrap(), json!({"k": 2}));
        assert_eq!(field(&Twice, &["k".into()]), Field::Leaf(json!(2)));
    }
}
