//! RBAC kinds: `Role` (namespaced) and `ClusterRole` hold rules (verbs × resources ×
//! optional resource names); `RoleBinding` and `ClusterRoleBinding` grant a role to users and
//! groups. The namespaced and cluster-wide variants share their rules; they differ only in the
//! namespace requirement and in the names Sensu's messages use.

use serde::{Deserialize, Serialize};

use super::{field, label_fields, nullable, Resource};
use crate::meta::{validate_named, SUBSCRIPTION_NAME};
use crate::{ObjectMeta, ResourceError};

/// The verbs a rule may grant.
pub const VERBS: [&str; 6] = ["*", "get", "list", "create", "update", "delete"];

pub const ROLE_TYPE: &str = "Role";
pub const CLUSTER_ROLE_TYPE: &str = "ClusterRole";
pub const USER_TYPE: &str = "User";
pub const GROUP_TYPE: &str = "Group";

/// One grant: `verbs` on `resources` (limited to `resource_names` when non-empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rule {
    #[serde(with = "nullable")]
    pub verbs: Vec<String>,
    #[serde(with = "nullable")]
    pub resources: Vec<String>,
    #[serde(with = "nullable")]
    pub resource_names: Vec<String>,
}

impl Rule {
    pub fn verb_matches(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == "*" || v == verb)
    }

    pub fn resource_matches(&self, resource: &str) -> bool {
        self.resources.iter().any(|r| r == "*" || r == resource)
    }

    pub fn resource_name_matches(&self, name: &str) -> bool {
        self.resource_names.is_empty() || self.resource_names.iter().any(|n| n == name)
    }

    /// Sensu splits comma-joined entries (`"get,list"`) into separate ones.
    fn split_entries(&mut self) {
        let split = |items: &mut Vec<String>| {
            *items = items
                .iter()
                .flat_map(|item| item.split(','))
                .map(str::to_owned)
                .collect();
        };
        split(&mut self.verbs);
        split(&mut self.resources);
    }
}

/// `type: Role` (reference §2.14).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Role {
    #[serde(with = "nullable")]
    pub rules: Vec<Rule>,
    pub metadata: ObjectMeta,
}

/// `type: ClusterRole`: a Role for every namespace (and for cluster-wide resources).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterRole {
    #[serde(with = "nullable")]
    pub rules: Vec<Rule>,
    pub metadata: ObjectMeta,
}

/// The role a binding grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoleRef {
    /// `Role` or `ClusterRole`.
    #[serde(rename = "type")]
    pub role_type: String,
    pub name: String,
}

/// Who a binding grants the role to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Subject {
    /// `User` or `Group`.
    #[serde(rename = "type")]
    pub subject_type: String,
    pub name: String,
}

/// `type: RoleBinding`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoleBinding {
    #[serde(with = "nullable")]
    pub subjects: Vec<Subject>,
    pub role_ref: RoleRef,
    pub metadata: ObjectMeta,
}

/// `type: ClusterRoleBinding`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterRoleBinding {
    #[serde(with = "nullable")]
    pub subjects: Vec<Subject>,
    pub role_ref: RoleRef,
    pub metadata: ObjectMeta,
}

/// Whether a kind lives in a namespace, with the name Sensu's messages give it.
#[derive(Clone, Copy)]
enum Scope {
    Namespaced(&'static str),
    ClusterWide(&'static str),
}

impl Scope {
    fn kind(self) -> &'static str {
        match self {
            Scope::Namespaced(kind) | Scope::ClusterWide(kind) => kind,
        }
    }

    fn validate_namespace(self, meta: &ObjectMeta) -> Result<(), ResourceError> {
        match self {
            Scope::Namespaced(kind) if meta.namespace.is_empty() => {
                Err(ResourceError::invalid_field(
                    "metadata.namespace",
                    format!("the {kind} namespace must be set"),
                ))
            }
            Scope::ClusterWide(kind) if !meta.namespace.is_empty() => {
                Err(ResourceError::invalid_field(
                    "metadata.namespace",
                    format!("{kind} cannot have a namespace"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Go's `strings.Title`: the first letter of each space-separated word upper-cased.
fn title_case(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut at_word_start = true;
    for c in value.chars() {
        if at_word_start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        at_word_start = c.is_whitespace();
    }
    out
}

fn validate_role(scope: Scope, meta: &ObjectMeta, rules: &[Rule]) -> Result<(), ResourceError> {
    let kind = scope.kind();
    validate_named(
        "metadata.name",
        &format!("the {kind} name"),
        &meta.name,
        &SUBSCRIPTION_NAME,
    )?;
    if let Scope::Namespaced(_) = scope {
        scope.validate_namespace(meta)?;
    }
    if rules.is_empty() {
        return Err(ResourceError::invalid_field(
            "rules",
            format!("a {kind} must have at least one rule"),
        ));
    }
    if let Scope::ClusterWide(_) = scope {
        scope.validate_namespace(meta)?;
    }
    for (i, rule) in rules.iter().enumerate() {
        if let Some(verb) = rule
            .verbs
            .iter()
            .flat_map(|v| v.split(','))
            .find(|verb| !VERBS.contains(verb))
        {
            return Err(ResourceError::invalid_field(
                format!("rules[{i}].verbs"),
                format!("the verb {verb:?} is not valid"),
            ));
        }
    }
    Ok(())
}

fn validate_binding(
    scope: Scope,
    meta: &ObjectMeta,
    role_ref: &RoleRef,
    subjects: &[Subject],
) -> Result<(), ResourceError> {
    let kind = scope.kind();
    validate_named(
        "metadata.name",
        &format!("the {kind} name"),
        &meta.name,
        &SUBSCRIPTION_NAME,
    )?;
    scope.validate_namespace(meta)?;
    let role_type = title_case(&role_ref.role_type);
    if role_type != CLUSTER_ROLE_TYPE && role_type != ROLE_TYPE {
        return Err(ResourceError::invalid_field(
            "role_ref.type",
            format!("roleRef type {role_type:?} is invalid, expected either {CLUSTER_ROLE_TYPE:?} or {ROLE_TYPE:?}"),
        ));
    }
    if role_ref.name.is_empty() {
        return Err(ResourceError::invalid_field(
            "role_ref.name",
            format!("roleRef name for {role_type} is required"),
        ));
    }
    if subjects.is_empty() {
        return Err(ResourceError::invalid_field(
            "subjects",
            "a RoleBinding must have at least one subject",
        ));
    }
    for (i, subject) in subjects.iter().enumerate() {
        let subject_type = title_case(&subject.subject_type);
        if subject_type != GROUP_TYPE && subject_type != USER_TYPE {
            return Err(ResourceError::invalid_field(
                format!("subjects[{i}].type"),
                format!(
                    "subject type {:?} is invalid, expected either {GROUP_TYPE:?} or {USER_TYPE:?}",
                    subject.subject_type
                ),
            ));
        }
        if subject.name.is_empty() {
            return Err(ResourceError::invalid_field(
                format!("subjects[{i}].name"),
                format!("subject name for the {subject_type:?} type is required"),
            ));
        }
    }
    Ok(())
}

fn binding_defaults(role_ref: &mut RoleRef, subjects: &mut [Subject]) {
    role_ref.role_type = title_case(&role_ref.role_type);
    for subject in subjects {
        subject.subject_type = title_case(&subject.subject_type);
    }
}

fn binding_fields(
    prefix: &str,
    meta: &ObjectMeta,
    role_ref: &RoleRef,
    namespaced: bool,
) -> Vec<(String, String)> {
    let mut out = vec![field(&format!("{prefix}.name"), &meta.name)];
    if namespaced {
        out.push(field(&format!("{prefix}.namespace"), &meta.namespace));
    }
    out.push(field(&format!("{prefix}.role_ref.name"), &role_ref.name));
    out.push(field(
        &format!("{prefix}.role_ref.type"),
        &role_ref.role_type,
    ));
    label_fields(prefix, meta, &mut out);
    out
}

impl Resource for Role {
    fn apply_defaults(&mut self) {
        self.rules.iter_mut().for_each(Rule::split_entries);
    }

    fn validate(&self) -> Result<(), ResourceError> {
        validate_role(Scope::Namespaced(ROLE_TYPE), &self.metadata, &self.rules)
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![
            field("role.name", &self.metadata.name),
            field("role.namespace", &self.metadata.namespace),
        ];
        label_fields("role", &self.metadata, &mut out);
        out
    }
}

impl Resource for ClusterRole {
    fn apply_defaults(&mut self) {
        self.rules.iter_mut().for_each(Rule::split_entries);
    }

    fn validate(&self) -> Result<(), ResourceError> {
        validate_role(
            Scope::ClusterWide(CLUSTER_ROLE_TYPE),
            &self.metadata,
            &self.rules,
        )
    }

    fn fields(&self) -> Vec<(String, String)> {
        let mut out = vec![field("clusterrole.name", &self.metadata.name)];
        label_fields("clusterrole", &self.metadata, &mut out);
        out
    }
}

impl Resource for RoleBinding {
    fn apply_defaults(&mut self) {
        binding_defaults(&mut self.role_ref, &mut self.subjects);
    }

    fn validate(&self) -> Result<(), ResourceError> {
        validate_binding(
            Scope::Namespaced("RoleBinding"),
            &self.metadata,
            &self.role_ref,
            &self.subjects,
        )
    }

    fn fields(&self) -> Vec<(String, String)> {
        binding_fields("rolebinding", &self.metadata, &self.role_ref, true)
    }
}

impl Resource for ClusterRoleBinding {
    fn apply_defaults(&mut self) {
        binding_defaults(&mut self.role_ref, &mut self.subjects);
    }

    fn validate(&self) -> Result<(), ResourceError> {
        validate_binding(
            Scope::ClusterWide("ClusterRoleBinding"),
            &self.metadata,
            &self.role_ref,
            &self.subjects,
        )
    }

    fn fields(&self) -> Vec<(String, String)> {
        binding_fields("clusterrolebinding", &self.metadata, &self.role_ref, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_case_is_gos() {
        assert_eq!(title_case("clusterRole"), "ClusterRole");
        assert_eq!(title_case("user"), "User");
        assert_eq!(title_case("clusterrole"), "Clusterrole");
    }

    #[test]
    fn rules_split_comma_joined_entries() {
        let mut role = Role {
            rules: vec![Rule {
                verbs: vec!["get,list".into()],
                resources: vec!["checks,events".into()],
                ..Rule::default()
            }],
            metadata: ObjectMeta {
                name: "reader".into(),
                namespace: "default".into(),
                ..ObjectMeta::default()
            },
        };
        assert!(role.validate().is_ok());
        role.apply_defaults();
        assert_eq!(role.rules[0].verbs, ["get", "list"]);
        assert!(role.rules[0].verb_matches("list") && role.rules[0].resource_matches("events"));
        assert!(role.rules[0].resource_name_matches("anything"));
    }
}
