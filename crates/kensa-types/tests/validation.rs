//! Validation as a table: a valid base body per kind, a JSON merge patch (RFC 7386: `null`
//! removes) that breaks one rule, and the error `Kind::normalize` must report — Sensu's message
//! and the field path. Cases that break two rules at once pin Sensu's order.

use kensa_types::Kind;
use serde_json::{json, Value};

fn base(kind: Kind) -> Value {
    let meta = json!({"name": "example", "namespace": "default"});
    match kind {
        Kind::CheckConfig => {
            json!({"command": "true", "interval": 60, "subscriptions": ["linux"], "metadata": meta})
        }
        Kind::Entity => json!({"entity_class": "agent", "metadata": meta}),
        Kind::Event => json!({
            "entity": {"entity_class": "agent", "metadata": {"name": "web1", "namespace": "default"}},
            "check": {"interval": 60, "publish": true, "status": 2, "metadata": {"name": "disk", "namespace": "default"}},
            "metadata": {"namespace": "default"}
        }),
        Kind::Handler => json!({"type": "pipe", "command": "cat", "metadata": meta}),
        Kind::EventFilter => {
            json!({"action": "allow", "expressions": ["event.check.occurrences == 1"], "metadata": meta})
        }
        Kind::Mutator => json!({"command": "jq .", "metadata": meta}),
        Kind::Asset => {
            json!({"url": "https://example.com/a.tar.gz", "sha512": "f".repeat(128), "metadata": meta})
        }
        Kind::HookConfig => json!({"command": "ps aux", "timeout": 10, "metadata": meta}),
        Kind::Silenced => {
            json!({"subscription": "linux", "check": "disk", "metadata": {"namespace": "default"}})
        }
        Kind::Namespace => json!({"name": "production"}),
        Kind::User => json!({"username": "alice", "password": "P@ssw0rd!"}),
        Kind::Role => {
            json!({"rules": [{"verbs": ["get"], "resources": ["checks"]}], "metadata": meta})
        }
        Kind::ClusterRole => {
            json!({"rules": [{"verbs": ["*"], "resources": ["*"]}], "metadata": {"name": "admin"}})
        }
        Kind::RoleBinding => json!({
            "role_ref": {"type": "Role", "name": "reader"}, "subjects": [{"type": "User", "name": "alice"}], "metadata": meta
        }),
        Kind::ClusterRoleBinding => json!({
            "role_ref": {"type": "ClusterRole", "name": "admin"}, "subjects": [{"type": "Group", "name": "ops"}],
            "metadata": {"name": "admins"}
        }),
        Kind::ApiKey => {
            json!({"username": "alice", "metadata": {"name": "83abef1e-e7d7-4beb-91fc-79ad90084d5b"}})
        }
        Kind::Pipeline => json!({
            "metadata": meta,
            "workflows": [{"name": "alerts", "handler": {"name": "slack", "type": "Handler", "api_version": "core/v2"}}]
        }),
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[test]
fn every_base_is_valid() {
    for kind in Kind::ALL {
        if let Err(err) = kind.normalize(base(kind)) {
            panic!("{kind} base: {err}");
        }
    }
}

#[test]
fn broken_rules_are_reported_with_sensus_message_and_the_field() {
    let cases: Vec<(Kind, Value, &str)> = vec![
        // CheckConfig, in Sensu's validation order.
        (Kind::CheckConfig, json!({"metadata": {"name": ""}, "interval": 0}), "metadata.name: check name must not be empty"),
        (Kind::CheckConfig, json!({"metadata": {"name": "cpu check"}}), "check name cannot contain spaces or special characters"),
        (Kind::CheckConfig, json!({"cron": "* * * * *"}), "cron: must only specify either an interval or a cron schedule"),
        (Kind::CheckConfig, json!({"interval": 0, "cron": "* * *"}), "cron: check cron string is invalid: expected exactly 5 fields"),
        (Kind::CheckConfig, json!({"interval": 0, "cron": "@every 90"}), "check cron string is invalid"),
        (
            Kind::CheckConfig,
            json!({"interval": 0, "metadata": {"namespace": null}}),
            "interval: check interval must be greater than 0 or a valid cron schedule must be provided",
        ),
        (Kind::CheckConfig, json!({"metadata": {"namespace": null}, "ttl": 10}), "metadata.namespace: namespace must be set"),
        (Kind::CheckConfig, json!({"ttl": 60}), "ttl: ttl must be greater than check interval"),
        (Kind::CheckConfig, json!({"runtime_assets": ["ok", ""]}), "runtime_assets[1]: asset's name cannot be empty"),
        (
            Kind::CheckConfig,
            json!({"runtime_assets": ["sensu ruby"]}),
            "asset's name may only contain letters, forward slashes, underscores, dashes and numbers",
        ),
        (Kind::CheckConfig, json!({"subscriptions": ["linux", ""]}), "subscriptions[1]: subscriptions cannot be empty strings"),
        (Kind::CheckConfig, json!({"proxy_entity_name": "web site"}), "proxy entity name cannot contain spaces or special characters"),
        (
            Kind::CheckConfig,
            json!({"proxy_requests": {"splay_coverage": 101}}),
            "proxy_requests.splay_coverage: proxy request splay coverage must be between 0 and 100",
        ),
        (Kind::CheckConfig, json!({"proxy_requests": {"splay": true}}), "must be greater than 0 if splay is enabled"),
        (Kind::CheckConfig, json!({"output_metric_format": "json"}), "output_metric_format: output metric format is not valid"),
        (Kind::CheckConfig, json!({"low_flap_threshold": 60, "high_flap_threshold": 20}), "invalid flap thresholds"),
        (Kind::CheckConfig, json!({"env_vars": ["A=1", "B"]}), "env_vars[1]: environment variables must be of the form FOO=BAR"),
        (
            Kind::CheckConfig,
            json!({"subdues": [{"begin": "2022-01-01T00:00:00Z", "end": "2022-01-02T00:00:00Z", "repeat": ["hourly"]}]}),
            "subdues[0].repeat[0]: subdue 0 invalid: invalid repeat period: hourly",
        ),
        (
            Kind::CheckConfig,
            json!({"subdues": [{"begin": "2022-01-02T00:00:00Z", "end": "2022-01-01T00:00:00Z"}]}),
            "subdue 0 invalid: end time must be after begin time",
        ),
        (
            Kind::CheckConfig,
            json!({"subdues": [{"begin": "tomorrow", "end": "2022-01-01T00:00:00Z"}]}),
            "subdues[0].begin: subdue 0 invalid: invalid begin time format",
        ),
        (
            Kind::CheckConfig,
            json!({"subdue": {"days": {"all": [{"begin": "25:00", "end": "1:00AM"}]}}}),
            "subdue.days.all[0].begin: parsing time \"25:00\"",
        ),
        (Kind::CheckConfig, json!({"check_hooks": [{"fatal": ["dump"]}]}), "check_hooks[0]: valid check hook types are"),
        (Kind::CheckConfig, json!({"check_hooks": [{"critical": []}]}), "check_hooks[0]: hooks cannot be empty"),
        (Kind::CheckConfig, json!({"interval": "often"}), "interval: invalid type: string \"often\""),
        (Kind::CheckConfig, json!({"check_hooks": [{"ok": ["a"], "critical": ["b"]}]}), "check_hooks[0]: a hook list has exactly one hook type"),
        // Entity.
        (Kind::Entity, json!({"metadata": {"name": "web/1"}}), "metadata.name: entity name cannot contain spaces or special characters"),
        (Kind::Entity, json!({"entity_class": ""}), "entity_class: entity class must not be empty"),
        (Kind::Entity, json!({"metadata": {"namespace": ""}}), "namespace must be set"),
        // Event, in Sensu's order: entity, check-or-metrics, entity rules, check rules, pipelines, name.
        (Kind::Event, json!({"entity": null}), "entity: event must contain an entity"),
        (Kind::Event, json!({"check": null}), "event must contain a check or metrics"),
        (
            Kind::Event,
            json!({"entity": {"entity_class": null}, "check": {"interval": 0}}),
            "entity.entity_class: entity is invalid: entity class must not be empty",
        ),
        (
            Kind::Event,
            json!({"check": {"interval": 0}}),
            "check.interval: check is invalid: check interval must be greater than or equal to 1",
        ),
        (Kind::Event, json!({"check": {"interval": 0, "publish": false, "ttl": 3}}), "check is invalid: minimum ttl is 5 seconds"),
        (Kind::Event, json!({"check": {"max_output_size": -1}}), "check.max_output_size: check is invalid: max_output_size must be >= 0"),
        (
            Kind::Event,
            json!({"check": {"output_metric_thresholds": [{"name": "cpu"}]}}),
            "check.output_metric_thresholds[0].thresholds: check is invalid: invalid metric threshold 0: there must be at least one threshold rule",
        ),
        (
            Kind::Event,
            json!({"check": {"output_metric_thresholds": [{"name": "cpu", "thresholds": [{"max": "lots"}]}]}}),
            "invalid metric threshold 0: rule 0: max must be a floating point number",
        ),
        (
            Kind::Event,
            json!({"pipelines": [{"name": "slack", "type": "Handler", "api_version": "core/v2"}]}),
            "pipelines[0]: pipeline reference is invalid: resource type not capable of acting as a pipeline: core/v2.Handler",
        ),
        (Kind::Event, json!({"metadata": {"name": "my-event"}}), "metadata.name: events cannot be named"),
        (Kind::Event, json!({"id": "not-a-uuid"}), "id: invalid event id"),
        // Handler.
        (Kind::Handler, json!({"type": null}), "type: empty handler type"),
        (Kind::Handler, json!({"type": "grpc"}), "type: unknown handler type: grpc"),
        (Kind::Handler, json!({"command": "  "}), "command: missing command"),
        (Kind::Handler, json!({"type": "tcp"}), "socket: tcp and udp handlers need a valid socket"),
        (Kind::Handler, json!({"type": "udp", "socket": {"port": 514}}), "socket.host: socket host undefined"),
        (Kind::Handler, json!({"type": "tcp", "socket": {"host": "10.0.0.1"}}), "socket.port: socket port undefined"),
        (Kind::Handler, json!({"metadata": {"namespace": null}}), "namespace must be set"),
        // EventFilter.
        (Kind::EventFilter, json!({"action": "permit"}), "action: action 'permit' is not valid"),
        (Kind::EventFilter, json!({"expressions": []}), "expressions: filter must have one or more expressions"),
        (
            Kind::EventFilter,
            json!({"when": {"days": {"friday": [{"begin": "5:00PM", "end": "noon"}]}}}),
            "when.days.friday[0].end",
        ),
        // Mutator.
        (Kind::Mutator, json!({"command": null}), "command: mutator command or eval must be set"),
        (Kind::Mutator, json!({"type": "javascript"}), "\"command\" used with javascript mutator, should be \"eval\""),
        (Kind::Mutator, json!({"type": "lua"}), "type: invalid mutator type \"lua\""),
        // Asset.
        (Kind::Asset, json!({"metadata": {"name": "my asset"}}), "metadata.name: name may only contain letters"),
        (Kind::Asset, json!({"metadata": {"namespace": null}}), "metadata.namespace: namespace cannot be empty"),
        (Kind::Asset, json!({"sha512": null}), "sha512: SHA-512 checksum cannot be empty"),
        (Kind::Asset, json!({"sha512": "abc"}), "SHA-512 checksum must be at least 128 characters"),
        (Kind::Asset, json!({"url": null}), "url: URL cannot be empty"),
        (
            Kind::Asset,
            json!({"url": null, "builds": [{"url": "https://example.com/b.tar.gz", "sha512": "e".repeat(128)}, {"url": "https://example.com/c.tar.gz"}]}),
            "builds[1].sha512: SHA-512 checksum cannot be empty",
        ),
        // HookConfig.
        (Kind::HookConfig, json!({"command": ""}), "command: command cannot be empty"),
        (Kind::HookConfig, json!({"timeout": 0}), "timeout: hook timeout must be greater than 0"),
        (Kind::HookConfig, json!({"metadata": {"name": null}}), "hook name must not be empty"),
        // Silenced.
        (Kind::Silenced, json!({"subscription": null, "check": null}), "must provide check or subscription"),
        (Kind::Silenced, json!({"subscription": "*", "check": "*"}), "must provide check or subscription"),
        (Kind::Silenced, json!({"subscription": "a:b:c"}), "subscription: subscription name cannot contain spaces or special characters"),
        (Kind::Silenced, json!({"check": "disk usage"}), "check: check name cannot contain spaces"),
        // Namespace and User.
        (Kind::Namespace, json!({"name": ""}), "name: namespace name must not be empty"),
        (Kind::Namespace, json!({"name": "my namespace"}), "namespace name cannot contain spaces or special characters"),
        (Kind::User, json!({"username": "Alice"}), "username: username cannot contain spaces or special characters"),
        (Kind::User, json!({"password": "short"}), "password: password length must be at least 8 characters"),
        // RBAC.
        (Kind::Role, json!({"rules": []}), "rules: a Role must have at least one rule"),
        (Kind::Role, json!({"rules": [{"verbs": ["get,patch"], "resources": ["checks"]}]}), "rules[0].verbs: the verb \"patch\" is not valid"),
        (Kind::Role, json!({"metadata": {"namespace": null}, "rules": []}), "the Role namespace must be set"),
        (Kind::Role, json!({"metadata": {"name": "a:b:c"}}), "the Role name cannot contain spaces or special characters"),
        (Kind::ClusterRole, json!({"rules": null, "metadata": {"namespace": "default"}}), "a ClusterRole must have at least one rule"),
        (Kind::ClusterRole, json!({"metadata": {"namespace": "default"}}), "metadata.namespace: ClusterRole cannot have a namespace"),
        (
            Kind::RoleBinding,
            json!({"role_ref": {"type": "team"}}),
            "role_ref.type: roleRef type \"Team\" is invalid, expected either \"ClusterRole\" or \"Role\"",
        ),
        (Kind::RoleBinding, json!({"role_ref": {"name": ""}}), "role_ref.name: roleRef name for Role is required"),
        (Kind::RoleBinding, json!({"subjects": []}), "subjects: a RoleBinding must have at least one subject"),
        (
            Kind::RoleBinding,
            json!({"subjects": [{"type": "robot", "name": "r2"}]}),
            "subjects[0].type: subject type \"Robot\" is invalid, expected either \"Group\" or \"User\"",
        ),
        (Kind::RoleBinding, json!({"subjects": [{"type": "group"}]}), "subject name for the \"Group\" type is required"),
        (Kind::RoleBinding, json!({"metadata": {"namespace": null}}), "the RoleBinding namespace must be set"),
        (Kind::ClusterRoleBinding, json!({"metadata": {"namespace": "default"}}), "ClusterRoleBinding cannot have a namespace"),
        // APIKey and Pipeline.
        (Kind::ApiKey, json!({"metadata": {"namespace": "default"}}), "api key cannot have a namespace"),
        (Kind::ApiKey, json!({"username": null}), "username: api key must have a username"),
        (Kind::ApiKey, json!({"metadata": {"name": null}}), "api key name must not be empty"),
        (Kind::Pipeline, json!({"metadata": {"name": "pipe line"}}), "pipeline name cannot contain spaces"),
        (Kind::Pipeline, json!({"workflows": [{"name": "alerts"}]}), "workflows[0].handler: workflow 0: handler must be set"),
        (Kind::Pipeline, json!({"workflows": [{"name": ""}]}), "workflows[0].name: workflow 0: name must not be empty"),
        (
            Kind::Pipeline,
            json!({"workflows": [{"name": "w", "handler": {"name": "x", "type": "Handler", "api_version": "core/v2"},
                                  "filters": [{"name": "slack", "type": "Handler", "api_version": "core/v2"}]}]}),
            "workflows[0].filters[0].type: workflow 0: filter resource type not capable of filtering events: core/v2.Handler",
        ),
        (
            Kind::Pipeline,
            json!({"workflows": [{"name": "w", "handler": {"name": "x", "type": "Handler"}}]}),
            "workflows[0].handler.api_version: workflow 0: handler api_version must be set",
        ),
    ];

    let mut failures = Vec::new();
    for (kind, patch, expected) in cases {
        let mut body = base(kind);
        merge(&mut body, &patch);
        match kind.normalize(body) {
            Ok(_) => failures.push(format!("{kind} {patch}: accepted, expected {expected:?}")),
            Err(err) if err.to_string().contains(expected) => {}
            Err(err) => failures.push(format!(
                "{kind} {patch}:\n  expected {expected:?}\n       got {:?}",
                err.to_string()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
