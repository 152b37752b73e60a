//! Event filters (`type: EventFilter`): JavaScript expressions that let an event through a
//! workflow (`allow`: all must be true) or drop it (`deny`: any true drops it). Expressions are
//! parsed and evaluated by kensa-eval; this module only holds the shape and Sensu's rules.

use serde::{Deserialize, Serialize};

use super::time_window::TimeWindowWhen;
use super::{field, joined, label_fields, nullable, Resource};
use crate::meta::NAME;
use crate::{ObjectMeta, ResourceError};

pub const ACTION_ALLOW: &str = "allow";
pub const ACTION_DENY: &str = "deny";

/// The names of the filters Sensu provides without a stored resource.
pub const BUILT_IN_FILTERS: [&str; 3] = ["is_incident", "not_silenced", "has_metrics"];

/// `type: EventFilter` (reference §2.7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventFilter {
    pub metadata: ObjectMeta,
    /// `allow` or `deny`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// JavaScript boolean expressions, AND-ed.
    #[serde(with = "nullable")]
    pub expressions: Vec<String>,
    /// Legacy time window (allow: only inside; deny: not inside).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<TimeWindowWhen>,
    /// Assets whose `.js` files are loaded before the expressions run.
    #[serde(with = "nullable")]
    pub runtime_assets: Vec<String>,
}

impl Resource for EventFilter {
    fn validate(&self) -> Result<(), ResourceError> {
        self.metadata.validate_name_as("filter", &NAME)?;
        if self.action != ACTION_ALLOW && self.action != ACTION_DENY {
            return Err(ResourceError::invalid_field(
                "action",
                format!("action '{}' is not valid", self.action),
            ));
        }
        if self.expressions.is_empty() {
            return Err(ResourceError::invalid_field(
                "expressions",
                "filter must have one or more expressions",
            ));
        }
        self.metadata.require_namespace()?;
        // Not checked by Sensu on write, but an unparseable window fails every evaluation.
        if let Some(when) = &self.when {
            when.validate().map_err(|err| err.within("when", ""))?;
        }
        Ok(())
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            field("filter.name", &self.metadata.name),
            field("filter.namespace", &self.metadata.namespace),
            field("filter.action", &self.action),
            field("filter.runtime_assets", joined(&self.runtime_assets)),
        ];
        label_fields("filter", &self.metadata, &mut out);
        out
    }
}
