//! Field sets (reference §2.18), selectors over them, and output redaction, on the fixtures of
//! `testdata/resources`: what the REST API's `fieldSelector`/`labelSelector` filtering and its
//! entity/event responses will see.

use std::path::Path;

use kensa_types::Kind;
use serde_json::Value;

fn fixture(path: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/resources")
        .join(path);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn lookup<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A kind, a fixture, and entries its field set must contain.
type FieldCase = (Kind, &'static str, &'static [(&'static str, &'static str)]);

#[test]
fn field_sets_follow_sensu() {
    let cases: &[FieldCase] = &[
        (
            Kind::CheckConfig,
            "check_config/cron_proxy_requests.expected.json",
            &[
                ("check.name", "check-website"),
                ("check.namespace", "production"),
                ("check.handlers", "slack"),
                ("check.publish", "true"),
                ("check.round_robin", "true"),
                (
                    "check.runtime_assets",
                    "sensu-plugins/sensu-plugins-http,sensu/sensu-ruby-runtime",
                ),
                ("check.subscriptions", "proxy"),
                (
                    "check.pipelines",
                    "core/v2.Pipeline(Name=incident-alerts),core/v2.Pipeline(Name=metrics)",
                ),
                ("check.labels.region", "us-west-1"),
                ("check.labels.sensu.io/managed_by", "sensuctl"),
            ],
        ),
        (
            Kind::Entity,
            "entity/agent.expected.json",
            &[
                ("entity.name", "sensu-centos"),
                ("entity.deregister", "false"),
                ("entity.entity_class", "agent"),
                ("entity.subscriptions", "linux,entity:sensu-centos"),
                ("entity.labels.region", "us-west-1"),
            ],
        ),
        (
            Kind::Event,
            "event/check_result.expected.json",
            &[
                ("event.name", ""),
                ("event.namespace", "default"),
                ("event.is_silenced", "true"),
                ("event.timestamp", "1552582569"),
                ("event.check.is_silenced", "true"),
                ("event.check.name", "check-cpu"),
                ("event.check.status", "2"),
                ("event.check.state", "failing"),
                ("event.check.last_ok", "1552582449"),
                ("event.check.subscriptions", "linux"),
                ("event.entity.name", "sensu-centos"),
                ("event.entity.entity_class", "agent"),
                // Labels of the event, entity and check merged; the check's win.
                ("event.labels.team", "sre"),
                ("event.labels.region", "us-west-1"),
                ("event.labels.tier", "1"),
            ],
        ),
        (
            Kind::Handler,
            "handler/pipe.expected.json",
            &[
                ("handler.type", "pipe"),
                ("handler.filters", "is_incident,not_silenced"),
                ("handler.handlers", ""),
                ("handler.mutator", "only_check_output"),
                ("handler.labels.team", "ops"),
            ],
        ),
        (
            Kind::EventFilter,
            "event_filter/nine_to_fiver.expected.json",
            &[("filter.action", "deny")],
        ),
        (
            Kind::Mutator,
            "mutator/pipe.expected.json",
            &[("mutator.runtime_assets", "sensu/example-mutator")],
        ),
        (
            Kind::Asset,
            "asset/single.expected.json",
            &[
                ("asset.name", "check-cpu-usage"),
                ("asset.filters", "entity.system.os == 'linux'"),
            ],
        ),
        (
            Kind::HookConfig,
            "hook_config/process_tree.expected.json",
            &[
                ("hook.name", "process_tree"),
                ("hook.labels.environment", "development"),
            ],
        ),
        (
            Kind::Silenced,
            "silenced/entity_all_checks.expected.json",
            &[
                ("silenced.name", "entity:i-424242:*"),
                ("silenced.subscription", "entity:i-424242"),
                ("silenced.check", ""),
                ("silenced.creator", "admin"),
                ("silenced.expire_on_resolve", "true"),
                ("silenced.reason", "rebooting the database server"),
                ("silenced.labels.ticket", "OPS-1234"),
            ],
        ),
        (
            Kind::Namespace,
            "namespace/production.expected.json",
            &[("namespace.name", "production")],
        ),
        (
            Kind::User,
            "user/alice.expected.json",
            &[
                ("user.username", "alice"),
                ("user.disabled", "false"),
                ("user.groups", "ops,dev"),
            ],
        ),
        (
            Kind::Role,
            "role/event_reader.expected.json",
            &[("role.name", "event-reader"), ("role.namespace", "default")],
        ),
        (
            Kind::ClusterRole,
            "cluster_role/view.expected.json",
            &[("clusterrole.name", "view")],
        ),
        (
            Kind::RoleBinding,
            "role_binding/ops_edit.expected.json",
            &[
                ("rolebinding.name", "ops-edit"),
                ("rolebinding.role_ref.name", "edit"),
                ("rolebinding.role_ref.type", "ClusterRole"),
            ],
        ),
        (
            Kind::ClusterRoleBinding,
            "cluster_role_binding/cluster_admin.expected.json",
            &[
                ("clusterrolebinding.name", "cluster-admin"),
                ("clusterrolebinding.role_ref.type", "ClusterRole"),
            ],
        ),
        (
            Kind::ApiKey,
            "api_key/key.expected.json",
            &[("api_key.username", "admin")],
        ),
        (
            Kind::Pipeline,
            "pipeline/incident_alerts.expected.json",
            &[
                ("pipeline.name", "incident-alerts"),
                ("pipeline.namespace", "default"),
            ],
        ),
    ];
    for (kind, path, expected) in cases {
        let fields = kind.fields(&fixture(path));
        for (key, value) in *expected {
            assert_eq!(lookup(&fields, key), Some(*value), "{kind} {path}: {key}");
        }
        for (key, _) in &fields {
            let prefix = format!("{}.", kind.field_prefix());
            assert!(
                key.starts_with(&prefix),
                "{kind}: {key} lacks the {prefix} prefix"
            );
        }
    }
}

#[test]
fn selectors_filter_fixtures_like_the_api() {
    let cases: &[(Kind, &str, &str, &str, bool)] = &[
        (
            Kind::CheckConfig,
            "check_config/cron_proxy_requests.expected.json",
            "field",
            "proxy in check.subscriptions",
            true,
        ),
        (
            Kind::CheckConfig,
            "check_config/cron_proxy_requests.expected.json",
            "field",
            "check.name matches \"website\"",
            true,
        ),
        (
            Kind::CheckConfig,
            "check_config/cron_proxy_requests.expected.json",
            "field",
            "check.namespace in [dev, staging]",
            false,
        ),
        (
            Kind::CheckConfig,
            "check_config/cron_proxy_requests.expected.json",
            "label",
            "region == \"us-west-1\"",
            true,
        ),
        (
            Kind::CheckConfig,
            "check_config/interval_subdues.expected.json",
            "label",
            "region == \"us-west-1\"",
            false,
        ),
        (
            Kind::CheckConfig,
            "check_config/interval_subdues.expected.json",
            "label",
            "region != \"us-west-1\"",
            true,
        ),
        (
            Kind::Event,
            "event/check_result.expected.json",
            "field",
            "event.check.status == \"2\" && event.is_silenced == true",
            true,
        ),
        (
            Kind::Event,
            "event/check_result.expected.json",
            "field",
            "linux in event.entity.subscriptions",
            true,
        ),
        (
            Kind::Event,
            "event/check_result.expected.json",
            "label",
            "team == sre && region == \"us-west-1\"",
            true,
        ),
        (
            Kind::Event,
            "event/metrics_only.expected.json",
            "field",
            "event.check.status != \"0\"",
            true,
        ),
        (
            Kind::Entity,
            "entity/proxy.expected.json",
            "label",
            "proxy_type == website",
            true,
        ),
        (
            Kind::Entity,
            "entity/proxy.expected.json",
            "field",
            "entity.entity_class == agent",
            false,
        ),
        (
            Kind::Silenced,
            "silenced/entity_all_checks.expected.json",
            "field",
            "silenced.expire_on_resolve == true",
            true,
        ),
        (
            Kind::User,
            "user/alice.expected.json",
            "field",
            "ops in user.groups",
            true,
        ),
    ];
    for (kind, path, which, input, expected) in cases {
        let selector = match *which {
            "label" => kind.label_selector(input),
            _ => kind.field_selector(input),
        }
        .unwrap_or_else(|err| panic!("{input}: {err}"));
        assert_eq!(
            selector.matches(&kind.fields(&fixture(path))),
            *expected,
            "{kind} {path}: {which} {input}"
        );
    }
}

#[test]
fn outputs_are_redacted_but_stored_values_are_not() {
    let stored = fixture("entity/agent.expected.json");
    assert_eq!(
        stored["metadata"]["labels"]["api_key"],
        "stays-in-the-store"
    );

    let mut entity = stored.clone();
    Kind::Entity.redact(&mut entity);
    assert_eq!(entity["metadata"]["labels"]["api_key"], "REDACTED");
    assert_eq!(entity["metadata"]["annotations"]["password"], "REDACTED");
    assert_eq!(entity["metadata"]["labels"]["region"], "us-west-1");

    let mut event = serde_json::json!({"entity": stored, "metadata": {}});
    Kind::Event.redact(&mut event);
    assert_eq!(event["entity"]["metadata"]["labels"]["api_key"], "REDACTED");
}
