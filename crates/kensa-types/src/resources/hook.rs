//! Hooks: `HookConfig` (a command the agent runs after a check, by status), `Hook` (its result
//! inside an event's check) and `HookList` (an element of a check's `check_hooks`, written as
//! the single-key object `{"<type>": ["hook", ...]}`).

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{field, go_float, is_zero_f64, label_fields, nullable, Resource};
use crate::meta::NAME;
use crate::{ObjectMeta, ResourceError};

/// `type: HookConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HookConfig {
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// Seconds; the API requires it to be set (the docs' default is 60).
    pub timeout: u32,
    pub stdin: bool,
    #[serde(with = "nullable")]
    pub runtime_assets: Vec<String>,
}

impl Resource for HookConfig {
    fn validate(&self) -> Result<(), ResourceError> {
        self.metadata.validate_name_as("hook", &NAME)?;
        if self.command.is_empty() {
            return Err(ResourceError::invalid_field(
                "command",
                "command cannot be empty",
            ));
        }
        if self.timeout == 0 {
            return Err(ResourceError::invalid_field(
                "timeout",
                "hook timeout must be greater than 0",
            ));
        }
        self.metadata.require_namespace()
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            field("hook.name", &self.metadata.name),
            field("hook.namespace", &self.metadata.namespace),
        ];
        label_fields("hook", &self.metadata, &mut out);
        out
    }
}

/// The result of running a hook, in `check.hooks[]`: the hook's definition followed by what
/// happened.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hook {
    #[serde(flatten)]
    pub config: HookConfig,
    #[serde(skip_serializing_if = "is_zero_f64", serialize_with = "go_float")]
    pub duration: f64,
    pub executed: i64,
    pub issued: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
    pub status: i32,
}

/// The check-status selectors a hook list may use besides `"0"`–`"255"`.
pub const HOOK_SEVERITIES: [&str; 5] = ["ok", "warning", "critical", "unknown", "non-zero"];

/// One element of `check_hooks`: run `hooks` when the check's status matches `hook_type`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookList {
    pub hook_type: String,
    pub hooks: Vec<String>,
}

impl HookList {
    /// Sensu's HookList rules.
    pub fn validate(&self) -> Result<(), ResourceError> {
        if self.hook_type.is_empty() {
            return Err(ResourceError::invalid("type cannot be empty"));
        }
        if self.hooks.is_empty() {
            return Err(ResourceError::invalid("hooks cannot be empty"));
        }
        let is_status = !self.hook_type.starts_with('0') || self.hook_type == "0";
        let is_status = is_status && self.hook_type.parse::<u8>().is_ok();
        if !(is_status || HOOK_SEVERITIES.contains(&self.hook_type.as_str())) {
            return Err(ResourceError::invalid(
                "valid check hook types are \"0\"-\"255\", \"ok\", \"warning\", \"critical\", \"unknown\", and \"non-zero\"",
            ));
        }
        Ok(())
    }

    /// Whether this list applies to a check that exited with `status`.
    pub fn matches_status(&self, status: u32) -> bool {
        match self.hook_type.as_str() {
            "ok" => status == 0,
            "warning" => status == 1,
            "critical" => status == 2,
            "unknown" => status > 2,
            "non-zero" => status != 0,
            numeric => numeric.parse::<u32>().is_ok_and(|n| n == status),
        }
    }
}

impl Serialize for HookList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        if self.hooks.is_empty() {
            map.serialize_entry(&self.hook_type, &None::<()>)?;
        } else {
            map.serialize_entry(&self.hook_type, &self.hooks)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for HookList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HookListVisitor;

        impl<'de> Visitor<'de> for HookListVisitor {
            type Value = HookList;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object with one hook type, such as {\"critical\": [\"hook\"]}")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HookList, A::Error> {
                let Some((hook_type, hooks)) = map.next_entry::<String, Option<Vec<String>>>()?
                else {
                    return Ok(HookList::default());
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(serde::de::Error::custom(
                        "a hook list has exactly one hook type",
                    ));
                }
                Ok(HookList {
                    hook_type,
                    hooks: hooks.unwrap_or_default(),
                })
            }
        }

        deserializer.deserialize_map(HookListVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hook_lists_are_single_key_objects() {
        let list: HookList =
            serde_json::from_value(json!({"critical": ["ps-aux", "df"]})).expect("decodes");
        assert_eq!(list.hook_type, "critical");
        assert_eq!(
            serde_json::to_value(&list).expect("encodes"),
            json!({"critical": ["ps-aux", "df"]})
        );
        assert!(
            serde_json::from_value::<HookList>(json!({"ok": ["a"], "warning": ["b"]})).is_err()
        );
    }

    #[test]
    fn hook_list_types_and_statuses() {
        for (hook_type, ok) in [
            ("0", true),
            ("255", true),
            ("256", false),
            ("07", false),
            ("non-zero", true),
            ("fatal", false),
        ] {
            let list = HookList {
                hook_type: hook_type.into(),
                hooks: vec!["h".into()],
            };
            assert_eq!(list.validate().is_ok(), ok, "{hook_type}");
        }
        let unknown = HookList {
            hook_type: "unknown".into(),
            hooks: vec!["h".into()],
        };
        assert!(unknown.matches_status(3) && !unknown.matches_status(2));
        let two = HookList {
            hook_type: "2".into(),
            hooks: vec!["h".into()],
        };
        assert!(two.matches_status(2) && !two.matches_status(0));
    }
}
