//! The RBAC decision, with Sensu's semantics (reference §2.14, §3.3, §5.3): a request
//! (verb, resource, namespace, name) is allowed when a rule of a role bound to the caller
//! (by username or group) matches all three of verb, resource and resource name.
//!
//! - ClusterRoleBindings grant their ClusterRole's rules everywhere, cluster-wide kinds included.
//! - RoleBindings grant their Role's (or ClusterRole's) rules inside their own namespace only.
//! - `*` in a Role covers namespaced resource types only; in a ClusterRole, everything.
//! - Requests without a namespace (cluster-wide kinds, listings across namespaces) need a
//!   ClusterRoleBinding.
//!
//! Pure: the roles and bindings come in through [`RbacSource`] (the config view in the
//! backend, plain maps in tests).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::Caller;

/// What is being asked.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `get`, `list`, `create`, `update` or `delete`.
    pub verb: &'a str,
    /// The RBAC resource type (`checks`, `users`, `localselfuser`).
    pub resource: &'a str,
    /// `None` for cluster-wide resources and all-namespace listings.
    pub namespace: Option<&'a str>,
    /// `None` for listings and creation by POST.
    pub name: Option<&'a str>,
}

/// Where roles and bindings come from.
pub trait RbacSource {
    fn cluster_role_bindings(&self) -> Vec<Arc<Value>>;
    fn role_bindings(&self, namespace: &str) -> Vec<Arc<Value>>;
    fn cluster_role(&self, name: &str) -> Option<Arc<Value>>;
    fn role(&self, namespace: &str, name: &str) -> Option<Arc<Value>>;
}

#[derive(Deserialize)]
struct Binding {
    role_ref: RoleRef,
    #[serde(default)]
    subjects: Vec<Subject>,
}

#[derive(Deserialize)]
struct RoleRef {
    #[serde(rename = "type", default)]
    kind: String,
    name: String,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(rename = "type", default)]
    kind: String,
    name: String,
}

#[derive(Deserialize)]
struct RoleRules {
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default, deserialize_with = "kensa_types::resources::null_default")]
    resource_names: Vec<String>,
}

/// Resource types that exist only cluster-wide; a Role's `*` does not reach them.
const CLUSTER_WIDE_RESOURCES: &[&str] = &[
    "apikeys",
    "authproviders",
    "clusterrolebindings",
    "clusterroles",
    "cluster",
    "cluster-members",
    "config",
    "etcd-replicators",
    "license",
    "namespaces",
    "provider",
    "providers",
    "users",
];

fn subject_matches(binding: &Binding, caller: &Caller) -> bool {
    binding
        .subjects
        .iter()
        .any(|subject| match subject.kind.to_ascii_lowercase().as_str() {
            "user" => subject.name == caller.username,
            "group" => caller.groups.iter().any(|g| g == &subject.name),
            _ => false,
        })
}

/// Splits comma-joined entries (`"get,list"`), as Sensu does on validation.
fn entries(list: &[String]) -> impl Iterator<Item = &str> {
    list.iter()
        .flat_map(|entry| entry.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

fn rule_matches(rule: &Rule, request: &Request, cluster_scope: bool) -> bool {
    let verb_ok = entries(&rule.verbs).any(|v| v == "*" || v == request.verb);
    let resource_ok = entries(&rule.resources).any(|r| {
        r == request.resource
            || (r == "*" && (cluster_scope || !CLUSTER_WIDE_RESOURCES.contains(&request.resource)))
    });
    let name_ok = rule.resource_names.is_empty()
        || request
            .name
            .is_some_and(|name| entries(&rule.resource_names).any(|n| n == name));
    verb_ok && resource_ok && name_ok
}

fn role_allows(role: Option<Arc<Value>>, request: &Request, cluster_scope: bool) -> bool {
    let Some(role) = role else { return false };
    let Ok(role) = RoleRules::deserialize(role.as_ref()) else {
        return false;
    };
    role.rules
        .iter()
        .any(|rule| rule_matches(rule, request, cluster_scope))
}

fn parse_binding(value: &Value) -> Option<Binding> {
    Binding::deserialize(value).ok()
}

/// The decision for `request` by `caller`.
pub fn allowed(source: &dyn RbacSource, caller: &Caller, request: &Request) -> bool {
    for binding in source.cluster_role_bindings() {
        let Some(binding) = parse_binding(&binding) else {
            continue;
        };
        if subject_matches(&binding, caller)
            && role_allows(source.cluster_role(&binding.role_ref.name), request, true)
        {
            return true;
        }
    }
    let Some(namespace) = request.namespace else {
        return false;
    };
    for binding in source.role_bindings(namespace) {
        let Some(binding) = parse_binding(&binding) else {
            continue;
        };
        if !subject_matches(&binding, caller) {
            continue;
        }
        let role = if binding.role_ref.kind.eq_ignore_ascii_case("clusterrole") {
            source.cluster_role(&binding.role_ref.name)
        } else {
            source.role(namespace, &binding.role_ref.name)
        };
        if role_allows(role, request, false) {
            return true;
        }
    }
    false
}

/// True if `caller` holds any grant in `namespace` (a namespace is listed to a user when it
/// is), or any cluster-wide grant.
pub fn can_see_namespace(source: &dyn RbacSource, caller: &Caller, namespace: &str) -> bool {
    let bound =
        |value: &Arc<Value>| parse_binding(value).is_some_and(|b| subject_matches(&b, caller));
    source
        .cluster_role_bindings()
        .iter()
        .filter(|b| bound(b))
        .filter_map(|b| parse_binding(b))
        .any(|b| {
            // system:user (self-service only) does not make every namespace visible.
            source.cluster_role(&b.role_ref.name).is_some_and(|role| {
                RoleRules::deserialize(role.as_ref())
                    .map(|r| {
                        r.rules
                            .iter()
                            .any(|rule| entries(&rule.resources).any(|res| res != "localselfuser"))
                    })
                    .unwrap_or(false)
            })
        })
        || source.role_bindings(namespace).iter().any(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Maps {
        crbs: Vec<Arc<Value>>,
        rbs: HashMap<String, Vec<Arc<Value>>>,
        cluster_roles: HashMap<String, Arc<Value>>,
        roles: HashMap<(String, String), Arc<Value>>,
    }

    impl RbacSource for Maps {
        fn cluster_role_bindings(&self) -> Vec<Arc<Value>> {
            self.crbs.clone()
        }
        fn role_bindings(&self, namespace: &str) -> Vec<Arc<Value>> {
            self.rbs.get(namespace).cloned().unwrap_or_default()
        }
        fn cluster_role(&self, name: &str) -> Option<Arc<Value>> {
            self.cluster_roles.get(name).cloned()
        }
        fn role(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
            self.roles
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned()
        }
    }

    fn caller(name: &str, groups: &[&str]) -> Caller {
        Caller {
            username: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            api_key: false,
        }
    }

    fn req<'a>(
        verb: &'a str,
        resource: &'a str,
        ns: Option<&'a str>,
        name: Option<&'a str>,
    ) -> Request<'a> {
        Request {
            verb,
            resource,
            namespace: ns,
            name,
        }
    }

    fn source() -> Maps {
        let mut maps = Maps::default();
        maps.cluster_roles.insert(
            "cluster-admin".into(),
            Arc::new(json!({"rules": [{"verbs": ["*"], "resources": ["*"]}]})),
        );
        maps.cluster_roles.insert(
            "view".into(),
            Arc::new(json!({"rules": [{"verbs": ["get", "list"], "resources": ["checks", "events", "namespaces"]}]})),
        );
        maps.crbs.push(Arc::new(json!({"role_ref": {"type": "ClusterRole", "name": "cluster-admin"}, "subjects": [{"type": "Group", "name": "cluster-admins"}]})));
        maps.rbs.insert(
            "dev".into(),
            vec![
                Arc::new(json!({"role_ref": {"type": "ClusterRole", "name": "view"}, "subjects": [{"type": "User", "name": "viewer"}]})),
                Arc::new(json!({"role_ref": {"type": "Role", "name": "ops"}, "subjects": [{"type": "Group", "name": "ops"}]})),
            ],
        );
        maps.roles.insert(
            ("dev".into(), "ops".into()),
            Arc::new(json!({"rules": [
                {"verbs": ["*"], "resources": ["*"], "resource_names": null},
                {"verbs": ["get"], "resources": ["users"], "resource_names": ["bob"]}
            ]})),
        );
        maps
    }

    #[test]
    fn decisions_follow_sensu_semantics() {
        let maps = source();
        let admin = caller("admin", &["cluster-admins"]);
        let viewer = caller("viewer", &[]);
        let ops = caller("olga", &["ops"]);
        let cases = [
            (&admin, req("delete", "users", None, Some("x")), true),
            (&admin, req("list", "checks", None, None), true),
            (&viewer, req("get", "checks", Some("dev"), Some("c")), true),
            (&viewer, req("list", "events", Some("dev"), None), true),
            (&viewer, req("create", "checks", Some("dev"), None), false),
            (
                &viewer,
                req("get", "checks", Some("prod"), Some("c")),
                false,
            ),
            (&viewer, req("list", "checks", None, None), false),
            (
                &ops,
                req("delete", "handlers", Some("dev"), Some("h")),
                true,
            ),
            // A Role's `*` does not reach cluster-wide types, even with a namespace in the request.
            (&ops, req("get", "users", Some("dev"), Some("alice")), false),
            (&ops, req("get", "users", Some("dev"), Some("bob")), true),
            (&ops, req("get", "checks", Some("prod"), Some("c")), false),
        ];
        for (who, request, expected) in cases {
            assert_eq!(
                allowed(&maps, who, &request),
                expected,
                "{} {:?}",
                who.username,
                request
            );
        }
    }

    #[test]
    fn namespace_visibility() {
        let maps = source();
        assert!(can_see_namespace(&maps, &caller("viewer", &[]), "dev"));
        assert!(!can_see_namespace(&maps, &caller("viewer", &[]), "prod"));
        assert!(can_see_namespace(
            &maps,
            &caller("admin", &["cluster-admins"]),
            "prod"
        ));
    }
}
