//! Where resources live in the API and how a parsed document becomes a resource ready to be
//! written: the URL of every kind (reference §1.4 table), the names users type for kinds
//! (`check`, `checks`, `CheckConfig`, `core/v2.CheckConfig`), and [`prepare`], which applies
//! sensuctl's rules to a document (wrapped or `type`-tagged unwrapped form, namespace
//! precedence, the `sensu.io/managed_by` label) and validates it with `Kind::normalize` so that
//! `create` can refuse a whole batch before writing anything.

use std::fmt;

use kensa_types::{Kind, ResourceError, Wrapped, CORE_V2};
use serde_json::{Map, Value};

use crate::documents::{Document, DocumentError};

/// The prefix of every core/v2 route.
pub const API_PREFIX: &str = "/api/core/v2";

/// Label `kensactl create` puts on what it writes, so that tooling can tell managed resources
/// apart. The key is Sensu's, so Sensu tooling keeps working on Kensa.
pub const MANAGED_BY_LABEL: &str = "sensu.io/managed_by";
pub const MANAGED_BY_KENSACTL: &str = "kensactl";
/// Agent-managed entities keep this value: the agent owns them, not the file.
pub const MANAGED_BY_AGENT: &str = "sensu-agent";

/// The command-line name of each kind (`kensactl check list`), in `Kind::ALL` order.
const CLI_NAMES: [(Kind, &str); 17] = [
    (Kind::Namespace, "namespace"),
    (Kind::ClusterRole, "cluster-role"),
    (Kind::ClusterRoleBinding, "cluster-role-binding"),
    (Kind::User, "user"),
    (Kind::ApiKey, "api-key"),
    (Kind::Role, "role"),
    (Kind::RoleBinding, "role-binding"),
    (Kind::Asset, "asset"),
    (Kind::HookConfig, "hook"),
    (Kind::CheckConfig, "check"),
    (Kind::EventFilter, "filter"),
    (Kind::Mutator, "mutator"),
    (Kind::Handler, "handler"),
    (Kind::Pipeline, "pipeline"),
    (Kind::Entity, "entity"),
    (Kind::Silenced, "silenced"),
    (Kind::Event, "event"),
];

/// `check` for `Kind::CheckConfig`.
pub fn cli_name(kind: Kind) -> &'static str {
    CLI_NAMES
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, name)| *name)
        .expect("every kind has a CLI name")
}

/// Resolves a kind the way users write it: the CLI name (`check`, `role-binding`), the URL
/// resource (`checks`), the type name or its snake_case alias (`CheckConfig`, `check_config`),
/// or the fully-qualified `core/v2.CheckConfig`.
pub fn parse_kind(name: &str) -> Option<Kind> {
    CLI_NAMES
        .iter()
        .find(|(_, cli)| *cli == name)
        .map(|(kind, _)| *kind)
        .or_else(|| Kind::from_resource(name))
        .or_else(|| Kind::from_type_name(name))
}

/// Kinds whose JSON carries no `metadata` (a Namespace is just `{name}`, a User is keyed by
/// `username`): they get no labels and no namespace.
pub fn has_metadata(kind: Kind) -> bool {
    !matches!(kind, Kind::Namespace | Kind::User)
}

/// The address of one resource. `namespace` is empty for cluster-wide kinds; an Event's `name`
/// is `<entity>/<check>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ResourceRef {
    /// The namespace is dropped for cluster-wide kinds so that callers can pass the current
    /// namespace unconditionally.
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        let namespace = if kind.is_namespaced() {
            namespace.into()
        } else {
            String::new()
        };
        ResourceRef {
            kind,
            namespace,
            name: name.into(),
        }
    }

    /// The address of an unwrapped value, `None` when it carries no name.
    pub fn of(kind: Kind, value: &Value) -> Option<Self> {
        let name = kind.name_of(value)?;
        Some(ResourceRef::new(kind, kind.namespace_of(value), name))
    }

    /// The URL path of the resource: `/api/core/v2/namespaces/{ns}/{resource}/{name}` for
    /// namespaced kinds, `/api/core/v2/{resource}/{name}` for cluster-wide ones, with each path
    /// segment escaped (asset names may contain `/`).
    pub fn path(&self) -> String {
        let base = collection_path(self.kind, &self.namespace);
        match (self.kind, self.name.split_once('/')) {
            (Kind::Event, Some((entity, check))) => {
                format!(
                    "{base}/{}/{}",
                    escape_segment(entity),
                    escape_segment(check)
                )
            }
            _ => format!("{base}/{}", escape_segment(&self.name)),
        }
    }
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind, self.name)?;
        if !self.namespace.is_empty() {
            write!(f, " in namespace {:?}", self.namespace)?;
        }
        Ok(())
    }
}

/// Which namespace(s) a list covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    AllNamespaces,
}

/// The collection a resource of `kind` in `namespace` belongs to (the POST/list URL).
pub fn collection_path(kind: Kind, namespace: &str) -> String {
    if kind.is_namespaced() {
        format!(
            "{API_PREFIX}/namespaces/{}/{}",
            escape_segment(namespace),
            kind.resource()
        )
    } else {
        format!("{API_PREFIX}/{}", kind.resource())
    }
}

/// The list URL: per namespace, or the cross-namespace route (`/api/core/v2/checks`).
/// Cluster-wide kinds have only the latter.
pub fn list_path(kind: Kind, scope: &Scope) -> String {
    match scope {
        Scope::Namespace(namespace) if kind.is_namespaced() => collection_path(kind, namespace),
        _ => format!("{API_PREFIX}/{}", kind.resource()),
    }
}

/// Percent-encodes one path segment: everything but RFC 3986 unreserved characters and the
/// `:`/`@` that names like `linux:check_cpu` use. `/` is escaped, so a name stays one segment.
pub fn escape_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'@' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// A document turned into a resource: where it came from, where it goes, and the unwrapped
/// body to send.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedResource {
    pub origin: String,
    pub index: usize,
    pub line: usize,
    pub reference: ResourceRef,
    pub body: Value,
}

/// What the document is prepared for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `create -f`: validated and labeled as managed by kensactl.
    Create,
    /// `edit`: validated, but the labels stay as the user left them.
    Update,
    /// `delete -f`: only the address matters, so a minimal document (`type` + name) is enough
    /// and nothing is validated or labeled.
    Delete,
}

/// Turns a parsed document into a resource, applying sensuctl's rules:
///
/// - the document is either wrapped (`type`, `api_version`, `metadata`, `spec`) or unwrapped
///   with a `type` key next to the fields; without `type` it is refused with a hint;
/// - namespaced kinds without a namespace get `default_namespace` (the definition wins over
///   `--namespace`, which the caller has already resolved against the profile);
/// - legacy `subdue` (checks) and `when` (filters) are dropped, as sensuctl 6 does;
/// - unless deleting, API keys are refused (only the server creates them) and the body is
///   decoded and validated with `Kind::normalize`; errors name the field as written in the
///   document (`spec.interval` for a wrapped one);
/// - for [`Purpose::Create`], the `sensu.io/managed_by: kensactl` label is added unless the
///   value is `sensu-agent`.
pub fn prepare(
    document: &Document,
    default_namespace: &str,
    purpose: Purpose,
) -> Result<PlannedResource, DocumentError> {
    let fail = |message: String| DocumentError::at(document, message);
    let Value::Object(object) = &document.value else {
        return Err(fail(format!(
            "a resource must be a mapping, found {}",
            json_type(&document.value)
        )));
    };
    if !object.contains_key("type") {
        return Err(fail(
            "the document has no \"type\": write it wrapped as {type, api_version, metadata, spec} \
             (e.g. `type: CheckConfig` with the fields under `spec:`), or add `type` next to the fields"
                .to_owned(),
        ));
    }
    let wrapped = object.contains_key("spec");
    let (kind, mut body) = if wrapped {
        let envelope: Wrapped = serde_json::from_value(document.value.clone())
            .map_err(|err| fail(format!("not a valid resource envelope: {err}")))?;
        envelope
            .unwrap()
            .map_err(|err| fail(describe_error(None, true, &err)))?
    } else {
        unwrapped_with_type(object).map_err(fail)?
    };

    strip_legacy_fields(kind, &mut body);
    if kind.is_namespaced() {
        fill_namespace(kind, &mut body, default_namespace);
    }
    let label = |message: &str| format!("{kind}: {message}");

    if purpose != Purpose::Delete {
        if kind == Kind::ApiKey {
            return Err(fail(label(
                "API keys cannot be created from a file, the server generates them (use `kensactl api-key grant USER`)",
            )));
        }
        if purpose == Purpose::Create && has_metadata(kind) {
            add_managed_by_label(&mut body);
        }
        let normalized = kind.normalize(body.clone()).map_err(|err| {
            let name = kind.name_of(&body);
            fail(describe_error(Some((kind, name.as_deref())), wrapped, &err))
        })?;
        // Some names are derived by the server's rules (a Silenced is `subscription:check`);
        // the normalized value has them even when the document does not.
        if has_metadata(kind) && kind != Kind::Event && kind.name_of(&body).is_none() {
            if let Some(name) = kind.name_of(&normalized) {
                metadata_mut(&mut body).insert("name".into(), Value::String(name));
            }
        }
    }

    let reference = ResourceRef::of(kind, &body)
        .ok_or_else(|| fail(label(&missing_name_message(kind, wrapped))))?;
    Ok(PlannedResource {
        origin: document.origin.clone(),
        index: document.index,
        line: document.line,
        reference,
        body,
    })
}

/// An unwrapped document that names its kind with `type` (and optionally `api_version`); the
/// caller has checked that `type` is there.
fn unwrapped_with_type(object: &Map<String, Value>) -> Result<(Kind, Value), String> {
    let type_value = object.get("type").unwrap_or(&Value::Null);
    let type_name = type_value.as_str().unwrap_or_default();
    let kind = Kind::from_type_name(type_name).ok_or_else(|| {
        format!(
            "type: {type_value} is not a resource type (known: {}); a document without `spec` is read as \
             unwrapped, so a Handler or Mutator needs the wrapped form",
            Kind::ALL.map(Kind::type_name).join(", ")
        )
    })?;
    match object.get("api_version").and_then(Value::as_str) {
        None | Some("") | Some(CORE_V2) => {}
        Some(other) => {
            return Err(format!(
                "api_version: {other:?} is not supported (only {CORE_V2})"
            ))
        }
    }
    let mut body = object.clone();
    body.remove("type");
    body.remove("api_version");
    Ok((kind, Value::Object(body)))
}

fn strip_legacy_fields(kind: Kind, body: &mut Value) {
    let legacy = match kind {
        Kind::CheckConfig => "subdue",
        Kind::EventFilter => "when",
        _ => return,
    };
    if let Some(object) = body.as_object_mut() {
        object.remove(legacy);
    }
}

fn metadata_mut(body: &mut Value) -> &mut Map<String, Value> {
    let object = body.as_object_mut().expect("resources are objects");
    let meta = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut().expect("made an object above")
}

fn fill_namespace(kind: Kind, body: &mut Value, default_namespace: &str) {
    if kind.namespace_of(body).is_empty() && !default_namespace.is_empty() {
        metadata_mut(body).insert(
            "namespace".into(),
            Value::String(default_namespace.to_owned()),
        );
    }
}

fn add_managed_by_label(body: &mut Value) {
    let meta = metadata_mut(body);
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if !labels.is_object() {
        *labels = Value::Object(Map::new());
    }
    let labels = labels.as_object_mut().expect("made an object above");
    if labels.get(MANAGED_BY_LABEL).and_then(Value::as_str) != Some(MANAGED_BY_AGENT) {
        labels.insert(
            MANAGED_BY_LABEL.into(),
            Value::String(MANAGED_BY_KENSACTL.into()),
        );
    }
}

fn missing_name_message(kind: Kind, wrapped: bool) -> String {
    let spec = if wrapped { "spec." } else { "" };
    match kind {
        Kind::Namespace => format!("{spec}name: must not be empty"),
        Kind::User => format!("{spec}username: must not be empty"),
        Kind::Event => {
            format!("{spec}entity.metadata.name and {spec}check.metadata.name: must not be empty")
        }
        _ => "metadata.name: must not be empty".to_owned(),
    }
}

/// Renders a resource-model error with the field path as the user wrote it: fields of a
/// wrapped document live under `spec.` except the (merged) metadata.
fn describe_error(
    subject: Option<(Kind, Option<&str>)>,
    wrapped: bool,
    err: &ResourceError,
) -> String {
    let (field, message) = match err {
        ResourceError::Decode { path, message } => (Some(path.as_str()), message.as_str()),
        ResourceError::Invalid {
            field: Some(field),
            message,
        } => {
            let message = message
                .strip_prefix(&format!("{field}: "))
                .unwrap_or(message);
            (Some(field.as_str()), message)
        }
        ResourceError::Invalid {
            field: None,
            message,
        } => (None, message.as_str()),
    };
    let mut out = String::new();
    if let Some((kind, name)) = subject {
        out.push_str(kind.type_name());
        if let Some(name) = name {
            out.push_str(&format!(" {name:?}"));
        }
        out.push_str(": ");
    }
    if let Some(field) = field {
        out.push_str(&document_field(wrapped, field));
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

fn document_field(wrapped: bool, field: &str) -> String {
    let top_level = ["type", "api_version", "spec", "(body)"];
    if !wrapped
        || field.starts_with("metadata")
        || top_level.contains(&field)
        || field.starts_with("spec")
    {
        field.to_owned()
    } else {
        format!("spec.{field}")
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::{parse_source, Source};
    use serde_json::json;

    #[test]
    fn paths_follow_the_sensu_table() {
        let cases = [
            (
                ResourceRef::new(Kind::CheckConfig, "default", "web"),
                "/api/core/v2/namespaces/default/checks/web",
            ),
            (
                ResourceRef::new(Kind::Namespace, "ignored", "prod"),
                "/api/core/v2/namespaces/prod",
            ),
            (
                ResourceRef::new(Kind::ClusterRole, "ignored", "admin"),
                "/api/core/v2/clusterroles/admin",
            ),
            (
                ResourceRef::new(Kind::User, "", "alice"),
                "/api/core/v2/users/alice",
            ),
            (
                ResourceRef::new(Kind::Event, "dev", "web1/ping"),
                "/api/core/v2/namespaces/dev/events/web1/ping",
            ),
            (
                ResourceRef::new(Kind::Asset, "default", "sensu/ruby runtime"),
                "/api/core/v2/namespaces/default/assets/sensu%2Fruby%20runtime",
            ),
            (
                ResourceRef::new(Kind::Silenced, "default", "linux:*"),
                "/api/core/v2/namespaces/default/silenced/linux:%2A",
            ),
        ];
        for (reference, path) in cases {
            assert_eq!(reference.path(), path);
        }
        assert_eq!(
            list_path(Kind::CheckConfig, &Scope::AllNamespaces),
            "/api/core/v2/checks"
        );
        assert_eq!(
            list_path(Kind::User, &Scope::Namespace("default".into())),
            "/api/core/v2/users"
        );
    }

    #[test]
    fn kinds_resolve_from_every_spelling() {
        for spelling in [
            "check",
            "checks",
            "CheckConfig",
            "check_config",
            "core/v2.CheckConfig",
        ] {
            assert_eq!(parse_kind(spelling), Some(Kind::CheckConfig), "{spelling}");
        }
        for kind in Kind::ALL {
            assert_eq!(parse_kind(cli_name(kind)), Some(kind));
        }
        assert_eq!(parse_kind("gizmo"), None);
    }

    fn prepare_fixture(
        name: &str,
        namespace: &str,
        purpose: Purpose,
    ) -> Vec<Result<PlannedResource, DocumentError>> {
        let path = format!("{}/testdata/documents/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let (documents, errors) = parse_source(&Source {
            origin: name.into(),
            text,
        });
        assert!(errors.is_empty(), "{errors:?}");
        documents
            .iter()
            .map(|d| prepare(d, namespace, purpose))
            .collect()
    }

    #[test]
    fn mixed_wrapped_and_unwrapped_documents() {
        let planned: Vec<PlannedResource> =
            prepare_fixture("mixed.yaml", "fallback", Purpose::Create)
                .into_iter()
                .collect::<Result<_, _>>()
                .unwrap();
        let refs: Vec<String> = planned.iter().map(|p| p.reference.to_string()).collect();
        assert_eq!(
            refs,
            [
                r#"Namespace "prod""#,
                r#"CheckConfig "wrapped" in namespace "prod""#,
                r#"HookConfig "unwrapped" in namespace "fallback""#,
                r#"EventFilter "agent-owned" in namespace "fallback""#,
                r#"ClusterRole "reader""#,
            ]
        );
        let labels = |i: usize| planned[i].body["metadata"]["labels"].clone();
        assert_eq!(
            labels(1),
            json!({"team": "ops", "sensu.io/managed_by": "kensactl"})
        );
        assert_eq!(labels(3), json!({"sensu.io/managed_by": "sensu-agent"}));
        assert!(
            planned[0].body.get("metadata").is_none(),
            "namespaces carry no metadata"
        );
        assert!(
            planned[1].body.get("subdue").is_none(),
            "legacy subdue is dropped"
        );
        assert_eq!(planned[1].body["command"], "true");
        assert!(
            planned[2].body.get("type").is_none(),
            "the type key is not part of the body"
        );
        assert_eq!(planned[4].reference.namespace, "");
    }

    #[test]
    fn document_errors_name_document_line_and_field() {
        let results = prepare_fixture("errors.yaml", "default", Purpose::Create);
        let messages: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(p) => format!("ok {}", p.reference),
                Err(e) => e.to_string(),
            })
            .collect();
        let expected = [
            r#"ok CheckConfig "good" in namespace "default""#,
            r#"errors.yaml: document 2 (line 9): the document has no "type""#,
            r#"errors.yaml: document 3 (line 15): type: "Gizmo" is not a resource type"#,
            r#"errors.yaml: document 4 (line 19): type: type could not be found: "Gizmo""#,
            r#"errors.yaml: document 5 (line 24): APIKey: API keys cannot be created from a file"#,
            r#"errors.yaml: document 6 (line 31): Handler: metadata.name: "#,
            r#"errors.yaml: document 7 (line 36): a resource must be a mapping, found a list"#,
            r#"errors.yaml: document 8 (line 40): spec: no spec provided"#,
            r#"errors.yaml: document 9 (line 45): CheckConfig "bad-interval": spec.interval: invalid type: string "often""#,
            r#"errors.yaml: document 10 (line 53): CheckConfig "bad-ttl": spec.ttl: ttl must be greater than check interval"#,
            r#"errors.yaml: document 11 (line 57): the document has no "type""#,
        ];
        assert_eq!(messages.len(), expected.len(), "{messages:#?}");
        for (got, want) in messages.iter().zip(expected) {
            assert!(got.starts_with(want), "got {got:?}\nwant prefix {want:?}");
        }
    }

    #[test]
    fn delete_needs_only_an_address() {
        let document = Document {
            origin: "-".into(),
            index: 1,
            line: 1,
            value: json!({"type": "APIKey", "metadata": {"name": "0d7c-key"}, "spec": {}}),
        };
        let planned = prepare(&document, "default", Purpose::Delete).unwrap();
        assert_eq!(planned.reference.path(), "/api/core/v2/apikeys/0d7c-key");
        assert!(
            planned.body["metadata"].get("labels").is_none(),
            "delete adds no label"
        );
    }

    #[test]
    fn validation_errors_map_fields_into_the_document() {
        let cases = [
            (
                true,
                ResourceError::Decode {
                    path: "interval".into(),
                    message: "bad".into(),
                },
                "spec.interval: bad",
            ),
            (
                false,
                ResourceError::Decode {
                    path: "interval".into(),
                    message: "bad".into(),
                },
                "interval: bad",
            ),
            (
                true,
                ResourceError::invalid_field("metadata.name", "must not be empty"),
                "metadata.name: must not be empty",
            ),
            (
                true,
                ResourceError::invalid_field("ttl", "too small"),
                "spec.ttl: too small",
            ),
            (
                true,
                ResourceError::invalid("flap thresholds"),
                "flap thresholds",
            ),
        ];
        for (wrapped, err, want) in cases {
            assert_eq!(describe_error(None, wrapped, &err), want);
        }
    }
}
