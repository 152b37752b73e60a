//! Runs events through real pipelines: real `sh` pipe handlers writing what they received to a
//! temp dir, real TCP/UDP listeners on port 0, the real JavaScript engine. Each test asserts
//! what a user would observe: which handlers ran, with what payload, and what the report says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kensa_pipeline::{Outcome, OutcomeResult, Pipelines, Report, Resolver, Settings};
use kensa_types::resources::check::{Check, CheckHistory};
use kensa_types::resources::common::ResourceReference;
use kensa_types::resources::entity::Entity;
use kensa_types::resources::event::Event;
use kensa_types::resources::filter::EventFilter;
use kensa_types::resources::handler::{Handler, HandlerSocket};
use kensa_types::resources::metrics::{MetricPoint, Metrics};
use kensa_types::resources::mutator::Mutator;
use kensa_types::resources::pipeline::{Pipeline, PipelineWorkflow};
use kensa_types::resources::time_window::{TimeWindowDays, TimeWindowTimeRange, TimeWindowWhen};
use kensa_types::ObjectMeta;

const NAMESPACE: &str = "default";

/// Resources of namespace `default`; any other namespace is empty.
#[derive(Default)]
struct Resources {
    handlers: HashMap<String, Arc<Handler>>,
    filters: HashMap<String, Arc<EventFilter>>,
    mutators: HashMap<String, Arc<Mutator>>,
    pipelines: HashMap<String, Arc<Pipeline>>,
}

fn lookup<T>(map: &HashMap<String, Arc<T>>, namespace: &str, name: &str) -> Option<Arc<T>> {
    (namespace == NAMESPACE)
        .then(|| map.get(name).cloned())
        .flatten()
}

impl Resolver for Resources {
    fn handler(&self, namespace: &str, name: &str) -> Option<Arc<Handler>> {
        lookup(&self.handlers, namespace, name)
    }
    fn filter(&self, namespace: &str, name: &str) -> Option<Arc<EventFilter>> {
        lookup(&self.filters, namespace, name)
    }
    fn mutator(&self, namespace: &str, name: &str) -> Option<Arc<Mutator>> {
        lookup(&self.mutators, namespace, name)
    }
    fn pipeline(&self, namespace: &str, name: &str) -> Option<Arc<Pipeline>> {
        lookup(&self.pipelines, namespace, name)
    }
}

impl Resources {
    fn handler(mut self, handler: Handler) -> Self {
        self.handlers
            .insert(handler.metadata.name.clone(), Arc::new(handler));
        self
    }
    fn filter(mut self, filter: EventFilter) -> Self {
        self.filters
            .insert(filter.metadata.name.clone(), Arc::new(filter));
        self
    }
    fn mutator(mut self, mutator: Mutator) -> Self {
        self.mutators
            .insert(mutator.metadata.name.clone(), Arc::new(mutator));
        self
    }
    fn pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipelines
            .insert(pipeline.metadata.name.clone(), Arc::new(pipeline));
        self
    }
    fn build(self) -> Pipelines {
        self.build_with(Settings::default())
    }
    fn build_with(self, settings: Settings) -> Pipelines {
        Pipelines::new(Arc::new(self), settings)
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: name.to_owned(),
        namespace: NAMESPACE.to_owned(),
        ..Default::default()
    }
}

fn pipe(name: &str, command: &str) -> Handler {
    Handler {
        metadata: meta(name),
        handler_type: "pipe".to_owned(),
        command: command.to_owned(),
        ..Default::default()
    }
}

/// A pipe handler that succeeds and ignores its payload.
fn ok_handler(name: &str) -> Handler {
    pipe(name, "cat >/dev/null")
}

fn set(name: &str, members: &[&str]) -> Handler {
    Handler {
        metadata: meta(name),
        handler_type: "set".to_owned(),
        handlers: members.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    }
}

fn with_filters(mut handler: Handler, filters: &[&str]) -> Handler {
    handler.filters = filters.iter().map(|f| f.to_string()).collect();
    handler
}

fn filter(name: &str, action: &str, expressions: &[&str]) -> EventFilter {
    EventFilter {
        metadata: meta(name),
        action: action.to_owned(),
        expressions: expressions.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    }
}

/// An incident of check `cpu-metrics` on entity `web1` (status 2 after 0), legacy handlers
/// `handlers`.
fn event(handlers: &[&str]) -> Event {
    let mut entity = Entity {
        metadata: meta("web1"),
        entity_class: "agent".to_owned(),
        subscriptions: vec!["linux".to_owned(), "entity:web1".to_owned()],
        ..Default::default()
    };
    entity
        .metadata
        .labels
        .insert("password".to_owned(), "hunter2".to_owned());
    entity
        .metadata
        .labels
        .insert("team".to_owned(), "ops".to_owned());
    Event {
        timestamp: 1_700_000_000,
        entity: Some(entity),
        check: Some(Check {
            metadata: meta("cpu-metrics"),
            status: 2,
            output: "CRITICAL: cpu at 99%\n".to_owned(),
            occurrences: 1,
            interval: 60,
            history: vec![
                CheckHistory {
                    status: 0,
                    executed: 1_699_999_940,
                    flapping: false,
                },
                CheckHistory {
                    status: 2,
                    executed: 1_700_000_000,
                    flapping: false,
                },
            ],
            handlers: handlers.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }),
        metadata: ObjectMeta {
            namespace: NAMESPACE.to_owned(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The same check, passing twice in a row (not an incident, not a resolution).
fn ok_event(handlers: &[&str]) -> Event {
    let mut event = event(handlers);
    let check = event.check.as_mut().unwrap();
    check.status = 0;
    check.history = vec![
        CheckHistory {
            status: 0,
            executed: 1,
            flapping: false,
        },
        CheckHistory {
            status: 0,
            executed: 2,
            flapping: false,
        },
    ];
    event
}

fn handled(pipeline: &str, handler: &str) -> (String, String, OutcomeResult) {
    (
        pipeline.to_owned(),
        handler.to_owned(),
        OutcomeResult::Handled,
    )
}

fn filtered(pipeline: &str, handler: &str, filter: &str) -> (String, String, OutcomeResult) {
    (
        pipeline.to_owned(),
        handler.to_owned(),
        OutcomeResult::Filtered {
            filter: filter.to_owned(),
        },
    )
}

/// `(pipeline, handler, result)` of each outcome, in report order.
fn summary(report: &Report) -> Vec<(String, String, OutcomeResult)> {
    report
        .outcomes
        .iter()
        .map(|o| (o.pipeline.clone(), o.handler.clone(), o.result.clone()))
        .collect()
}

fn failure(outcome: &Outcome) -> &str {
    match &outcome.result {
        OutcomeResult::Failed { reason } => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

async fn process(pipelines: &Pipelines, event: Event) -> Report {
    pipelines.process(Arc::new(event)).await
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A pipe handler writing its stdin to `dir/<name>`.
fn recording_handler(dir: &Path, name: &str) -> (Handler, PathBuf) {
    let path = dir.join(name);
    (pipe(name, &format!("cat > '{}'", path.display())), path)
}

#[tokio::test]
async fn legacy_handlers_are_expanded_deduplicated_and_sorted() {
    let base = || {
        Resources::default()
            .handler(ok_handler("a"))
            .handler(ok_handler("b"))
            .handler(ok_handler("c"))
            .handler(set("ab", &["a", "b"]))
            .handler(set("level1", &["level2", "c"]))
            .handler(set("level2", &["level3", "b"]))
            .handler(set("level3", &["a"]))
            .handler(set("loop", &["loop", "c"]))
    };
    // (case, check.handlers, metrics.handlers, handlers run)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let cases: &[Case] = &[
        ("sorted by name", &["c", "a"], &[], &["a", "c"]),
        ("duplicates once", &["a", "a", "ab"], &[], &["a", "b"]),
        ("set members", &["ab"], &[], &["a", "b"]),
        ("missing skipped", &["missing", "b"], &[], &["b"]),
        // level1 (depth 1) → level2 (depth 2) → level3 (depth 3): too deep, skipped.
        ("set depth limit", &["level1"], &[], &["b", "c"]),
        ("set naming itself", &["loop"], &[], &["c"]),
        ("metrics handlers too", &["a"], &["b", "a"], &["a", "b"]),
        ("nothing", &[], &[], &[]),
        ("only missing", &["missing"], &[], &[]),
    ];
    let pipelines = base().build();
    for (case, check_handlers, metric_handlers, want) in cases {
        let mut event = event(check_handlers);
        if !metric_handlers.is_empty() {
            event.metrics = Some(Metrics {
                handlers: metric_handlers.iter().map(|h| h.to_string()).collect(),
                points: Vec::new(),
            });
        }
        let report = process(&pipelines, event).await;
        let want: Vec<_> = want.iter().map(|h| handled("legacy-pipeline", h)).collect();
        assert_eq!(summary(&report), want, "{case}");
        for outcome in &report.outcomes {
            assert_eq!(outcome.handler_type, "pipe", "{case}");
        }
    }
}

#[tokio::test]
async fn events_from_another_namespace_do_not_see_these_handlers() {
    let pipelines = Resources::default().handler(ok_handler("a")).build();
    let mut event = event(&["a"]);
    event.metadata.namespace = "other".to_owned();
    event.entity.as_mut().unwrap().metadata.namespace = "other".to_owned();
    assert_eq!(process(&pipelines, event).await, Report::default());
}

#[tokio::test]
async fn built_in_filters_stop_workflows() {
    let pipelines = Resources::default()
        .handler(with_filters(ok_handler("incidents"), &["is_incident"]))
        .handler(with_filters(ok_handler("unsilenced"), &["not_silenced"]))
        .handler(with_filters(ok_handler("metrics"), &["has_metrics"]))
        .build();
    let all = ["incidents", "unsilenced", "metrics"];

    let report = process(&pipelines, event(&all)).await;
    assert_eq!(
        summary(&report),
        vec![
            handled("legacy-pipeline", "incidents"),
            filtered("legacy-pipeline", "metrics", "has_metrics"),
            handled("legacy-pipeline", "unsilenced"),
        ]
    );

    let mut silenced_ok_with_metrics = ok_event(&all);
    silenced_ok_with_metrics.check.as_mut().unwrap().silenced = vec!["linux:*".to_owned()];
    silenced_ok_with_metrics.metrics = Some(Metrics {
        handlers: Vec::new(),
        points: vec![MetricPoint {
            name: "cpu.user".to_owned(),
            value: 1.5,
            timestamp: 1_700_000_000,
            tags: Vec::new(),
        }],
    });
    let report = process(&pipelines, silenced_ok_with_metrics).await;
    assert_eq!(
        summary(&report),
        vec![
            filtered("legacy-pipeline", "incidents", "is_incident"),
            handled("legacy-pipeline", "metrics"),
            filtered("legacy-pipeline", "unsilenced", "not_silenced"),
        ]
    );
}

#[tokio::test]
async fn filter_expressions_allow_and_deny() {
    struct Case {
        name: &'static str,
        action: &'static str,
        expressions: &'static [&'static str],
        handled: bool,
        errors: usize,
    }
    let cases = [
        Case {
            name: "state change only",
            action: "allow",
            expressions: &["event.check.occurrences == 1"],
            handled: true,
            errors: 0,
        },
        Case {
            name: "not the first occurrence",
            action: "allow",
            expressions: &["event.check.occurrences == 2"],
            handled: false,
            errors: 0,
        },
        Case {
            name: "regex on the check name",
            action: "allow",
            expressions: &["event.check.name.match(/metrics$/)"],
            handled: true,
            errors: 0,
        },
        Case {
            name: "subscription",
            action: "allow",
            expressions: &["event.entity.subscriptions.indexOf('linux') >= 0"],
            handled: true,
            errors: 0,
        },
        Case {
            name: "allow needs every expression",
            action: "allow",
            expressions: &["event.check.status == 2", "event.entity.name == 'db1'"],
            handled: false,
            errors: 0,
        },
        Case {
            name: "filters see the redacted entity",
            action: "allow",
            expressions: &[
                "event.entity.labels.password == 'REDACTED'",
                "event.entity.labels.team == 'ops'",
            ],
            handled: true,
            errors: 0,
        },
        Case {
            name: "interval arithmetic",
            action: "allow",
            expressions: &[
                "event.check.occurrences == 1 || event.check.occurrences % (3600 / event.check.interval) == 0",
            ],
            handled: true,
            errors: 0,
        },
        Case {
            name: "deny matching",
            action: "deny",
            expressions: &["event.check.occurrences == 1"],
            handled: false,
            errors: 0,
        },
        Case {
            name: "deny not matching",
            action: "deny",
            expressions: &["event.check.occurrences == 2"],
            handled: true,
            errors: 0,
        },
        Case {
            name: "deny needs any expression",
            action: "deny",
            expressions: &["false", "event.entity.name == 'web1'"],
            handled: false,
            errors: 0,
        },
        Case {
            name: "allow with a runtime error is filtered",
            action: "allow",
            expressions: &["event.nothing.here == 1"],
            handled: false,
            errors: 1,
        },
        Case {
            name: "allow with a later runtime error is filtered",
            action: "allow",
            expressions: &["true", "undefined_function()"],
            handled: false,
            errors: 1,
        },
        Case {
            name: "deny ignores a runtime error",
            action: "deny",
            expressions: &["event.nothing.here == 1"],
            handled: true,
            errors: 1,
        },
        Case {
            name: "deny with a runtime error and a true expression",
            action: "deny",
            expressions: &["event.nothing.here == 1", "true"],
            handled: false,
            errors: 1,
        },
    ];
    for case in cases {
        let pipelines = Resources::default()
            .filter(filter("f", case.action, case.expressions))
            .handler(with_filters(ok_handler("h"), &["f"]))
            .build();
        let report = process(&pipelines, event(&["h"])).await;
        let want = if case.handled {
            handled("legacy-pipeline", "h")
        } else {
            filtered("legacy-pipeline", "h", "f")
        };
        assert_eq!(summary(&report), vec![want], "{}", case.name);
        assert_eq!(
            report.expression_errors.len(),
            case.errors,
            "{}: {:?}",
            case.name,
            report.expression_errors
        );
        for error in &report.expression_errors {
            assert_eq!(error.filter, "f", "{}", case.name);
            assert!(
                case.expressions.contains(&error.expression.as_str()),
                "{}",
                case.name
            );
            assert!(!error.error.is_empty(), "{}", case.name);
        }
    }
}

#[tokio::test]
async fn filters_run_in_order_and_the_first_stop_wins() {
    let pipelines = Resources::default()
        .filter(filter("never", "allow", &["false"]))
        .filter(filter("always", "allow", &["true"]))
        .handler(with_filters(
            ok_handler("h1"),
            &["always", "is_incident", "never"],
        ))
        .handler(with_filters(ok_handler("h2"), &["is_incident", "never"]))
        .build();
    let report = process(&pipelines, ok_event(&["h1", "h2"])).await;
    assert_eq!(
        summary(&report),
        vec![
            filtered("legacy-pipeline", "h1", "is_incident"),
            filtered("legacy-pipeline", "h2", "is_incident"),
        ]
    );
    let report = process(&pipelines, event(&["h1", "h2"])).await;
    assert_eq!(
        summary(&report),
        vec![
            filtered("legacy-pipeline", "h1", "never"),
            filtered("legacy-pipeline", "h2", "never"),
        ]
    );
}

#[tokio::test]
async fn a_missing_filter_fails_closed() {
    let pipelines = Resources::default()
        .handler(with_filters(ok_handler("h"), &["no-such-filter"]))
        .build();
    let report = process(&pipelines, event(&["h"])).await;
    assert_eq!(
        summary(&report),
        vec![filtered("legacy-pipeline", "h", "no-such-filter")]
    );
}

/// `h:mmAM` `minutes` from now (UTC, wrapping around the day).
fn kitchen(minutes_from_now: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let minute_of_day = ((now / 60 + minutes_from_now) % 1440 + 1440) % 1440;
    let (hour, minute) = (minute_of_day / 60, minute_of_day % 60);
    let (hour12, half) = match hour {
        0 => (12, "AM"),
        1..=11 => (hour, "AM"),
        12 => (12, "PM"),
        _ => (hour - 12, "PM"),
    };
    format!("{hour12}:{minute:02}{half}")
}

#[tokio::test]
async fn when_windows_limit_filters() {
    let window = |from: i64, to: i64| TimeWindowWhen {
        days: TimeWindowDays {
            all: vec![TimeWindowTimeRange {
                begin: kitchen(from),
                end: kitchen(to),
            }],
            ..Default::default()
        },
    };
    let cases = [
        // (action, expression, window around now?, handled)
        ("allow", "true", true, true),
        ("allow", "true", false, false),
        ("allow", "false", true, false),
        ("deny", "true", true, false),
        ("deny", "true", false, true),
        ("deny", "false", true, true),
    ];
    for (action, expression, inside, want_handled) in cases {
        let mut f = filter("windowed", action, &[expression]);
        f.when = Some(if inside {
            window(-60, 60)
        } else {
            window(120, 180)
        });
        let pipelines = Resources::default()
            .filter(f)
            .handler(with_filters(ok_handler("h"), &["windowed"]))
            .build();
        let report = process(&pipelines, event(&["h"])).await;
        let want = if want_handled {
            handled("legacy-pipeline", "h")
        } else {
            filtered("legacy-pipeline", "h", "windowed")
        };
        assert_eq!(
            summary(&report),
            vec![want],
            "{action} {expression} inside={inside}"
        );
    }
}

#[tokio::test]
async fn pipe_handler_receives_the_event_json_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let (mut handler, path) = recording_handler(dir.path(), "recorder");
    handler.env_vars = vec!["KENSA_TEST=from-handler".to_owned()];
    handler.command = format!(
        "cat > '{}'; echo \"$KENSA_TEST\" > '{}.env'",
        path.display(),
        path.display()
    );
    let pipelines = Resources::default().handler(handler).build();
    let event = event(&["recorder"]);
    let report = process(&pipelines, event.clone()).await;

    assert_eq!(
        summary(&report),
        vec![handled("legacy-pipeline", "recorder")]
    );
    assert_eq!(read(&path), serde_json::to_vec(&event).unwrap());
    assert_eq!(read(&dir.path().join("recorder.env")), b"from-handler\n");
    // The handler gets the whole event, labels included.
    let received: serde_json::Value = serde_json::from_slice(&read(&path)).unwrap();
    assert_eq!(
        received["entity"]["metadata"]["labels"]["password"],
        "hunter2"
    );
}

#[tokio::test]
async fn failing_pipe_handler_reports_its_status_and_first_line() {
    let pipelines = Resources::default()
        .handler(pipe(
            "broken",
            "echo; echo 'cannot reach pagerduty' >&2; echo more; exit 3",
        ))
        .build();
    let report = process(&pipelines, event(&["broken"])).await;
    assert_eq!(report.outcomes.len(), 1);
    let reason = failure(&report.outcomes[0]);
    assert!(reason.contains("\"broken\""), "{reason}");
    assert!(reason.contains("status 3"), "{reason}");
    assert!(reason.contains("cannot reach pagerduty"), "{reason}");
    assert!(!reason.contains("more"), "{reason}");
}

#[tokio::test]
async fn only_check_output_mutator_sends_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let (mut handler, path) = recording_handler(dir.path(), "recorder");
    handler.mutator = "only_check_output".to_owned();
    let pipelines = Resources::default().handler(handler).build();
    let report = process(&pipelines, event(&["recorder"])).await;
    assert_eq!(
        summary(&report),
        vec![handled("legacy-pipeline", "recorder")]
    );
    assert_eq!(read(&path), b"CRITICAL: cpu at 99%\n");
}

#[tokio::test]
async fn pipe_mutator_stdout_becomes_the_payload() {
    let dir = tempfile::tempdir().unwrap();
    let (mut handler, path) = recording_handler(dir.path(), "recorder");
    handler.mutator = "counter".to_owned();
    let pipelines = Resources::default()
        .handler(handler)
        .mutator(Mutator {
            metadata: meta("counter"),
            command: "echo diagnostics >&2; printf '%s:' \"$PREFIX\"; wc -c | tr -d ' '".to_owned(),
            env_vars: vec!["PREFIX=bytes".to_owned()],
            ..Default::default()
        })
        .build();
    let event = event(&["recorder"]);
    let report = process(&pipelines, event.clone()).await;
    assert_eq!(
        summary(&report),
        vec![handled("legacy-pipeline", "recorder")]
    );
    let json_len = serde_json::to_vec(&event).unwrap().len();
    assert_eq!(
        String::from_utf8(read(&path)).unwrap(),
        format!("bytes:{json_len}\n")
    );
}

#[tokio::test]
async fn failing_pipe_mutator_fails_the_workflow_without_running_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let (mut handler, path) = recording_handler(dir.path(), "recorder");
    handler.mutator = "broken".to_owned();
    let (mut hung_handler, hung_path) = recording_handler(dir.path(), "hung");
    hung_handler.mutator = "slow".to_owned();
    let (mut lost_handler, lost_path) = recording_handler(dir.path(), "lost");
    lost_handler.mutator = "no-such-mutator".to_owned();
    let pipelines = Resources::default()
        .handler(handler)
        .handler(hung_handler)
        .handler(lost_handler)
        .mutator(Mutator {
            metadata: meta("broken"),
            command: "echo 'bad template' >&2; exit 1".to_owned(),
            ..Default::default()
        })
        .mutator(Mutator {
            metadata: meta("slow"),
            command: "sleep 30".to_owned(),
            timeout: 1,
            ..Default::default()
        })
        .build();
    let report = process(&pipelines, event(&["recorder", "hung", "lost"])).await;
    assert_eq!(report.outcomes.len(), 3);
    let hung = failure(&report.outcomes[0]);
    assert!(
        hung.contains("\"slow\"") && hung.contains("timed out"),
        "{hung}"
    );
    let lost = failure(&report.outcomes[1]);
    assert!(lost.contains("no-such-mutator"), "{lost}");
    let broken = failure(&report.outcomes[2]);
    assert!(broken.contains("\"broken\""), "{broken}");
    assert!(broken.contains("status 1: bad template"), "{broken}");
    for path in [path, hung_path, lost_path] {
        assert!(!path.exists(), "{} ran", path.display());
    }
}

#[tokio::test]
async fn javascript_mutators() {
    let dir = tempfile::tempdir().unwrap();
    let (mut returns_string, string_path) = recording_handler(dir.path(), "string");
    returns_string.mutator = "summary".to_owned();
    let (mut edits_event, event_path) = recording_handler(dir.path(), "edited");
    edits_event.mutator = "edit".to_owned();
    let (mut throws, throws_path) = recording_handler(dir.path(), "throws");
    throws.mutator = "throw".to_owned();
    let javascript = |name: &str, eval: &str| Mutator {
        metadata: meta(name),
        mutator_type: "javascript".to_owned(),
        eval: eval.to_owned(),
        env_vars: vec!["PREFIX=alert".to_owned()],
        ..Default::default()
    };
    let pipelines = Resources::default()
        .handler(returns_string)
        .handler(edits_event)
        .handler(throws)
        .mutator(javascript(
            "summary",
            "return PREFIX + ':' + event.check.metadata.name + ':' + event.check.status;",
        ))
        .mutator(javascript("edit", "event.check.output = 'rewritten';"))
        .mutator(javascript("throw", "throw new Error('nope');"))
        .build();
    let report = process(&pipelines, event(&["string", "edited", "throws"])).await;
    assert_eq!(report.outcomes.len(), 3);
    assert_eq!(report.outcomes[0].result, OutcomeResult::Handled);
    assert_eq!(report.outcomes[1].result, OutcomeResult::Handled);
    let reason = failure(&report.outcomes[2]);
    assert!(
        reason.contains("\"throw\"") && reason.contains("nope"),
        "{reason}"
    );

    assert_eq!(read(&string_path), b"alert:cpu-metrics:2");
    let edited: serde_json::Value = serde_json::from_slice(&read(&event_path)).unwrap();
    assert_eq!(edited["check"]["output"], "rewritten");
    assert_eq!(edited["entity"]["metadata"]["name"], "web1");
    assert!(!throws_path.exists());
}

#[tokio::test]
async fn tcp_handler_writes_the_payload() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.unwrap();
        bytes
    });
    let pipelines = Resources::default()
        .handler(socket_handler("tcp", "tcp", port))
        .build();
    let event = event(&["tcp"]);
    let report = process(&pipelines, event.clone()).await;
    assert_eq!(summary(&report), vec![handled("legacy-pipeline", "tcp")]);
    assert_eq!(report.outcomes[0].handler_type, "tcp");
    assert_eq!(received.await.unwrap(), serde_json::to_vec(&event).unwrap());
}

#[tokio::test]
async fn tcp_handler_connection_refused_fails() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let pipelines = Resources::default()
        .handler(socket_handler("tcp", "tcp", port))
        .build();
    let report = process(&pipelines, event(&["tcp"])).await;
    let reason = failure(&report.outcomes[0]);
    assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
}

#[tokio::test]
async fn udp_handler_sends_the_payload() {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let mut handler = socket_handler("udp", "udp", port);
    handler.mutator = "only_check_output".to_owned();
    let pipelines = Resources::default().handler(handler).build();
    let report = process(&pipelines, event(&["udp"])).await;
    assert_eq!(summary(&report), vec![handled("legacy-pipeline", "udp")]);
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .expect("datagram arrives")
        .unwrap();
    assert_eq!(&buf[..n], b"CRITICAL: cpu at 99%\n");
}

fn socket_handler(name: &str, handler_type: &str, port: u16) -> Handler {
    Handler {
        metadata: meta(name),
        handler_type: handler_type.to_owned(),
        socket: Some(HandlerSocket {
            host: "127.0.0.1".to_owned(),
            port: u32::from(port),
        }),
        timeout: 5,
        ..Default::default()
    }
}

#[tokio::test]
async fn hanging_pipe_handler_is_killed_at_its_timeout() {
    let mut handler = pipe("hangs", "sleep 30");
    handler.timeout = 1;
    let pipelines = Resources::default().handler(handler).build();
    let started = Instant::now();
    let report = process(&pipelines, event(&["hangs"])).await;
    let elapsed = started.elapsed();
    let reason = failure(&report.outcomes[0]);
    assert!(reason.contains("timed out"), "{reason}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(report.outcomes[0].duration >= Duration::from_secs(1));
}

#[tokio::test]
async fn handler_concurrency_is_bounded_across_events() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut resources = Resources::default();
    for name in ["s1", "s2"] {
        resources = resources.handler(pipe(
            name,
            &format!(
                "echo \"$(date +%s%N) 1\" >> '{log}'; sleep 0.3; echo \"$(date +%s%N) -1\" >> '{log}'",
                log = log.display()
            ),
        ));
    }
    let pipelines = resources.build_with(Settings {
        handler_concurrency: 2,
        eval_threads: 1,
    });
    let started = Instant::now();
    let reports = futures::future::join_all(
        (0..3).map(|_| pipelines.process(Arc::new(event(&["s1", "s2"])))),
    )
    .await;
    let elapsed = started.elapsed();
    for report in &reports {
        assert_eq!(
            summary(report),
            vec![
                handled("legacy-pipeline", "s1"),
                handled("legacy-pipeline", "s2")
            ]
        );
    }
    // Six handlers of 0.3 s, two at a time: three rounds.
    assert!(elapsed >= Duration::from_millis(900), "took {elapsed:?}");
    // No instant had more than two handlers running (starts and ends from the handlers).
    let text = String::from_utf8(read(&log)).unwrap();
    let mut marks: Vec<(u128, i32)> = text
        .lines()
        .map(|line| {
            let (time, delta) = line.split_once(' ').unwrap();
            (time.parse().unwrap(), delta.parse().unwrap())
        })
        .collect();
    assert_eq!(marks.len(), 12);
    marks.sort();
    let (mut running, mut most) = (0, 0);
    for (_, delta) in marks {
        running += delta;
        most = most.max(running);
    }
    assert_eq!(most, 2);
}

#[tokio::test]
async fn pipeline_resources_run_their_workflows() {
    let dir = tempfile::tempdir().unwrap();
    let (output_handler, output_path) = recording_handler(dir.path(), "output");
    let reference = |kind: &str, name: &str| ResourceReference::core(kind, name);
    let workflow =
        |name: &str, filters: &[&str], mutator: Option<&str>, handler: &str| PipelineWorkflow {
            name: name.to_owned(),
            filters: filters
                .iter()
                .map(|f| reference("EventFilter", f))
                .collect(),
            mutator: mutator.map(|m| reference("Mutator", m)),
            handler: Some(reference("Handler", handler)),
        };
    let pipelines = Resources::default()
        .handler(output_handler)
        .handler(ok_handler("a"))
        .handler(ok_handler("b"))
        .handler(ok_handler("legacy"))
        .handler(set("both", &["a", "b"]))
        .filter(filter(
            "first-only",
            "allow",
            &["event.check.occurrences == 1"],
        ))
        .pipeline(Pipeline {
            metadata: meta("alerts"),
            workflows: vec![
                workflow("incidents", &["is_incident"], None, "a"),
                workflow("raw", &["first-only"], Some("only_check_output"), "output"),
                workflow("fan-out", &[], None, "both"),
                workflow("broken", &[], None, "no-such-handler"),
            ],
        })
        .build();

    let mut event = ok_event(&["legacy"]);
    event.pipelines = vec![
        reference("Pipeline", "alerts"),
        reference("Pipeline", "no-such-pipeline"),
    ];
    let report = process(&pipelines, event).await;
    let outcomes = summary(&report);
    assert_eq!(outcomes.len(), 6, "{outcomes:?}");
    assert_eq!(
        outcomes[..4],
        [
            filtered("alerts", "a", "is_incident"),
            handled("alerts", "output"),
            handled("alerts", "a"),
            handled("alerts", "b"),
        ]
    );
    assert_eq!(outcomes[4].1, "no-such-handler");
    assert!(failure(&report.outcomes[4]).contains("does not exist"));
    assert_eq!(outcomes[5], handled("legacy-pipeline", "legacy"));
    assert_eq!(read(&output_path), b"CRITICAL: cpu at 99%\n");
}

#[tokio::test]
async fn events_without_handlers_or_pipelines_are_skipped() {
    let pipelines = Resources::default().handler(ok_handler("a")).build();
    assert_eq!(process(&pipelines, event(&[])).await, Report::default());
}

#[test]
fn process_can_be_spawned() {
    fn assert_send<T: Send>(_: &T) {}
    let pipelines = Resources::default().build();
    let future = pipelines.process(Arc::new(Event::default()));
    assert_send(&future);
}
