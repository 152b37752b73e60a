//! The wrapped envelope `{type, api_version, metadata, spec}` used by files, `kensactl dump`
//! and `--format yaml|wrapped-json`, and its conversion to and from the unwrapped API form,
//! following Sensu's metadata-merging rules (reference §1.1).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Kind, ResourceError, CORE_V2};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wrapped {
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
}

impl Wrapped {
    /// Wraps an unwrapped value of `kind`: `metadata` moves from the body to the envelope.
    /// A Namespace keeps its name in `spec.name` with empty metadata, as Sensu does.
    pub fn wrap(kind: Kind, value: &Value) -> Wrapped {
        let mut spec = value.as_object().cloned().unwrap_or_default();
        let metadata = match kind {
            Kind::Namespace => Map::new(),
            _ => match spec.remove("metadata") {
                Some(Value::Object(meta)) => meta,
                _ => Map::new(),
            },
        };
        Wrapped {
            type_name: kind.type_name().to_owned(),
            api_version: CORE_V2.to_owned(),
            metadata,
            spec: Some(Value::Object(spec)),
        }
    }

    /// The kind named by `type`, checking `api_version` (empty means `core/v2`).
    pub fn kind(&self) -> Result<Kind, ResourceError> {
        if !self.api_version.is_empty() && self.api_version != CORE_V2 {
            return Err(ResourceError::invalid_field(
                "api_version",
                format!(
                    "api version {:?} is not supported (only core/v2)",
                    self.api_version
                ),
            ));
        }
        if self.type_name.is_empty() {
            return Err(ResourceError::invalid_field("type", "type must be set"));
        }
        Kind::from_type_name(&self.type_name).ok_or_else(|| {
            ResourceError::invalid_field(
                "type",
                format!("type could not be found: {:?}", self.type_name),
            )
        })
    }

    /// Unwraps into `(kind, body)`. The outer metadata is merged into the spec's: non-empty
    /// `name`, `namespace`, `created_by` overwrite, `labels`/`annotations` keys are added.
    pub fn unwrap(self) -> Result<(Kind, Value), ResourceError> {
        let kind = self.kind()?;
        let spec = match self.spec {
            Some(Value::Object(spec)) => spec,
            Some(Value::Null) | None => {
                return Err(ResourceError::invalid_field("spec", "no spec provided"))
            }
            Some(_) => {
                return Err(ResourceError::invalid_field(
                    "spec",
                    "spec must be an object",
                ))
            }
        };
        let mut body = spec;
        if kind == Kind::Namespace {
            return Ok((kind, Value::Object(body)));
        }
        let mut meta = match body.remove("metadata") {
            Some(Value::Object(meta)) => meta,
            Some(Value::Null) | None => Map::new(),
            Some(_) => {
                return Err(ResourceError::invalid_field(
                    "spec.metadata",
                    "metadata must be an object",
                ))
            }
        };
        for (key, outer) in self.metadata {
            match (key.as_str(), outer) {
                ("labels" | "annotations", Value::Object(outer_map)) => {
                    let inner = meta
                        .entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !inner.is_object() {
                        *inner = Value::Object(Map::new());
                    }
                    let inner = inner.as_object_mut().expect("made an object above");
                    inner.extend(outer_map);
                }
                (_, Value::String(s)) if s.is_empty() => {}
                (_, Value::Null) => {}
                (_, outer) => {
                    meta.insert(key, outer);
                }
            }
        }
        if kind == Kind::User {
            // Sensu's User has no metadata of its own: the envelope's name is the username.
            if let Some(Value::String(name)) = meta.get("name") {
                body.entry("username")
                    .or_insert_with(|| Value::String(name.clone()));
            }
            return Ok((kind, Value::Object(body)));
        }
        body.insert("metadata".to_owned(), Value::Object(meta));
        Ok((kind, Value::Object(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outer_metadata_wins_and_labels_merge() {
        let wrapped: Wrapped = serde_json::from_value(json!({
            "type": "CheckConfig",
            "metadata": {"name": "outer", "namespace": "prod", "labels": {"a": "outer"}},
            "spec": {"command": "true", "metadata": {"name": "inner", "labels": {"a": "inner", "b": "inner"}}}
        }))
        .unwrap();
        let (kind, body) = wrapped.unwrap().unwrap();
        assert_eq!(kind, Kind::CheckConfig);
        assert_eq!(body["metadata"]["name"], "outer");
        assert_eq!(body["metadata"]["namespace"], "prod");
        assert_eq!(
            body["metadata"]["labels"],
            json!({"a": "outer", "b": "inner"})
        );
    }

    #[test]
    fn missing_spec_and_unknown_type_are_named() {
        let no_spec: Wrapped =
            serde_json::from_value(json!({"type": "Handler", "metadata": {}})).unwrap();
        assert_eq!(
            no_spec.unwrap().unwrap_err().to_string(),
            "spec: no spec provided"
        );
        let unknown: Wrapped =
            serde_json::from_value(json!({"type": "Gizmo", "spec": {}})).unwrap();
        assert!(unknown
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("type could not be found"));
    }

    #[test]
    fn namespace_wraps_with_empty_metadata() {
        let wrapped = Wrapped::wrap(Kind::Namespace, &json!({"name": "prod"}));
        assert!(wrapped.metadata.is_empty());
        assert_eq!(wrapped.spec, Some(json!({"name": "prod"})));
    }
}
