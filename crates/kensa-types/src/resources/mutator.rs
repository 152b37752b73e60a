//! Mutators (`type: Mutator`): transform an event before a handler sees it, either with a
//! command (`pipe`: event JSON on stdin, new payload on stdout) or with JavaScript (`eval`).

use serde::{Deserialize, Serialize};

use super::common::Secret;
use super::{field, joined, label_fields, nullable, Resource};
use crate::meta::NAME;
use crate::{ObjectMeta, ResourceError};

pub const TYPE_PIPE: &str = "pipe";
pub const TYPE_JAVASCRIPT: &str = "javascript";

/// The names of the mutators Sensu provides without a stored resource.
pub const BUILT_IN_MUTATORS: [&str; 2] = ["json", "only_check_output"];

/// `type: Mutator` (reference §2.8).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Mutator {
    pub metadata: ObjectMeta,
    /// Command of a pipe mutator.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// Seconds (0: none).
    pub timeout: u32,
    #[serde(with = "nullable")]
    pub env_vars: Vec<String>,
    #[serde(with = "nullable")]
    pub runtime_assets: Vec<String>,
    #[serde(with = "nullable")]
    pub secrets: Vec<Secret>,
    /// `pipe` (also when empty) or `javascript`.
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub mutator_type: String,
    /// Body of a javascript mutator.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub eval: String,
}

impl Mutator {
    /// Whether this mutator runs JavaScript rather than a command.
    pub fn is_javascript(&self) -> bool {
        self.mutator_type == TYPE_JAVASCRIPT
    }
}

impl Resource for Mutator {
    fn validate(&self) -> Result<(), ResourceError> {
        self.metadata.validate_name_as("mutator", &NAME)?;
        if self.command.is_empty() && self.eval.is_empty() {
            return Err(ResourceError::invalid_field(
                "command",
                "mutator command or eval must be set",
            ));
        }
        if self.is_javascript() && !self.command.is_empty() {
            return Err(ResourceError::invalid_field(
                "command",
                "\"command\" used with javascript mutator, should be \"eval\"",
            ));
        }
        self.metadata.require_namespace()?;
        if !self.mutator_type.is_empty() && self.mutator_type != TYPE_PIPE && !self.is_javascript()
        {
            return Err(ResourceError::invalid_field(
                "type",
                format!(
                    "invalid mutator type {:?}, valid types are \"javascript, pipe\"",
                    self.mutator_type
                ),
            ));
        }
        Ok(())
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            field("mutator.name", &self.metadata.name),
            field("mutator.namespace", &self.metadata.namespace),
            field("mutator.runtime_assets", joined(&self.runtime_assets)),
        ];
        label_fields("mutator", &self.metadata, &mut out);
        out
    }
}
