//! The registry of resource kinds: their Sensu type names (and snake_case aliases), RBAC
//! resource names, URL segments, scope, and the per-kind dispatch into the typed structs.
//!
//! Code outside this crate that must handle "any resource" (the REST API, the store, kensactl)
//! goes through `Kind` instead of matching on type names itself.

use serde_json::Value;

use crate::resources::{self, Resource};
use crate::selector::{self, Selector, SelectorError};
use crate::ResourceError;

/// Every core/v2 kind Kensa stores. The order is the order of `kensactl dump all`: kinds that
/// others refer to come first, so that replaying a dump creates dependencies before dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    ClusterRole,
    ClusterRoleBinding,
    User,
    ApiKey,
    Role,
    RoleBinding,
    Asset,
    HookConfig,
    CheckConfig,
    EventFilter,
    Mutator,
    Handler,
    Pipeline,
    Entity,
    Silenced,
    Event,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::Namespace,
        Kind::ClusterRole,
        Kind::ClusterRoleBinding,
        Kind::User,
        Kind::ApiKey,
        Kind::Role,
        Kind::RoleBinding,
        Kind::Asset,
        Kind::HookConfig,
        Kind::CheckConfig,
        Kind::EventFilter,
        Kind::Mutator,
        Kind::Handler,
        Kind::Pipeline,
        Kind::Entity,
        Kind::Silenced,
        Kind::Event,
    ];

    /// The `type` of the wrapped form (`CheckConfig`).
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::ClusterRole => "ClusterRole",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
            Kind::User => "User",
            Kind::ApiKey => "APIKey",
            Kind::Role => "Role",
            Kind::RoleBinding => "RoleBinding",
            Kind::Asset => "Asset",
            Kind::HookConfig => "HookConfig",
            Kind::CheckConfig => "CheckConfig",
            Kind::EventFilter => "EventFilter",
            Kind::Mutator => "Mutator",
            Kind::Handler => "Handler",
            Kind::Pipeline => "Pipeline",
            Kind::Entity => "Entity",
            Kind::Silenced => "Silenced",
            Kind::Event => "Event",
        }
    }

    /// The RBAC resource name, which is also the URL segment (`checks`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::ClusterRole => "clusterroles",
            Kind::ClusterRoleBinding => "clusterrolebindings",
            Kind::User => "users",
            Kind::ApiKey => "apikeys",
            Kind::Role => "roles",
            Kind::RoleBinding => "rolebindings",
            Kind::Asset => "assets",
            Kind::HookConfig => "hooks",
            Kind::CheckConfig => "checks",
            Kind::EventFilter => "filters",
            Kind::Mutator => "mutators",
            Kind::Handler => "handlers",
            Kind::Pipeline => "pipelines",
            Kind::Entity => "entities",
            Kind::Silenced => "silenced",
            Kind::Event => "events",
        }
    }

    /// Accepts the CamelCase type name, its snake_case alias (`check_config`), and the
    /// fully-qualified `core/v2.CheckConfig` form.
    pub fn from_type_name(name: &str) -> Option<Kind> {
        let name = name.strip_prefix("core/v2.").unwrap_or(name);
        let folded: String = name
            .chars()
            .filter(|c| *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| k.type_name().to_ascii_lowercase() == folded)
    }

    /// Accepts the RBAC/URL resource name (`checks`), as used by `kensactl dump checks`.
    pub fn from_resource(resource: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.resource() == resource)
    }

    /// Namespaced kinds live under `/namespaces/{ns}/…`; the others are cluster-wide.
    pub fn is_namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace
                | Kind::ClusterRole
                | Kind::ClusterRoleBinding
                | Kind::User
                | Kind::ApiKey
        )
    }

    /// The prefix of field-selector keys for this kind (`check` in `check.name`).
    pub fn field_prefix(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::ClusterRole => "clusterrole",
            Kind::ClusterRoleBinding => "clusterrolebinding",
            Kind::User => "user",
            Kind::ApiKey => "api_key",
            Kind::Role => "role",
            Kind::RoleBinding => "rolebinding",
            Kind::Asset => "asset",
            Kind::HookConfig => "hook",
            Kind::CheckConfig => "check",
            Kind::EventFilter => "filter",
            Kind::Mutator => "mutator",
            Kind::Handler => "handler",
            Kind::Pipeline => "pipeline",
            Kind::Entity => "entity",
            Kind::Silenced => "silenced",
            Kind::Event => "event",
        }
    }

    /// The name a resource of this kind is stored and addressed under: `metadata.name` for most
    /// kinds, `name` for a Namespace, `username` for a User, and `<entity>/<check>` for an Event.
    /// `None` when the value does not carry one.
    pub fn name_of(self, value: &Value) -> Option<String> {
        let s = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        match self {
            Kind::Namespace => s(&value["name"]),
            Kind::User => s(&value["username"]),
            Kind::Event => {
                let entity = s(&value["entity"]["metadata"]["name"])?;
                let check = s(&value["check"]["metadata"]["name"])?;
                Some(format!("{entity}/{check}"))
            }
            _ => s(&value["metadata"]["name"]),
        }
    }

    /// `metadata.namespace` of an unwrapped value ("" when absent).
    pub fn namespace_of(self, value: &Value) -> String {
        value["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Decodes an unwrapped JSON body into this kind's struct (filling Sensu's defaults), checks
    /// its rules, and returns it re-encoded in canonical form: the same field order and the same
    /// always-present/omitted fields as Sensu. Errors name the failing field.
    pub fn normalize(self, value: Value) -> Result<Value, ResourceError> {
        match self {
            Kind::Namespace => normalize_as::<resources::namespace::Namespace>(value),
            Kind::ClusterRole => normalize_as::<resources::rbac::ClusterRole>(value),
            Kind::ClusterRoleBinding => normalize_as::<resources::rbac::ClusterRoleBinding>(value),
            Kind::User => normalize_as::<resources::user::User>(value),
            Kind::ApiKey => normalize_as::<resources::apikey::ApiKey>(value),
            Kind::Role => normalize_as::<resources::rbac::Role>(value),
            Kind::RoleBinding => normalize_as::<resources::rbac::RoleBinding>(value),
            Kind::Asset => normalize_as::<resources::asset::Asset>(value),
            Kind::HookConfig => normalize_as::<resources::hook::HookConfig>(value),
            Kind::CheckConfig => normalize_as::<resources::check::CheckConfig>(value),
            Kind::EventFilter => normalize_as::<resources::filter::EventFilter>(value),
            Kind::Mutator => normalize_as::<resources::mutator::Mutator>(value),
            Kind::Handler => normalize_as::<resources::handler::Handler>(value),
            Kind::Pipeline => normalize_as::<resources::pipeline::Pipeline>(value),
            Kind::Entity => normalize_as::<resources::entity::Entity>(value),
            Kind::Silenced => normalize_as::<resources::silenced::Silenced>(value),
            Kind::Event => normalize_as::<resources::event::Event>(value),
        }
    }

    /// The field-selector field set of a (normalized) value, e.g. `check.name`,
    /// `check.subscriptions` (arrays joined with `,`), `check.labels.<key>`.
    pub fn fields(self, value: &Value) -> Vec<(String, String)> {
        match self {
            Kind::Namespace => fields_as::<resources::namespace::Namespace>(value),
            Kind::ClusterRole => fields_as::<resources::rbac::ClusterRole>(value),
            Kind::ClusterRoleBinding => fields_as::<resources::rbac::ClusterRoleBinding>(value),
            Kind::User => fields_as::<resources::user::User>(value),
            Kind::ApiKey => fields_as::<resources::apikey::ApiKey>(value),
            Kind::Role => fields_as::<resources::rbac::Role>(value),
            Kind::RoleBinding => fields_as::<resources::rbac::RoleBinding>(value),
            Kind::Asset => fields_as::<resources::asset::Asset>(value),
            Kind::HookConfig => fields_as::<resources::hook::HookConfig>(value),
            Kind::CheckConfig => fields_as::<resources::check::CheckConfig>(value),
            Kind::EventFilter => fields_as::<resources::filter::EventFilter>(value),
            Kind::Mutator => fields_as::<resources::mutator::Mutator>(value),
            Kind::Handler => fields_as::<resources::handler::Handler>(value),
            Kind::Pipeline => fields_as::<resources::pipeline::Pipeline>(value),
            Kind::Entity => fields_as::<resources::entity::Entity>(value),
            Kind::Silenced => fields_as::<resources::silenced::Silenced>(value),
            Kind::Event => fields_as::<resources::event::Event>(value),
        }
    }
}

impl Kind {
    /// Redacts what Sensu never shows: entity label and annotation values whose keys are in the
    /// entity's `redact` list (reference §2.3), for an Entity or an Event (its entity). Call it
    /// on JSON leaving the backend (API responses, handler input); stored values stay intact.
    pub fn redact(self, value: &mut Value) {
        match self {
            Kind::Entity => resources::entity::redact_entity_json(value),
            Kind::Event => {
                if let Some(entity) = value.get_mut("entity") {
                    resources::entity::redact_entity_json(entity);
                }
            }
            _ => {}
        }
    }

    /// Parses a `fieldSelector` for this kind (keys such as `check.name`).
    pub fn field_selector(self, input: &str) -> Result<Selector, SelectorError> {
        selector::parse(input)
    }

    /// Parses a `labelSelector` for this kind: `region == x` reads `<prefix>.labels.region`.
    pub fn label_selector(self, input: &str) -> Result<Selector, SelectorError> {
        Selector::parse_labels(input, self.field_prefix())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.type_name())
    }
}

fn normalize_as<R: Resource>(value: Value) -> Result<Value, ResourceError> {
    let mut resource: R = resources::decode(value)?;
    resource.apply_defaults();
    resource.validate()?;
    Ok(serde_json::to_value(&resource).expect("a resource always serializes"))
}

fn fields_as<R: Resource>(value: &Value) -> Vec<(String, String)> {
    match resources::decode::<R>(value.clone()) {
        Ok(resource) => resource.fields(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_and_aliases_resolve() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_type_name(kind.type_name()), Some(kind));
            assert_eq!(Kind::from_resource(kind.resource()), Some(kind));
        }
        assert_eq!(
            Kind::from_type_name("check_config"),
            Some(Kind::CheckConfig)
        );
        assert_eq!(Kind::from_type_name("api_key"), Some(Kind::ApiKey));
        assert_eq!(
            Kind::from_type_name("core/v2.EventFilter"),
            Some(Kind::EventFilter)
        );
        assert_eq!(Kind::from_type_name("Chek"), None);
    }
}
