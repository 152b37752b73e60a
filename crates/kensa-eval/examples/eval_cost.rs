//! Prints, as JSON, the mean cost of each kensa-eval operation on a typical event: engine
//! creation, binding an event, evaluating expressions, a JavaScript mutator, validation and
//! token rendering. Orders of magnitude, not assertions:
//! `cargo run --release -p kensa-eval --example eval_cost`.

use std::hint::black_box;
use std::time::Instant;

use kensa_eval::{render, synthesize_entity, validate_expression, Engine, Limits};
use serde_json::{json, Value};

/// Mean microseconds per call of `f` over `iterations` calls.
fn mean_micros(iterations: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

fn event() -> Value {
    json!({
        "timestamp": 1_699_999_970,
        "metadata": {"namespace": "default"},
        "entity": {
            "entity_class": "agent",
            "subscriptions": ["linux", "entity:web1"],
            "system": {"hostname": "web1", "os": "linux", "arch": "amd64", "platform": "ubuntu",
                       "network": {"interfaces": [{"name": "eth0", "addresses": ["10.0.0.5/24"]}]}},
            "last_seen": 1_699_999_960,
            "metadata": {"name": "web1", "namespace": "default",
                         "labels": {"webserver": "nginx", "region": "us-west-2"}}
        },
        "check": {
            "metadata": {"name": "cpu-metrics", "namespace": "default"},
            "command": "check-cpu -w 80 -c 90", "interval": 60, "status": 2, "occurrences": 120,
            "output": "CPU CRITICAL - 97% used", "state": "failing", "executed": 1_699_999_970,
            "history": (0..21).map(|i| json!({"status": i % 3, "executed": 1_699_998_710 + 60 * i}))
                              .collect::<Vec<_>>()
        }
    })
}

fn main() {
    let event = event();
    let mut engine = Engine::new(Limits::default()).expect("engine");
    let engine_new = mean_micros(20, || drop(black_box(Engine::new(Limits::default()))));
    let bind_event = mean_micros(2_000, || {
        engine.bind_event(&event, 1_700_000_000).expect("bind");
    });
    let synthesize = mean_micros(2_000, || {
        black_box(serde_json::to_string(&kensa_eval::synthesize_event(&event)).expect("json"));
    });
    let expressions = [
        "event.check.occurrences == 1 || event.check.occurrences % 60 == 0",
        "event.check.name.match(/metrics$/)",
        "event.entity.subscriptions.indexOf('linux') >= 0 && !!event.entity.labels.webserver",
        "hour(event.timestamp) >= 9 && weekday(event.timestamp) <= 5",
    ];
    let bound = engine.bind_event(&event, 1_700_000_000).expect("bind");
    let per_expression: Vec<Value> = expressions
        .iter()
        .map(|expression| {
            let micros = mean_micros(20_000, || {
                black_box(bound.eval_bool(expression).expect("eval"));
            });
            json!({"expression": expression, "eval_us": micros})
        })
        .collect();
    let mutate = mean_micros(2_000, || {
        black_box(
            engine
                .mutate(
                    "return JSON.stringify({name: event.check.metadata.name})",
                    &event,
                    &[],
                    None,
                )
                .expect("mutate"),
        );
    });
    let validate = mean_micros(200, || {
        validate_expression(expressions[0]).expect("valid");
    });
    let entity = synthesize_entity(&event["entity"]);
    let render_us = mean_micros(20_000, || {
        black_box(
            render(
                "check -w {{ .labels.disk | default 80 }} -H {{ .system.hostname }}",
                &entity,
            )
            .expect("render"),
        );
    });
    let report = json!({
        "engine_new_us": engine_new,
        "bind_event_us": bind_event,
        "synthesize_and_serialize_us": synthesize,
        "expressions": per_expression,
        "mutate_us": mutate,
        "validate_expression_us": validate,
        "render_us": render_us,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
}
