//! Asset `filters` — JavaScript over the agent's `entity`, as in Sensu — evaluated with the
//! project's sandboxed engine (`kensa_eval`), cheaply enough for an agent:
//!
//! - the usual asset filter, a comparison of an entity field with a string
//!   (`entity.system.os == 'linux'`, `entity.system.arch === "amd64"`, `!=`, `!==`), is decided
//!   natively ([`native`]) when the field is a string or absent — the answer JavaScript would
//!   give (the tests run every native case through the engine too); anything else goes to the
//!   engine, so most agents never start one (measured: ~0.9 MB less RSS once assets ran);
//! - results are remembered per filter list for the current entity (the entity only changes
//!   when its configuration or system facts do), so a check running every 10 s evaluates its
//!   assets' filters once, not every 10 s;
//! - an engine is created only when something is neither native nor remembered, on the
//!   blocking pool, and dropped right after: the agent never keeps a JavaScript runtime.
//!
//! A filter that fails to evaluate (a TypeError, a timeout) is an error the caller reports as
//! a failed check naming the asset — as in Sensu, where the check fails with the filter's
//! error — and is not remembered, so a fixed asset is evaluated again.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use kensa_eval::{Engine, Limits};
use serde_json::Value;

/// Filter lists remembered for one entity; beyond this the memory is cleared.
const MAX_REMEMBERED: usize = 256;

/// The engine's limits on the agent: an entity is small.
fn limits() -> Limits {
    Limits {
        memory_bytes: 8 << 20,
        stack_bytes: 256 << 10,
        timeout: Duration::from_millis(100),
    }
}

#[derive(Default)]
pub struct FilterCache {
    state: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    /// Hash of the entity the results are for.
    entity: u64,
    results: HashMap<Vec<String>, bool>,
}

impl FilterCache {
    /// For each filter list: whether every filter is true for `entity` (an empty list is).
    pub async fn evaluate(
        &self,
        entity: &Value,
        lists: &[Vec<String>],
        now_unix: i64,
    ) -> Vec<Result<bool, String>> {
        let fingerprint = fingerprint(entity);
        let mut answers: Vec<Option<Result<bool, String>>> = {
            let mut state = self.state.lock().expect("filter cache lock poisoned");
            if state.entity != fingerprint {
                state.entity = fingerprint;
                state.results.clear();
            }
            lists
                .iter()
                .map(|list| match list.is_empty() {
                    true => Some(Ok(true)),
                    false => state.results.get(list).map(|matched| Ok(*matched)),
                })
                .collect()
        };
        let unknown: Vec<Vec<String>> = lists
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_none())
            .map(|(list, _)| list.clone())
            .collect();
        if unknown.is_empty() {
            return answers.into_iter().map(Option::unwrap).collect();
        }
        let synthesized = kensa_eval::synthesize_entity(entity);
        let natively: Vec<Option<bool>> = unknown
            .iter()
            .map(|list| native_all(list, &synthesized))
            .collect();
        let for_engine: Vec<Vec<String>> = unknown
            .iter()
            .zip(&natively)
            .filter(|(_, decided)| decided.is_none())
            .map(|(list, _)| list.clone())
            .collect();
        let mut from_engine = if for_engine.is_empty() {
            Vec::new()
        } else {
            let entity = entity.clone();
            let count = for_engine.len();
            tokio::task::spawn_blocking(move || evaluate_now(&entity, &for_engine, now_unix))
                .await
                .unwrap_or_else(|err| vec![Err(format!("filter evaluation failed: {err}")); count])
        }
        .into_iter();
        let evaluated: Vec<Result<bool, String>> = natively
            .into_iter()
            .map(|decided| match decided {
                Some(matched) => Ok(matched),
                None => from_engine.next().expect("one engine result per list"),
            })
            .collect();
        {
            let mut state = self.state.lock().expect("filter cache lock poisoned");
            if state.entity == fingerprint {
                if state.results.len() + unknown.len() > MAX_REMEMBERED {
                    state.results.clear();
                }
                for (list, result) in unknown.iter().zip(&evaluated) {
                    if let Ok(matched) = result {
                        state.results.insert(list.clone(), *matched);
                    }
                }
            }
        }
        let mut evaluated = evaluated.into_iter();
        for answer in answers.iter_mut().filter(|answer| answer.is_none()) {
            *answer = evaluated.next();
        }
        answers.into_iter().map(Option::unwrap).collect()
    }
}

/// Creates an engine, binds `entity` once and runs every list. Blocking.
fn evaluate_now(entity: &Value, lists: &[Vec<String>], now_unix: i64) -> Vec<Result<bool, String>> {
    let failed_all = |message: String| vec![Err(message); lists.len()];
    let mut engine = match Engine::new(limits()) {
        Ok(engine) => engine,
        Err(err) => return failed_all(format!("cannot start the filter engine: {err}")),
    };
    let bound = match engine.bind_entity(entity, now_unix) {
        Ok(bound) => bound,
        Err(err) => return failed_all(format!("cannot bind the entity: {err}")),
    };
    lists
        .iter()
        .map(|list| {
            for filter in list {
                match bound.eval_bool(filter) {
                    Ok(true) => continue,
                    Ok(false) => return Ok(false),
                    Err(err) => return Err(format!("filter {filter:?}: {err}")),
                }
            }
            Ok(true)
        })
        .collect()
}

/// Every filter of `list` decided natively, in order, stopping at the first false one as the
/// engine does; `None` as soon as one needs the engine.
fn native_all(list: &[String], synthesized: &Value) -> Option<bool> {
    for filter in list {
        if !native(filter, synthesized)? {
            return Some(false);
        }
    }
    Some(true)
}

/// `entity.<path> <op> '<text>'` with `op` one of `==`, `===`, `!=`, `!==` and the text in
/// single or double quotes without escapes, decided without JavaScript when the field is a
/// string, or absent from an object that exists. `None` for anything else — another shape, a
/// field of another type (where `==` would coerce), a missing parent (a TypeError), a name
/// `Object.prototype` has — which the engine then decides.
pub fn native(filter: &str, synthesized: &Value) -> Option<bool> {
    let rest = filter.trim().strip_prefix("entity.")?;
    let path_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(rest.len());
    let (path, rest) = rest.split_at(path_end);
    let rest = rest.trim_start();
    let (equal, rest) = if let Some(rest) = rest.strip_prefix("===") {
        (true, rest)
    } else if let Some(rest) = rest.strip_prefix("==") {
        (true, rest)
    } else if let Some(rest) = rest.strip_prefix("!==") {
        (false, rest)
    } else if let Some(rest) = rest.strip_prefix("!=") {
        (false, rest)
    } else {
        return None;
    };
    let rest = rest.trim();
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let text = rest.strip_prefix(quote)?.strip_suffix(quote)?;
    if text.contains(['\\', '\'', '"', '\n']) {
        return None;
    }
    let segments: Vec<&str> = path.split('.').collect();
    let is_identifier = |segment: &&str| {
        segment
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
    };
    if !segments.iter().all(is_identifier) {
        return None;
    }
    let (last, parents) = segments.split_last()?;
    let mut object = synthesized.as_object()?;
    for segment in parents {
        object = object.get(*segment)?.as_object()?;
    }
    let found = match object.get(*last) {
        Some(Value::String(value)) => value == text,
        Some(_) => return None,
        None if last.starts_with("__") || OBJECT_PROTOTYPE.contains(last) => return None,
        None => false,
    };
    Some(found == equal)
}

/// What every plain JavaScript object inherits: never "absent".
const OBJECT_PROTOTYPE: [&str; 7] = [
    "constructor",
    "hasOwnProperty",
    "isPrototypeOf",
    "propertyIsEnumerable",
    "toLocaleString",
    "toString",
    "valueOf",
];

fn fingerprint(entity: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(entity)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn native_answers_are_the_engines() {
        let entity = json!({
            "metadata": {"name": "web1", "namespace": "default", "labels": {"tier": "1"}},
            "entity_class": "agent",
            "system": {"os": "linux", "arch": "amd64", "platform_version": "12", "cpus": 4,
                       "network": {"interfaces": []}}
        });
        let synthesized = kensa_eval::synthesize_entity(&entity);
        let cases: &[(&str, Option<bool>)] = &[
            ("entity.system.os == 'linux'", Some(true)),
            ("entity.system.os === \"linux\"", Some(true)),
            ("  entity.system.arch=='arm64'  ", Some(false)),
            ("entity.system.arch != 'arm64'", Some(true)),
            ("entity.system.arch !== 'amd64'", Some(false)),
            ("entity.name == 'web1'", Some(true)),
            ("entity.labels.tier == '1'", Some(true)),
            ("entity.labels.missing == 'x'", Some(false)),
            ("entity.labels.missing != 'x'", Some(true)),
            ("entity.system.os == ''", Some(false)),
            // Left to the engine.
            ("entity.system.cpus == '4'", None),
            ("entity.system.nothing.here == 'x'", None),
            ("entity.system.constructor == 'x'", None),
            (
                "entity.system.os == 'linux' && entity.system.arch == 'amd64'",
                None,
            ),
            ("entity.system.os == 'lin\\x75x'", None),
            ("entity.system.os.length == 5", None),
            ("'linux' == entity.system.os", None),
            ("entity.system.network == 'x'", None),
        ];
        let mut engine = Engine::new(limits()).unwrap();
        let bound = engine.bind_entity(&entity, 0).unwrap();
        for (filter, expected) in cases {
            assert_eq!(native(filter, &synthesized), *expected, "{filter}");
            if let Some(expected) = expected {
                assert_eq!(
                    bound.eval_bool(filter).ok(),
                    Some(*expected),
                    "engine: {filter}"
                );
            }
        }
    }

    #[tokio::test]
    async fn filters_select_by_entity_and_errors_are_reported() {
        let cache = FilterCache::default();
        let entity = json!({
            "metadata": {"name": "web1", "namespace": "default", "labels": {}},
            "system": {"os": "linux", "arch": "amd64", "platform": "debian"}
        });
        let lists = vec![
            vec![],
            vec![
                "entity.system.os == 'linux'".to_owned(),
                "entity.system.arch == 'amd64'".to_owned(),
            ],
            vec![
                "entity.system.os == 'linux'".to_owned(),
                "entity.system.arch == 'arm64'".to_owned(),
            ],
            vec!["entity.system.nope.deeper == 1".to_owned()],
        ];
        let results = cache.evaluate(&entity, &lists, 0).await;
        assert_eq!(results[0], Ok(true));
        assert_eq!(results[1], Ok(true));
        assert_eq!(results[2], Ok(false));
        let error = results[3].clone().unwrap_err();
        assert!(error.contains("entity.system.nope.deeper"), "{error}");
        // Remembered (the same answers again), errors excepted.
        let again = cache.evaluate(&entity, &lists, 0).await;
        assert_eq!(again[..3], results[..3]);
        assert_eq!(cache.state.lock().unwrap().results.len(), 2);
        // Another entity: evaluated afresh.
        let arm = json!({"metadata": {"name": "pi"}, "system": {"os": "linux", "arch": "arm64"}});
        let results = cache.evaluate(&arm, &lists[1..3], 0).await;
        assert_eq!(results, vec![Ok(false), Ok(true)]);
    }
}
