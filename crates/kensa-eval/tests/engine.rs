//! Engine behaviour that does not fit the fixture tables: threading, per-call timeouts and
//! error messages.

use std::time::Duration;

use kensa_eval::{Engine, ExprError, Limits};
use serde_json::json;

#[test]
fn an_engine_can_move_to_a_worker_thread() {
    fn assert_send<T: Send>(_: &T) {}
    let engine = Engine::new(patient()).expect("engine");
    assert_send(&engine);
    let worker = std::thread::spawn(move || {
        let mut engine = engine;
        let event = json!({"check": {"metadata": {"name": "cpu"}, "status": 1}});
        let bound = engine.bind_event(&event, 0).expect("bind");
        bound.eval_bool("event.is_incident").expect("eval")
    });
    assert!(worker.join().expect("worker"));
}

#[test]
fn a_mutator_timeout_overrides_the_engine_budget() {
    let mut engine = Engine::new(Limits {
        timeout: Duration::from_secs(30),
        ..Limits::default()
    })
    .expect("engine");
    let outcome = engine.mutate(
        "while (true) {}",
        &json!({}),
        &[],
        Some(Duration::from_millis(20)),
    );
    assert_eq!(outcome, Err(ExprError::Timeout(Duration::from_millis(20))));
}

#[test]
fn error_messages_name_the_problem() {
    let mut engine = Engine::new(patient()).expect("engine");
    let bound = engine.bind_event(&json!({}), 0).expect("bind");
    let error = bound.eval_bool("event.foo.bar").expect_err("type error");
    assert_eq!(
        error.to_string(),
        "runtime error: TypeError: cannot read property 'bar' of undefined"
    );
    assert_eq!(error.kind(), "runtime");
    let error = bound
        .eval_bool("event.check.status ==")
        .expect_err("syntax");
    assert_eq!(
        error.to_string(),
        "syntax error at line 1, column 22: unexpected token in expression: end of input"
    );
}

#[test]
fn rebinding_replaces_the_previous_value() {
    let mut engine = Engine::new(patient()).expect("engine");
    let first = json!({"check": {"metadata": {"name": "first"}}});
    let second = json!({"check": {"metadata": {"name": "second"}}});
    assert!(engine
        .bind_event(&first, 0)
        .and_then(|bound| bound.eval_bool("event.check.name == 'first'"))
        .expect("first"));
    assert!(engine
        .bind_event(&second, 0)
        .and_then(|bound| bound.eval_bool("event.check.name == 'second'"))
        .expect("second"));
    let entity = json!({"metadata": {"name": "web1"}});
    assert!(engine
        .bind_entity(&entity, 0)
        .and_then(|bound| bound.eval_bool("entity.name == 'web1' && event === undefined"))
        .expect("entity"));
}

#[test]
fn deeply_nested_expressions_fail_cleanly() {
    let depth = 100_000;
    let expression = format!("{}1{}", "(".repeat(depth), ")".repeat(depth));
    assert!(kensa_eval::validate_expression(&expression).is_err());
    let mut engine = Engine::new(patient()).expect("engine");
    let bound = engine.bind_event(&json!({}), 0).expect("bind");
    assert!(bound.eval_bool(&expression).is_err());
    assert!(bound.eval_bool("1 == 1").expect("still usable"));
}

/// The isolation between evaluations rests on everything reachable from the global object
/// being frozen; walk the whole graph and name anything that is not.
#[test]
fn everything_reachable_from_the_global_object_is_frozen() {
    let mut engine = Engine::new(Limits {
        timeout: Duration::from_secs(20),
        ..Limits::default()
    })
    .expect("engine");
    let bound = engine
        .bind_event(&json!({"check": {"history": [{"status": 0}]}}), 0)
        .expect("bind");
    let walk = r#"
        var seen = [], pending = [globalThis, event], unfrozen = [];
        while (pending.length > 0) {
            var object = pending.pop();
            if ((typeof object !== 'object' && typeof object !== 'function') || object === null ||
                seen.indexOf(object) >= 0) { continue; }
            seen.push(object);
            if (!Object.isFrozen(object)) { unfrozen.push(object); }
            pending.push(Object.getPrototypeOf(object));
            Reflect.ownKeys(object).forEach(function (key) {
                var descriptor = Object.getOwnPropertyDescriptor(object, key);
                if ('value' in descriptor) { pending.push(descriptor.value); }
                else { pending.push(descriptor.get, descriptor.set); }
            });
        }
        if (seen.length < 300 || unfrozen.length > 0) {
            throw new Error(seen.length + ' objects, not frozen: ' + unfrozen.map(function (o) {
                return typeof o + ' ' + (o.name || Object.keys(o).join(','));
            }).join('; '));
        }
        true
    "#;
    assert_eq!(bound.eval_bool(walk), Ok(true));
}

/// The default limits with a time budget no busy machine exhausts: these tests check what
/// expressions mean, not the time limit (creating an engine and binding an event run under the
/// same budget, and 100 ms was seen to run out on a loaded CI machine).
fn patient() -> Limits {
    Limits {
        timeout: std::time::Duration::from_secs(10),
        ..Limits::default()
    }
}
