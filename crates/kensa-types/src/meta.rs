//! `ObjectMeta`, the `metadata` object every namespaced and most cluster-wide resources carry,
//! and the name rules of Sensu (reference §1.2–1.3).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::ResourceError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObjectMeta {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::resources::null_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::resources::null_default"
    )]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub created_by: String,
}

/// `\A[\w\.\-\:]+\z`: names of checks, entities, handlers, filters, mutators, hooks, pipelines,
/// namespaces.
pub static NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\A[\w\.\-\:]+\z").unwrap());
/// `\A[a-z0-9\_\.\-]+\z`: usernames.
pub static STRICT_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[a-z0-9_\.\-]+\z").unwrap());
/// `\A[\w\.\-]+(\:?[\w\.\-]+)?\z`: subscriptions and RBAC object names.
pub static SUBSCRIPTION_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[\w\.\-]+(\:?[\w\.\-]+)?\z").unwrap());
/// `^[\w\/\_\.\-\:]+$`: asset names and `runtime_assets` entries.
pub static ASSET_NAME: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[\w/_\.\-:]+$").unwrap());

/// Checks `name` against `rule`, with Sensu's messages: `must not be empty`,
/// `cannot contain spaces or special characters`.
pub fn validate_name(field: &str, name: &str, rule: &Regex) -> Result<(), ResourceError> {
    validate_named(field, "", name, rule)
}

/// Like [`validate_name`], with Sensu's subject in front of the message: `validate_named(
/// "metadata.name", "check name", "", &NAME)` fails with `check name must not be empty`.
pub fn validate_named(
    field: &str,
    subject: &str,
    name: &str,
    rule: &Regex,
) -> Result<(), ResourceError> {
    let sep = if subject.is_empty() { "" } else { " " };
    if name.is_empty() {
        return Err(ResourceError::invalid_field(
            field,
            format!("{subject}{sep}must not be empty"),
        ));
    }
    if !rule.is_match(name) {
        return Err(ResourceError::invalid_field(
            field,
            format!("{subject}{sep}cannot contain spaces or special characters"),
        ));
    }
    Ok(())
}

impl ObjectMeta {
    /// The rule shared by namespaced kinds: a valid name and a namespace.
    pub fn validate_namespaced(&self, rule: &Regex) -> Result<(), ResourceError> {
        validate_name("metadata.name", &self.name, rule)?;
        if self.namespace.is_empty() {
            return Err(ResourceError::invalid_field(
                "metadata.namespace",
                "namespace must be set",
            ));
        }
        Ok(())
    }

    /// Sensu's name rule with its message naming the kind: `check name must not be empty`.
    pub fn validate_name_as(&self, kind: &str, rule: &Regex) -> Result<(), ResourceError> {
        validate_named("metadata.name", &format!("{kind} name"), &self.name, rule)
    }

    /// Sensu's `namespace must be set`.
    pub fn require_namespace(&self) -> Result<(), ResourceError> {
        if self.namespace.is_empty() {
            return Err(ResourceError::invalid_field(
                "metadata.namespace",
                "namespace must be set",
            ));
        }
        Ok(())
    }

    /// The rule shared by cluster-wide kinds: a valid name and no namespace.
    pub fn validate_cluster_wide(&self, rule: &Regex) -> Result<(), ResourceError> {
        validate_name("metadata.name", &self.name, rule)?;
        if !self.namespace.is_empty() {
            return Err(ResourceError::invalid_field(
                "metadata.namespace",
                "cluster-wide resources must not have a namespace",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules_match_sensu() {
        for ok in ["check-cpu", "a.b_c:d", "web01"] {
            assert!(validate_name("n", ok, &NAME).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "semi;colon", "slash/no"] {
            assert!(validate_name("n", bad, &NAME).is_err(), "{bad}");
        }
        assert!(validate_name("n", "Alice", &STRICT_NAME).is_err());
        assert!(validate_name("n", "entity:web1", &SUBSCRIPTION_NAME).is_ok());
        assert!(validate_name("n", "a:b:c", &SUBSCRIPTION_NAME).is_err());
        assert!(validate_name("n", "sensu/sensu-ruby", &ASSET_NAME).is_ok());
    }
}
