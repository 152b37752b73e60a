//! Table-driven tests of metric extraction: one fixture file per format under
//! `testdata/metrics/` (cases of check output and the points expected from it), one JSON
//! table for thresholds, and a few cases for the settings around extraction.
//!
//! Fixture syntax (`<format>.txt`): text before the first case is commentary; each case is
//!
//! ```text
//! === name
//! --- output
//! <check output, verbatim>
//! --- tags                      (optional: output_metric_tags, `name=value` per line)
//! --- points                    (one per line: `name | value | timestamp | k=v, k2=v2`)
//! ```
//!
//! In `points`, the timestamp `now` is the time passed to the extractor and `executed` the
//! check's execution time; an empty `points` section means nothing may be extracted.

use std::path::PathBuf;

use kensa_types::resources::check::Check;
use kensa_types::resources::event::Event;
use kensa_types::resources::metrics::{MetricPoint, MetricTag};
use serde_json::{json, Value};

use super::process_check_output;

const NOW: i64 = 1_700_000_000;
const EXECUTED: i64 = 1_699_999_990;

#[derive(Debug)]
struct Case {
    name: String,
    output: String,
    tags: Vec<MetricTag>,
    points: Vec<MetricPoint>,
}

fn testdata(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/metrics")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn parse_fixture(text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut section = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("=== ") {
            cases.push(Case {
                name: name.trim().to_owned(),
                output: String::new(),
                tags: Vec::new(),
                points: Vec::new(),
            });
            section = "";
            continue;
        }
        if let Some(name) = line.strip_prefix("--- ") {
            section = match name.trim() {
                "output" => "output",
                "tags" => "tags",
                "points" => "points",
                other => panic!("unknown fixture section {other:?}"),
            };
            continue;
        }
        let Some(case) = cases.last_mut() else {
            continue; // commentary before the first case
        };
        match section {
            "output" => {
                case.output.push_str(line);
                case.output.push('\n');
            }
            "tags" if !line.trim().is_empty() => {
                let (name, value) = line.split_once('=').expect("tag is name=value");
                case.tags.push(MetricTag {
                    name: name.to_owned(),
                    value: value.to_owned(),
                });
            }
            "points" if !line.trim().is_empty() => case.points.push(parse_point(line)),
            _ => {}
        }
    }
    cases
}

fn parse_point(line: &str) -> MetricPoint {
    let fields: Vec<&str> = line.split(" | ").map(str::trim).collect();
    assert!(
        (3..=4).contains(&fields.len()),
        "point line {line:?} is not `name | value | timestamp | tags`"
    );
    let timestamp = match fields[2] {
        "now" => NOW,
        "executed" => EXECUTED,
        other => other.parse().expect("timestamp"),
    };
    let tags = fields
        .get(3)
        .filter(|tags| !tags.is_empty())
        .map(|tags| {
            tags.split(", ")
                .map(|tag| {
                    let (name, value) = tag.split_once('=').expect("tag is name=value");
                    MetricTag {
                        name: name.to_owned(),
                        value: value.to_owned(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    MetricPoint {
        name: fields[0].to_owned(),
        value: fields[1].parse().expect("value"),
        timestamp,
        tags,
    }
}

fn check_event(check: Value) -> Event {
    let mut check: Check = serde_json::from_value(check).expect("check decodes");
    check.metadata.name = "test".to_owned();
    Event {
        check: Some(check),
        ..Event::default()
    }
}

fn run_format(format: &str) {
    let cases = parse_fixture(&testdata(&format!("{format}.txt")));
    assert!(!cases.is_empty(), "{format}: no cases");
    for case in cases {
        let mut event = check_event(json!({
            "output_metric_format": format,
            "output": case.output,
            "executed": EXECUTED,
            "output_metric_tags": case.tags,
        }));
        process_check_output(&mut event, NOW);
        let points = event
            .metrics
            .map(|metrics| metrics.points)
            .unwrap_or_default();
        assert_eq!(
            points, case.points,
            "{format} / {}: extracted points differ",
            case.name
        );
    }
}

#[test]
fn nagios_perfdata() {
    run_format("nagios_perfdata");
}

#[test]
fn graphite_plaintext() {
    run_format("graphite_plaintext");
}

#[test]
fn influxdb_line() {
    run_format("influxdb_line");
}

#[test]
fn opentsdb_line() {
    run_format("opentsdb_line");
}

#[test]
fn prometheus_text() {
    run_format("prometheus_text");
}

#[test]
fn thresholds() {
    let cases: Vec<Value> =
        serde_json::from_str(&testdata("thresholds.json")).expect("thresholds.json is JSON");
    for case in cases {
        let name = case["name"].as_str().expect("case name");
        let mut event = check_event(json!({
            "output_metric_format": "graphite_plaintext",
            "output": case["output"],
            "status": case["status"],
            "output_metric_thresholds": case["thresholds"],
        }));
        process_check_output(&mut event, NOW);
        let check = event.check.as_ref().expect("check");
        assert_eq!(
            Value::from(check.status),
            case["expect_status"],
            "{name}: status"
        );
        let annotations: Value = serde_json::to_value(&event.metadata.annotations).expect("json");
        let expected = &case["expect_annotations"];
        if let Some(expected) = expected.as_object() {
            let mut keys: Vec<&String> = annotations.as_object().expect("map").keys().collect();
            let mut expected_keys: Vec<&String> = expected.keys().collect();
            keys.sort();
            expected_keys.sort();
            assert_eq!(keys, expected_keys, "{name}: annotation keys");
            for (key, value) in expected {
                // `null` in the table: only the key matters.
                if !value.is_null() {
                    assert_eq!(&annotations[key], value, "{name}: annotation {key}");
                }
            }
        }
    }
}

#[test]
fn handlers_are_set_and_output_discarded_after_extraction() {
    let mut event = check_event(json!({
        "output_metric_format": "graphite_plaintext",
        "output_metric_handlers": ["influx"],
        "discard_output": true,
        "output": "cpu.idle 90 1700000000\n",
    }));
    process_check_output(&mut event, NOW);
    let metrics = event.metrics.expect("metrics");
    assert_eq!(metrics.handlers, vec!["influx".to_owned()]);
    assert_eq!(
        metrics.points.len(),
        1,
        "points come from the output before it is blanked"
    );
    assert_eq!(event.check.expect("check").output, "");
}

#[test]
fn handlers_without_format_give_an_empty_metrics_section() {
    let mut event = check_event(json!({
        "output_metric_handlers": ["influx"],
        "output": "cpu.idle 90 1700000000\n",
    }));
    process_check_output(&mut event, NOW);
    let metrics = event
        .metrics
        .expect("metrics, as Sensu creates them for handlers");
    assert!(metrics.points.is_empty());
    assert_eq!(
        event.check.expect("check").output,
        "cpu.idle 90 1700000000\n"
    );
}

#[test]
fn checks_without_metric_settings_are_left_alone() {
    let mut event = check_event(json!({"output": "cpu.idle 90 1700000000\n", "status": 1}));
    let before = event.clone();
    process_check_output(&mut event, NOW);
    assert_eq!(event, before);
    assert!(event.metrics.is_none());
}

#[test]
fn thresholds_do_not_apply_to_a_failing_check() {
    let mut event = check_event(json!({
        "output_metric_format": "graphite_plaintext",
        "output": "disk.used 99 1700000000\n",
        "status": 1,
        "output_metric_thresholds": [
            {"name": "disk.used", "thresholds": [{"max": "90", "status": 2}]}
        ],
    }));
    process_check_output(&mut event, NOW);
    assert_eq!(event.check.expect("check").status, 1);
    assert!(event.metadata.annotations.is_empty());
}
