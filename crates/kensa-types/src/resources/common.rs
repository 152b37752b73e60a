//! Small types and rules several kinds share: references to other resources (pipelines,
//! workflow filters/mutators/handlers), secrets injected into commands, `KEY=VALUE`
//! environment variables, and `runtime_assets` names.

use serde::{Deserialize, Serialize};

use crate::meta::ASSET_NAME;
use crate::{ResourceError, CORE_V2};

/// A reference to another resource: `{name, type, api_version}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResourceReference {
    pub name: String,
    #[serde(rename = "type")]
    pub ref_type: String,
    pub api_version: String,
}

impl ResourceReference {
    /// A `core/v2` reference of type `ref_type`.
    pub fn core(ref_type: &str, name: &str) -> Self {
        ResourceReference {
            name: name.to_owned(),
            ref_type: ref_type.to_owned(),
            api_version: CORE_V2.to_owned(),
        }
    }

    /// Sensu's id form `api_version.Type(Name=name)`, used in field selectors.
    pub fn resource_id(&self) -> String {
        format!("{}.{}(Name={})", self.api_version, self.ref_type, self.name)
    }

    /// Whether this points at `api_version`'s `ref_type`.
    pub fn is(&self, api_version: &str, ref_type: &str) -> bool {
        self.api_version == api_version && self.ref_type == ref_type
    }

    /// Every part is required (reference §2.16).
    pub fn validate(&self) -> Result<(), ResourceError> {
        for (field, value) in [
            ("name", &self.name),
            ("type", &self.ref_type),
            ("api_version", &self.api_version),
        ] {
            if value.is_empty() {
                return Err(ResourceError::invalid_field(
                    field,
                    format!("{field} must be set"),
                ));
            }
        }
        Ok(())
    }
}

/// A secret exposed to a command as environment variable `name`, read from the Secret
/// resource `secret`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Secret {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret: String,
}

/// Sensu's rule for `env_vars`: every entry is `KEY=VALUE` with both sides non-empty.
pub fn validate_env_vars(field: &str, vars: &[String]) -> Result<(), ResourceError> {
    for (i, var) in vars.iter().enumerate() {
        let well_formed = matches!(var.split_once('='), Some((key, value)) if !key.is_empty() && !value.is_empty());
        if !well_formed {
            return Err(ResourceError::invalid_field(
                format!("{field}[{i}]"),
                "environment variables must be of the form FOO=BAR",
            ));
        }
    }
    Ok(())
}

/// Splits `KEY=VALUE` entries into pairs, skipping malformed ones (as Sensu's `EnvVarsToMap`).
pub fn env_var_pairs(vars: &[String]) -> impl Iterator<Item = (&str, &str)> {
    vars.iter().filter_map(|var| var.split_once('='))
}

/// Sensu's rule for an asset name, with its messages (`name cannot be empty`, …).
pub fn validate_asset_name(field: &str, prefix: &str, name: &str) -> Result<(), ResourceError> {
    if name.is_empty() {
        return Err(ResourceError::invalid_field(
            field,
            format!("{prefix}name cannot be empty"),
        ));
    }
    if !ASSET_NAME.is_match(name) {
        return Err(ResourceError::invalid_field(
            field,
            format!("{prefix}name may only contain letters, forward slashes, underscores, dashes and numbers"),
        ));
    }
    Ok(())
}

/// Every `runtime_assets` entry must be a valid asset name (`asset's name cannot be empty`).
pub fn validate_runtime_assets(assets: &[String]) -> Result<(), ResourceError> {
    for (i, asset) in assets.iter().enumerate() {
        validate_asset_name(&format!("runtime_assets[{i}]"), "asset's ", asset)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_vars_need_both_sides() {
        let ok = [
            "A=b".to_owned(),
            "PATH=/bin:/usr/bin".to_owned(),
            "X==y".to_owned(),
        ];
        assert!(validate_env_vars("env_vars", &ok).is_ok());
        for bad in ["A", "=b", "A="] {
            let err = validate_env_vars("env_vars", &[bad.to_owned()]).unwrap_err();
            assert_eq!(
                err.to_string(),
                "env_vars[0]: environment variables must be of the form FOO=BAR",
                "{bad}"
            );
        }
    }

    #[test]
    fn resource_ids_follow_sensu() {
        let r = ResourceReference::core("Pipeline", "slack");
        assert_eq!(r.resource_id(), "core/v2.Pipeline(Name=slack)");
        assert!(r.validate().is_ok());
        let err = ResourceReference {
            name: "x".into(),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.to_string(), "type: type must be set");
    }
}
