//! What `Kind::normalize` makes of minimal bodies, compared byte for byte with what Sensu
//! outputs for them: every always-present field present with its zero value (`null` for nil
//! lists, `[]` for `handlers`/`subscriptions`/`pipelines`), omitted fields absent, Sensu's order.

use kensa_types::Kind;
use serde_json::json;

#[test]
fn minimal_bodies_get_sensus_defaults() {
    let cases = [
        (
            Kind::CheckConfig,
            json!({"command": "hi", "interval": 10, "metadata": {"name": "check_minimum", "namespace": "default"}}),
            concat!(
                r#"{"command":"hi","handlers":[],"high_flap_threshold":0,"interval":10,"low_flap_threshold":0,"#,
                r#""publish":false,"runtime_assets":null,"subscriptions":[],"proxy_entity_name":"","check_hooks":null,"#,
                r#""stdin":false,"subdue":null,"ttl":0,"timeout":0,"round_robin":false,"output_metric_format":"","#,
                r#""output_metric_handlers":null,"env_vars":null,"metadata":{"name":"check_minimum","namespace":"default"},"#,
                r#""secrets":null,"pipelines":[]}"#
            ),
        ),
        (
            // The docs' cron example, as `sensuctl check info cron_check --format json` shows it.
            Kind::CheckConfig,
            json!({"command": "hi", "cron": "CRON_TZ=Asia/Tokyo * * * * *", "publish": true, "subscriptions": ["sys"],
                   "metadata": {"name": "cron_check", "namespace": "default"}}),
            concat!(
                r#"{"command":"hi","handlers":[],"high_flap_threshold":0,"interval":0,"low_flap_threshold":0,"#,
                r#""publish":true,"runtime_assets":null,"subscriptions":["sys"],"proxy_entity_name":"","check_hooks":null,"#,
                r#""stdin":false,"subdue":null,"cron":"CRON_TZ=Asia/Tokyo * * * * *","ttl":0,"timeout":0,"round_robin":false,"#,
                r#""output_metric_format":"","output_metric_handlers":null,"env_vars":null,"#,
                r#""metadata":{"name":"cron_check","namespace":"default"},"secrets":null,"pipelines":[]}"#
            ),
        ),
        (
            Kind::Entity,
            json!({"entity_class": "proxy", "metadata": {"name": "switch-1", "namespace": "default"}}),
            concat!(
                r#"{"entity_class":"proxy","system":{"network":{"interfaces":null},"libc_type":"","vm_system":"","#,
                r#""vm_role":"","cloud_provider":"","processes":null},"subscriptions":null,"last_seen":0,"deregister":false,"#,
                r#""deregistration":{},"metadata":{"name":"switch-1","namespace":"default"},"sensu_agent_version":""}"#
            ),
        ),
        (
            Kind::Handler,
            json!({"type": "pipe", "command": "cat", "metadata": {"name": "cat", "namespace": "default"}}),
            concat!(
                r#"{"metadata":{"name":"cat","namespace":"default"},"type":"pipe","command":"cat","timeout":0,"#,
                r#""handlers":null,"filters":null,"env_vars":null,"runtime_assets":null,"secrets":null}"#
            ),
        ),
        (
            Kind::Silenced,
            json!({"subscription": "linux", "metadata": {"namespace": "default"}}),
            r#"{"metadata":{"name":"linux:*","namespace":"default"},"expire":-1,"expire_on_resolve":false,"subscription":"linux","begin":0,"expire_at":0}"#,
        ),
        (
            Kind::User,
            json!({"username": "carol"}),
            r#"{"username":"carol","disabled":false}"#,
        ),
        (
            Kind::Pipeline,
            json!({"metadata": {"name": "empty", "namespace": "default"}}),
            r#"{"metadata":{"name":"empty","namespace":"default"},"workflows":null}"#,
        ),
    ];
    for (kind, input, expected) in cases {
        let normalized = kind
            .normalize(input)
            .unwrap_or_else(|err| panic!("{kind}: {err}"));
        assert_eq!(
            serde_json::to_string(&normalized).expect("serializes"),
            expected,
            "{kind}"
        );
    }
}

#[test]
fn an_event_check_shows_its_result_fields_in_sensus_order() {
    let event = json!({
        "entity": {"entity_class": "agent", "metadata": {"name": "web1", "namespace": "default"}},
        "check": {"interval": 60, "publish": true, "status": 1, "output": "WARN\n", "executed": 100,
                  "metadata": {"name": "disk", "namespace": "default"}}
    });
    let normalized = Kind::Event.normalize(event).expect("a valid event");
    assert_eq!(
        serde_json::to_string(&normalized["check"]).expect("serializes"),
        concat!(
            r#"{"handlers":[],"high_flap_threshold":0,"interval":60,"low_flap_threshold":0,"publish":true,"#,
            r#""runtime_assets":null,"subscriptions":[],"proxy_entity_name":"","check_hooks":null,"stdin":false,"#,
            r#""subdue":null,"ttl":0,"timeout":0,"round_robin":false,"executed":100,"history":null,"issued":0,"#,
            r#""output":"WARN\n","status":1,"total_state_change":0,"last_ok":0,"occurrences":0,"occurrences_watermark":0,"#,
            r#""output_metric_format":"","output_metric_handlers":null,"env_vars":null,"#,
            r#""metadata":{"name":"disk","namespace":"default"},"secrets":null,"is_silenced":false,"scheduler":"","#,
            r#""pipelines":[]}"#
        )
    );
    assert_eq!(
        normalized["metadata"],
        json!({"namespace": "default"}),
        "the event takes its entity's namespace"
    );
}
