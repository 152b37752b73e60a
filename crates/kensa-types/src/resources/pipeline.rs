//! Pipelines (`type: Pipeline`): ordered workflows of filters, an optional mutator and a
//! handler, each a reference to a `core/v2` resource.

use serde::{Deserialize, Serialize};

use super::common::ResourceReference;
use super::{field, label_fields, nullable, Resource};
use crate::meta::{validate_named, NAME};
use crate::{ObjectMeta, ResourceError, CORE_V2};

/// `type: Pipeline` (reference §2.16).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pipeline {
    pub metadata: ObjectMeta,
    #[serde(with = "nullable")]
    pub workflows: Vec<PipelineWorkflow>,
}

/// One filters → mutator → handler chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PipelineWorkflow {
    pub name: String,
    /// `core/v2` `EventFilter` references, applied in order.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "super::null_default"
    )]
    pub filters: Vec<ResourceReference>,
    /// A `core/v2` `Mutator` reference (none: `json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mutator: Option<ResourceReference>,
    /// A `core/v2` `Handler` reference; required.
    pub handler: Option<ResourceReference>,
}

impl PipelineWorkflow {
    /// Sensu's workflow rules: a valid name; every reference complete and of a type able to
    /// play its part; a handler.
    pub fn validate(&self) -> Result<(), ResourceError> {
        validate_named("name", "name", &self.name, &NAME)?;
        for (i, filter) in self.filters.iter().enumerate() {
            validate_reference(filter, "EventFilter", "filtering")
                .map_err(|err| err.within(&format!("filters[{i}]"), "filter "))?;
        }
        if let Some(mutator) = &self.mutator {
            validate_reference(mutator, "Mutator", "mutating")
                .map_err(|err| err.within("mutator", "mutator "))?;
        }
        let Some(handler) = &self.handler else {
            return Err(ResourceError::invalid_field(
                "handler",
                "handler must be set",
            ));
        };
        validate_reference(handler, "Handler", "handling")
            .map_err(|err| err.within("handler", "handler "))
    }
}

fn validate_reference(
    reference: &ResourceReference,
    ref_type: &str,
    role: &str,
) -> Result<(), ResourceError> {
    reference.validate()?;
    if !reference.is(CORE_V2, ref_type) {
        return Err(ResourceError::invalid_field(
            "type",
            format!(
                "resource type not capable of {role} events: {}.{}",
                reference.api_version, reference.ref_type
            ),
        ));
    }
    Ok(())
}

impl Resource for Pipeline {
    fn validate(&self) -> Result<(), ResourceError> {
        self.metadata.validate_name_as("pipeline", &NAME)?;
        self.metadata.require_namespace()?;
        for (i, workflow) in self.workflows.iter().enumerate() {
            workflow.validate().map_err(|err| {
                err.within(&format!("workflows[{i}]"), &format!("workflow {i}: "))
            })?;
        }
        Ok(())
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            field("pipeline.name", &self.metadata.name),
            field("pipeline.namespace", &self.metadata.namespace),
        ];
        label_fields("pipeline", &self.metadata, &mut out);
        out
    }
}
