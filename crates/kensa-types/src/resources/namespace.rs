//! Namespaces (`type: Namespace`): the only kind whose name is a top-level `name` field rather
//! than `metadata.name` (its wrapped form has empty metadata).

use serde::{Deserialize, Serialize};

use super::{field, Resource};
use crate::meta::{validate_named, NAME};
use crate::ResourceError;

/// The namespace every installation starts with.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `type: Namespace` (reference §2.12).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Namespace {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Resource for Namespace {
    fn validate(&self) -> Result<(), ResourceError> {
        validate_named("name", "namespace name", &self.name, &NAME)
    }

    fn fields(&self) -> Vec<(String, String)> {
        vec![field("namespace.name", &self.name)]
    }
}
