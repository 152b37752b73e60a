//! Fixture-driven round trips for every kind. Each case under `testdata/resources/<kind>/` is a
//! `<case>.json` (unwrapped API body), a `<case>.yaml` (wrapped `sensuctl create` document) and
//! the `<case>.expected.json` both must normalize to — byte for byte, so field order and the
//! always-present/omitted fields are checked too. The expected form must also be a fixed point
//! of `Kind::normalize`, and survive wrapping to YAML and back.
//!
//! `KENSA_BLESS=1 cargo test -p kensa-types --test roundtrip` rewrites the expected files from
//! the JSON inputs; review the diff before committing it.

use std::fs;
use std::path::{Path, PathBuf};

use kensa_types::{Kind, Wrapped};
use serde_json::Value;

fn resources_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/resources")
}

/// One fixture case: the kind (from its directory), and its files.
struct Case {
    kind: Kind,
    name: String,
    json: Option<PathBuf>,
    yaml: Option<PathBuf>,
    expected: PathBuf,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut dirs: Vec<PathBuf> = fs::read_dir(resources_dir())
        .expect("testdata/resources exists")
        .map(|entry| entry.expect("readable dir entry").path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let dir_name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 dir name")
            .to_owned();
        let kind =
            Kind::from_type_name(&dir_name).unwrap_or_else(|| panic!("{dir_name} is not a kind"));
        let mut stems: Vec<String> = fs::read_dir(&dir)
            .expect("kind dir")
            .filter_map(|entry| {
                let name = entry
                    .expect("dir entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8 file name");
                let stem = name
                    .strip_suffix(".yaml")
                    .or_else(|| name.strip_suffix(".json"))?;
                (!stem.ends_with(".expected")).then(|| stem.to_owned())
            })
            .collect();
        stems.sort();
        stems.dedup();
        for stem in stems {
            let existing =
                |ext: &str| Some(dir.join(format!("{stem}.{ext}"))).filter(|p| p.exists());
            cases.push(Case {
                kind,
                name: format!("{dir_name}/{stem}"),
                json: existing("json"),
                yaml: existing("yaml"),
                expected: dir.join(format!("{stem}.expected.json")),
            });
        }
    }
    cases
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).expect("a value serializes")
}

fn from_json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A wrapped YAML document → `(kind, unwrapped body)`.
fn unwrap_yaml(text: &str) -> Result<(Kind, Value), String> {
    let value: Value = yaml_serde::from_str(text).map_err(|err| format!("yaml: {err}"))?;
    let wrapped: Wrapped =
        serde_json::from_value(value).map_err(|err| format!("envelope: {err}"))?;
    wrapped.unwrap().map_err(|err| format!("unwrap: {err}"))
}

/// Runs every check of one case, returning what went wrong.
fn check_case(case: &Case) -> Vec<String> {
    let mut failures = Vec::new();
    let expected = from_json(&case.expected);
    let expected_text = compact(&expected);
    let mut compare = |what: &str, got: Result<Value, String>| match got {
        Ok(got) if compact(&got) == expected_text => {}
        Ok(got) => failures.push(format!(
            "{}: {what} differs\n  expected: {expected_text}\n       got: {}",
            case.name,
            compact(&got)
        )),
        Err(err) => failures.push(format!("{}: {what} failed: {err}", case.name)),
    };

    if let Some(json) = &case.json {
        compare(
            "JSON input",
            case.kind
                .normalize(from_json(json))
                .map_err(|err| err.to_string()),
        );
    }
    if let Some(yaml) = &case.yaml {
        let normalized = unwrap_yaml(&read(yaml)).and_then(|(kind, body)| {
            if kind != case.kind {
                return Err(format!("declares type {kind}"));
            }
            case.kind.normalize(body).map_err(|err| err.to_string())
        });
        compare("wrapped YAML input", normalized);
    }
    compare(
        "expected (fixed point)",
        case.kind
            .normalize(expected.clone())
            .map_err(|err| err.to_string()),
    );
    let rewrapped = yaml_serde::to_string(&Wrapped::wrap(case.kind, &expected))
        .map_err(|err| format!("yaml: {err}"))
        .and_then(|text| unwrap_yaml(&text))
        .and_then(|(_, body)| case.kind.normalize(body).map_err(|err| err.to_string()));
    compare("expected wrapped to YAML and back", rewrapped);
    failures
}

#[test]
fn every_kind_has_json_and_yaml_fixtures() {
    let cases = cases();
    for kind in Kind::ALL {
        assert!(
            cases
                .iter()
                .any(|case| case.kind == kind && case.json.is_some() && case.yaml.is_some()),
            "{kind} needs a fixture case with both a .json and a .yaml input"
        );
    }
}

#[test]
fn fixtures_normalize_to_their_expected_form() {
    let cases = cases();
    if std::env::var_os("KENSA_BLESS").is_some() {
        for case in &cases {
            let input = case
                .json
                .as_ref()
                .unwrap_or_else(|| panic!("{}: blessing needs a .json input", case.name));
            let normalized = case
                .kind
                .normalize(from_json(input))
                .unwrap_or_else(|err| panic!("{}: {err}", case.name));
            let text = serde_json::to_string_pretty(&normalized).expect("serializes") + "\n";
            fs::write(&case.expected, text).expect("writes expected file");
        }
    }
    let failures: Vec<String> = cases.iter().flat_map(check_case).collect();
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
