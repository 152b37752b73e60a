//! Entities (`type: Entity`): agents, proxy entities (websites, switches), the backend itself.
//! Besides the shape and rules, this module owns label/annotation *redaction*: Sensu writes
//! `REDACTED` for every label or annotation whose key is in the entity's `redact` list (or the
//! default list) whenever it outputs an entity as JSON.
//!
//! Kensa keeps the real values in the store (`Kind::normalize` does not redact) and redacts at
//! the edges that show entities to users or handlers: call [`Entity::redacted`] on a struct or
//! [`redact_entity_json`] / `Kind::redact` on JSON about to leave the backend.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{field, is_zero_i32, joined, label_fields, nullable, Resource};
use crate::meta::NAME;
use crate::{ObjectMeta, ResourceError};

/// The value Sensu puts in place of a redacted label or annotation.
pub const REDACTED: &str = "REDACTED";

/// The keys redacted when an entity's `redact` list is empty.
pub const DEFAULT_REDACT: [&str; 9] = [
    "password",
    "passwd",
    "pass",
    "api_key",
    "api_token",
    "access_key",
    "secret_key",
    "private_key",
    "secret",
];

/// The entity classes Sensu gives a meaning to; any other NameRegex-valid class is allowed.
pub const CLASS_AGENT: &str = "agent";
pub const CLASS_PROXY: &str = "proxy";
pub const CLASS_BACKEND: &str = "backend";

/// `type: Entity` (reference §2.3).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Entity {
    /// `agent`, `proxy`, `backend`, `service`, or a custom class.
    pub entity_class: String,
    /// Facts about the host the agent runs on.
    pub system: System,
    /// Includes `entity:<name>` in practice.
    #[serde(with = "nullable")]
    pub subscriptions: Vec<String>,
    /// Last keepalive (Unix seconds).
    pub last_seen: i64,
    /// Delete the entity when its keepalive fails.
    pub deregister: bool,
    pub deregistration: Deregistration,
    /// The RBAC user the agent authenticates as.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Label/annotation keys to redact (empty: [`DEFAULT_REDACT`]).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub redact: Vec<String>,
    pub metadata: ObjectMeta,
    pub sensu_agent_version: String,
    /// Handlers for keepalive events (empty: `keepalive`).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub keepalive_handlers: Vec<String>,
}

/// `entity.system`: host facts reported by the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct System {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub os: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform_family: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub platform_version: String,
    pub network: Network,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub arch: String,
    #[serde(skip_serializing_if = "is_zero_i32")]
    pub arm_version: i32,
    pub libc_type: String,
    pub vm_system: String,
    pub vm_role: String,
    pub cloud_provider: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub float_type: String,
    #[serde(with = "nullable")]
    pub processes: Vec<Process>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    #[serde(with = "nullable")]
    pub interfaces: Vec<NetworkInterface>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkInterface {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// CIDR strings (`10.0.2.15/24`).
    #[serde(with = "nullable")]
    pub addresses: Vec<String>,
}

/// A local process (process discovery).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Process {
    pub name: String,
}

/// `entity.deregistration`: the handler for the deregistration event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Deregistration {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub handler: String,
}

impl Entity {
    /// The `entity:<name>` subscription every entity answers to.
    pub fn entity_subscription(name: &str) -> String {
        format!("entity:{name}")
    }

    /// A copy whose label and annotation values are [`REDACTED`] where the key is in `redact`
    /// (or [`DEFAULT_REDACT`]), as Sensu outputs entities.
    pub fn redacted(&self) -> Entity {
        let mut copy = self.clone();
        copy.redact_in_place();
        copy
    }

    /// Redacts this entity's labels and annotations.
    pub fn redact_in_place(&mut self) {
        let redact = RedactList::new(&self.redact);
        for (key, value) in self
            .metadata
            .labels
            .iter_mut()
            .chain(self.metadata.annotations.iter_mut())
        {
            if redact.matches(key) {
                *value = REDACTED.to_owned();
            }
        }
    }
}

/// Redacts an entity held as JSON (unwrapped form) in place, with the rules of
/// [`Entity::redacted`]. Values that are not entity-shaped are left alone.
pub fn redact_entity_json(entity: &mut Value) {
    let Some(object) = entity.as_object_mut() else {
        return;
    };
    let redact: Vec<String> = match object.get("redact") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let redact = RedactList::new(&redact);
    let Some(Value::Object(metadata)) = object.get_mut("metadata") else {
        return;
    };
    for map in ["labels", "annotations"] {
        if let Some(Value::Object(entries)) = metadata.get_mut(map) {
            for (key, value) in entries.iter_mut() {
                if redact.matches(key) {
                    *value = Value::String(REDACTED.to_owned());
                }
            }
        }
    }
}

/// A redact list normalized for Sensu's comparison: case-insensitive, ignoring every character
/// that is not a letter (`API-Key` matches `api_key`).
struct RedactList {
    normalized: Vec<String>,
}

impl RedactList {
    fn new(redact: &[String]) -> Self {
        let normalized = if redact.is_empty() {
            DEFAULT_REDACT
                .iter()
                .map(|key| normalize_key(key))
                .collect()
        } else {
            redact.iter().map(|key| normalize_key(key)).collect()
        };
        RedactList { normalized }
    }

    fn matches(&self, key: &str) -> bool {
        let key = normalize_key(key);
        !key.is_empty() && self.normalized.contains(&key)
    }
}

fn normalize_key(key: &str) -> String {
    key.chars()
        .filter(char::is_ascii_alphabetic)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl Resource for Entity {
    fn validate(&self) -> Result<(), ResourceError> {
        self.metadata.validate_name_as("entity", &NAME)?;
        crate::meta::validate_named("entity_class", "entity class", &self.entity_class, &NAME)?;
        self.metadata.require_namespace()
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            field("entity.name", &self.metadata.name),
            field("entity.namespace", &self.metadata.namespace),
            field("entity.deregister", self.deregister.to_string()),
            field("entity.entity_class", &self.entity_class),
            field("entity.subscriptions", joined(&self.subscriptions)),
            field("entity.user", &self.user),
        ];
        label_fields("entity", &self.metadata, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entity(redact: &[&str]) -> Entity {
        let mut entity = Entity {
            redact: redact.iter().map(|r| (*r).to_owned()).collect(),
            ..Entity::default()
        };
        for (key, value) in [
            ("API-Key", "k1"),
            ("region", "us-west-1"),
            ("my_password", "hunter2"),
            ("Secret", "s"),
        ] {
            entity
                .metadata
                .labels
                .insert(key.to_owned(), value.to_owned());
            entity
                .metadata
                .annotations
                .insert(key.to_owned(), value.to_owned());
        }
        entity
    }

    #[test]
    fn default_list_redacts_case_and_punctuation_insensitively() {
        let redacted = entity(&[]).redacted();
        for map in [&redacted.metadata.labels, &redacted.metadata.annotations] {
            assert_eq!(map["API-Key"], REDACTED);
            assert_eq!(map["Secret"], REDACTED);
            assert_eq!(map["region"], "us-west-1");
            assert_eq!(map["my_password"], "hunter2", "only whole keys match");
        }
    }

    #[test]
    fn a_custom_list_replaces_the_default() {
        let redacted = entity(&["region", "my-password"]).redacted();
        assert_eq!(redacted.metadata.labels["region"], REDACTED);
        assert_eq!(redacted.metadata.labels["my_password"], REDACTED);
        assert_eq!(redacted.metadata.labels["API-Key"], "k1");
    }

    #[test]
    fn json_redaction_matches_struct_redaction() {
        let original = entity(&["region"]);
        let mut value = serde_json::to_value(&original).expect("encodes");
        redact_entity_json(&mut value);
        assert_eq!(
            value,
            serde_json::to_value(original.redacted()).expect("encodes")
        );
        let mut not_an_entity = json!(["x"]);
        redact_entity_json(&mut not_an_entity);
        assert_eq!(not_an_entity, json!(["x"]));
    }
}
