//! Filter expressions simple enough to decide without JavaScript: a comparison of event
//! fields and literals (`event.check.status >= 0`, `event.check.name == 'disk'`) or a field's
//! truthiness (`event.is_incident`, `!event.is_silenced`).
//!
//! Why: binding an event into QuickJS (serialize, `JSON.parse`, freeze) and running it cost
//! about a third of the backend's CPU per handled event, while most filters in practice are
//! such one-liners. What this module answers must be exactly what JavaScript would answer, so
//! it only answers when that is certain and otherwise says "ask JavaScript" (`None`):
//!
//! - the grammar is tiny (no parentheses, arithmetic, calls or whitespace oddities); anything
//!   else is not parsed;
//! - fields are read from the same synthesized event JavaScript binds
//!   (`kensa_eval::synthesize_event` of the redacted event) and every path step must be an own
//!   key of an object, so a missing field (undefined, or a `TypeError` one step later) and the
//!   prototype chain are left to JavaScript. [`EventView`] reads the plain event instead where
//!   synthesis provably leaves the value alone, and synthesizes only when a path needs it;
//! - comparisons are answered only between values of one type where JavaScript's rules are
//!   plain: numbers (IEEE doubles, as `JSON.parse` makes them) with any operator, strings and
//!   booleans with the (strict or loose) equality operators. Mixed types, `null`, objects and
//!   arrays go to JavaScript.
//!
//! A decided expression never fails, so it never produces the expression errors JavaScript can.

use std::borrow::Cow;
use std::cell::OnceCell;

use kensa_types::resources::event::Event;
use serde_json::Value;

use crate::field::{self, Field};

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expression {
    /// `<operand> <op> <operand>`.
    Compare(Operand, Op, Operand),
    /// `event.a.b` (negated: `!event.a.b`): the field's JavaScript truthiness.
    Truthy { path: Vec<String>, negated: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    /// Property names after `event`.
    Path(Vec<String>),
    Number(f64),
    Str(String),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// A field or literal value as a comparison sees it.
enum Primitive<'a> {
    Number(f64),
    Str(Cow<'a, str>),
    Bool(bool),
}

impl Expression {
    /// Parses `source`, or `None` when it is not in the small grammar this module decides.
    pub(crate) fn parse(source: &str) -> Option<Expression> {
        let mut tokens = Tokens::new(source);
        let expression = match tokens.next()? {
            Token::Not => {
                let Token::Operand(Operand::Path(path)) = tokens.next()? else {
                    return None;
                };
                Expression::Truthy {
                    path,
                    negated: true,
                }
            }
            Token::Operand(left) => match tokens.next() {
                None => match left {
                    Operand::Path(path) => Expression::Truthy {
                        path,
                        negated: false,
                    },
                    _ => return None,
                },
                Some(Token::Op(op)) => {
                    let Token::Operand(right) = tokens.next()? else {
                        return None;
                    };
                    Expression::Compare(left, op, right)
                }
                Some(_) => return None,
            },
            Token::Op(_) => return None,
        };
        // Everything must have been consumed (and the tokenizer must not have failed).
        match tokens.next() {
            None if !tokens.failed => Some(expression),
            _ => None,
        }
    }

    /// The expression's value for `event`, or `None` when only JavaScript can tell (see the
    /// module docs).
    pub(crate) fn decide(&self, event: &EventView<'_>) -> Option<bool> {
        match self {
            Expression::Truthy { path, negated } => {
                let truthy = match event.lookup(path)?.as_ref() {
                    Value::Null => false,
                    Value::Bool(value) => *value,
                    Value::Number(number) => {
                        let number = number.as_f64()?;
                        number != 0.0 && !number.is_nan()
                    }
                    Value::String(text) => !text.is_empty(),
                    Value::Array(_) | Value::Object(_) => true,
                };
                Some(truthy != *negated)
            }
            Expression::Compare(left, op, right) => {
                compare(primitive(event, left)?, *op, primitive(event, right)?)
            }
        }
    }
}

/// The `event` filter expressions see (`kensa_eval::synthesize_event` of the redacted event),
/// read without building it when possible.
///
/// Synthesis only adds: every object with a `metadata` object gets the metadata's keys it
/// lacks (after `labels`/`annotations` are made objects), `labels`/`annotations` become
/// objects on the event, its check and its entity, the event's `namespace` is filled in, and
/// the event gets its facts (`is_incident`, …) — overwriting same-named keys. Redaction only
/// rewrites the entity's labels and annotations. So a path under `check`, `entity` or
/// `metrics` that names no `labels`/`annotations` and leads through own keys of the event to a
/// string, number or boolean has that same value in the synthesized event; so does `name` or
/// `namespace` missing from an object but present in its `metadata`. Those are read straight
/// from the typed event (`field.rs`); every other lookup reads the redacted, synthesized
/// event, made on first need. `lookups_agree_with_the_synthesized_event` checks this against
/// `kensa_eval` for every path of sample events.
pub(crate) struct EventView<'a> {
    event: &'a Event,
    /// The event as JavaScript binds it before synthesis (see [`crate::redacted_json`]).
    redacted: OnceCell<Value>,
    synthesized: OnceCell<Value>,
}

impl<'a> EventView<'a> {
    pub(crate) fn new(event: &'a Event) -> EventView<'a> {
        EventView {
            event,
            redacted: OnceCell::new(),
            synthesized: OnceCell::new(),
        }
    }

    /// The redacted event as JSON: the one made for a lookup, if any, else a new one.
    pub(crate) fn into_redacted(self) -> Value {
        self.redacted
            .into_inner()
            .unwrap_or_else(|| crate::redacted_json(self.event))
    }

    /// The value at `path` under `event`, each step an own key of an object.
    fn lookup(&self, path: &[String]) -> Option<Cow<'_, Value>> {
        if let Some(value) = self.typed_lookup(path) {
            return Some(Cow::Owned(value));
        }
        let synthesized = self.synthesized.get_or_init(|| {
            let redacted = self
                .redacted
                .get_or_init(|| crate::redacted_json(self.event));
            kensa_eval::synthesize_event(redacted)
        });
        path.iter()
            .try_fold(synthesized, |value, name| {
                value.as_object()?.get(name.as_str())
            })
            .map(Cow::Borrowed)
    }

    /// The value at `path` read from the typed event, when neither redaction nor synthesis
    /// can have changed it.
    fn typed_lookup(&self, path: &[String]) -> Option<Value> {
        // Only below the objects synthesis merely flattens: the event's own top-level keys may
        // be replaced (facts, `namespace`).
        if path.len() < 2
            || !matches!(path[0].as_str(), "check" | "entity" | "metrics")
            || path
                .iter()
                .any(|name| name == "labels" || name == "annotations")
        {
            return None;
        }
        match field::field(self.event, path) {
            Field::Leaf(value) => Some(value),
            Field::Absent => {
                // Flattened from the object's metadata.
                let (name, parent) = path.split_last()?;
                if name != "name" && name != "namespace" {
                    return None;
                }
                let mut in_metadata = parent.to_vec();
                in_metadata.push("metadata".to_owned());
                in_metadata.push(name.clone());
                match field::field(self.event, &in_metadata) {
                    Field::Leaf(value) => Some(value),
                    Field::Absent | Field::Unknown => None,
                }
            }
            Field::Unknown => None,
        }
    }
}

fn primitive<'a>(event: &'a EventView<'_>, operand: &'a Operand) -> Option<Primitive<'a>> {
    // `as_f64` rounds integers beyond 2^53 to the nearest double, as `JSON.parse` does.
    Some(match operand {
        Operand::Number(number) => Primitive::Number(*number),
        Operand::Str(text) => Primitive::Str(Cow::Borrowed(text)),
        Operand::Bool(value) => Primitive::Bool(*value),
        Operand::Path(path) => match event.lookup(path)? {
            Cow::Borrowed(value) => match value {
                Value::Number(number) => Primitive::Number(number.as_f64()?),
                Value::String(text) => Primitive::Str(Cow::Borrowed(text)),
                Value::Bool(value) => Primitive::Bool(*value),
                Value::Null | Value::Array(_) | Value::Object(_) => return None,
            },
            Cow::Owned(value) => match value {
                Value::Number(number) => Primitive::Number(number.as_f64()?),
                Value::String(text) => Primitive::Str(Cow::Owned(text)),
                Value::Bool(value) => Primitive::Bool(value),
                Value::Null | Value::Array(_) | Value::Object(_) => return None,
            },
        },
    })
}

fn compare(left: Primitive<'_>, op: Op, right: Primitive<'_>) -> Option<bool> {
    // Same-type operands: `==` is `===` and `!=` is `!==`.
    let ordering = match (left, right) {
        (Primitive::Number(left), Primitive::Number(right)) => {
            return Some(match op {
                Op::Equal => left == right,
                Op::NotEqual => left != right,
                Op::Less => left < right,
                Op::LessOrEqual => left <= right,
                Op::Greater => left > right,
                Op::GreaterOrEqual => left >= right,
            })
        }
        (Primitive::Str(left), Primitive::Str(right)) => left == right,
        (Primitive::Bool(left), Primitive::Bool(right)) => left == right,
        _ => return None,
    };
    // Strings compare by UTF-16 code units and booleans as numbers: left to JavaScript.
    match op {
        Op::Equal => Some(ordering),
        Op::NotEqual => Some(!ordering),
        Op::Less | Op::LessOrEqual | Op::Greater | Op::GreaterOrEqual => None,
    }
}

#[derive(Debug)]
enum Token {
    Operand(Operand),
    Op(Op),
    Not,
}

/// Splits an expression into tokens; sets `failed` (and stops) at anything outside the grammar.
struct Tokens<'a> {
    rest: &'a str,
    failed: bool,
}

impl<'a> Tokens<'a> {
    fn new(source: &'a str) -> Tokens<'a> {
        Tokens {
            rest: source,
            failed: false,
        }
    }

    fn fail(&mut self) -> Option<Token> {
        self.failed = true;
        self.rest = "";
        None
    }

    fn next(&mut self) -> Option<Token> {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
        let first = self.rest.chars().next()?;
        if self.failed {
            return None;
        }
        const OPS: [(&str, Op); 8] = [
            ("===", Op::Equal),
            ("!==", Op::NotEqual),
            ("==", Op::Equal),
            ("!=", Op::NotEqual),
            ("<=", Op::LessOrEqual),
            (">=", Op::GreaterOrEqual),
            ("<", Op::Less),
            (">", Op::Greater),
        ];
        for (text, op) in OPS {
            if let Some(rest) = self.rest.strip_prefix(text) {
                self.rest = rest;
                return Some(Token::Op(op));
            }
        }
        if first == '!' {
            self.rest = &self.rest[1..];
            return Some(Token::Not);
        }
        if first == '\'' || first == '"' {
            return self.string(first);
        }
        if first == '-' || first.is_ascii_digit() {
            return self.number();
        }
        if first.is_ascii_alphabetic() || first == '_' || first == '$' {
            return self.word();
        }
        self.fail()
    }

    /// A quoted string without escapes or line breaks.
    fn string(&mut self, quote: char) -> Option<Token> {
        let body = &self.rest[1..];
        let Some(end) = body.find(quote) else {
            return self.fail();
        };
        let text = &body[..end];
        if text.contains(['\\', '\n', '\r', '\u{2028}', '\u{2029}']) {
            return self.fail();
        }
        self.rest = &body[end + 1..];
        Some(Token::Operand(Operand::Str(text.to_owned())))
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, followed by neither a digit, a letter nor a dot.
    fn number(&mut self) -> Option<Token> {
        let text = self.rest;
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let integer = unsigned
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(unsigned.len());
        if integer == 0 || (integer > 1 && unsigned.starts_with('0')) {
            // No digits, or a legacy octal / leading zero (a syntax error in strict mode).
            return self.fail();
        }
        let mut end = integer;
        if let Some(fraction) = unsigned[integer..].strip_prefix('.') {
            let digits = fraction
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(fraction.len());
            if digits == 0 {
                return self.fail();
            }
            end += 1 + digits;
        }
        if unsigned[end..].starts_with(|c: char| c.is_ascii_alphanumeric() || "._$".contains(c)) {
            return self.fail();
        }
        let length = text.len() - unsigned.len() + end;
        let Ok(number) = text[..length].parse::<f64>() else {
            return self.fail();
        };
        self.rest = &text[length..];
        Some(Token::Operand(Operand::Number(number)))
    }

    /// `true`, `false`, or `event.<name>(.<name>)*` with ASCII identifier names.
    fn word(&mut self) -> Option<Token> {
        let identifier_length = |text: &str| {
            text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
                .unwrap_or(text.len())
        };
        let length = identifier_length(self.rest);
        let word = &self.rest[..length];
        self.rest = &self.rest[length..];
        match word {
            "true" => return Some(Token::Operand(Operand::Bool(true))),
            "false" => return Some(Token::Operand(Operand::Bool(false))),
            "event" => {}
            _ => return self.fail(),
        }
        let mut path = Vec::new();
        while let Some(rest) = self.rest.strip_prefix('.') {
            let length = identifier_length(rest);
            let name = &rest[..length];
            if name.is_empty()
                || name.starts_with(|c: char| c.is_ascii_digit())
                || matches!(name, "__proto__" | "constructor" | "prototype")
            {
                return self.fail();
            }
            path.push(name.to_owned());
            self.rest = &rest[length..];
        }
        if path.is_empty() {
            return self.fail();
        }
        Some(Token::Operand(Operand::Path(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(names: &[&str]) -> Operand {
        Operand::Path(names.iter().map(|name| (*name).to_owned()).collect())
    }

    #[test]
    fn parses_the_small_grammar_only() {
        let parsed = [
            (
                "event.check.status >= 0",
                Expression::Compare(
                    path(&["check", "status"]),
                    Op::GreaterOrEqual,
                    Operand::Number(0.0),
                ),
            ),
            (
                "  event.check.name==='disk'\t",
                Expression::Compare(
                    path(&["check", "name"]),
                    Op::Equal,
                    Operand::Str("disk".into()),
                ),
            ),
            (
                "-1.5 < event.check.status",
                Expression::Compare(Operand::Number(-1.5), Op::Less, path(&["check", "status"])),
            ),
            (
                "!event.is_silenced",
                Expression::Truthy {
                    path: vec!["is_silenced".into()],
                    negated: true,
                },
            ),
        ];
        for (source, expected) in parsed {
            assert_eq!(Expression::parse(source), Some(expected), "{source:?}");
        }
        let not_parsed = [
            "",
            "   ",
            "event",
            "event.",
            "event..a",
            "event.check.status >= 0;",
            "event.check.status >= 0 && event.is_incident",
            "(event.check.status >= 0)",
            "event.check.status + 1 > 0",
            "event.check.status >= 01",
            "event.check.status >= 1e3",
            "event.check.status >= 1.",
            "event.check.status >= 0x10",
            "event.check.status >= - 1",
            "event.check.name == 'a\\'b'",
            "event.check.name == 'unterminated",
            "event.check.history.0.status == 0",
            "event.check['status'] == 0",
            "event.__proto__ == 1",
            "entity.name == 'x'",
            "hour(event.timestamp) > 1",
            "event.check.status >= 0 // comment",
            "event.check.status\n>= 0",
            "1 == 1 == 1",
            "!1",
            "!!event.is_incident",
            "0 < 1",
        ];
        for source in not_parsed {
            let parsed = Expression::parse(source);
            // Literal-only comparisons parse (and are decided exactly); everything else here
            // must not.
            if source == "0 < 1" {
                assert!(parsed.is_some());
            } else {
                assert_eq!(parsed, None, "{source:?}");
            }
        }
    }

    /// Sample events as the pipeline gets them: an agent's check result with labels to redact
    /// and a proxy event with metrics.
    fn events() -> Vec<Event> {
        [
            json!({
                "timestamp": 1700000000,
                "entity": {
                    "entity_class": "agent",
                    "metadata": {"name": "web1", "namespace": "default",
                                 "labels": {"tier": "web", "password": "hunter2"},
                                 "annotations": {"team": "ops"}},
                    "subscriptions": ["linux", "entity:web1"],
                    "redact": ["password"],
                    "system": {"hostname": "web1", "os": "linux", "platform": "debian",
                               "network": {"interfaces": [{"name": "eth0"}]}},
                },
                "check": {
                    "metadata": {"name": "disk", "namespace": "default"},
                    "command": "check-disk",
                    "interval": 60,
                    "status": 2,
                    "occurrences": 3,
                    "output": "",
                    "executed": 1700000000,
                    "issued": 1700000000,
                    "duration": 0.25,
                    "state": "failing",
                    "round_robin": true,
                    "handlers": ["sink"],
                    "subscriptions": ["linux"],
                    "history": [{"status": 0, "executed": 1}, {"status": 2, "executed": 2}],
                    "is_silenced": false,
                },
                "metadata": {"namespace": "default"},
                "id": "3b0f4a0e-7d5c-4d0a-9f43-2d0c3c8e9a11",
                "sequence": 7,
            }),
            json!({
                "entity": {
                    "entity_class": "proxy",
                    "metadata": {"name": "router", "namespace": "net"},
                },
                "check": {
                    "metadata": {"name": "ping", "namespace": "net",
                                 "labels": {"region": "eu"}},
                    "status": 0,
                    "proxy_entity_name": "router",
                    "output": "pong",
                },
                "metrics": {"handlers": ["influx"],
                            "points": [{"name": "rtt", "value": 1.5, "timestamp": 1}]},
                "metadata": {"namespace": "net"},
            }),
        ]
        .into_iter()
        .map(|event| serde_json::from_value(event).unwrap())
        .collect()
    }

    /// `EventView` reads the typed event only where that gives what the synthesized event
    /// holds: every path of these events (and some that exist only after synthesis, or not at
    /// all) is looked up both ways.
    #[test]
    fn lookups_agree_with_the_synthesized_event() {
        fn paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            out.push(prefix.clone());
            if let Value::Object(map) = value {
                for (key, child) in map {
                    prefix.push(key.clone());
                    paths(child, prefix, out);
                    prefix.pop();
                }
            }
        }
        let mut read_typed = 0;
        for event in events() {
            let synthesized = kensa_eval::synthesize_event(&crate::redacted_json(&event));
            let mut all = Vec::new();
            paths(&synthesized, &mut Vec::new(), &mut all);
            for extra in [
                &["check", "missing"][..],
                &["check", "metadata", "missing"],
                &["check", "history", "status"],
                &["metrics", "name"],
                &["entity", "system", "missing", "deeper"],
            ] {
                all.push(extra.iter().map(|name| (*name).to_owned()).collect());
            }
            for path in all {
                let expected = path
                    .iter()
                    .try_fold(&synthesized, |value, name| value.as_object()?.get(name));
                let view = EventView::new(&event);
                if let Some(typed) = view.typed_lookup(&path) {
                    read_typed += 1;
                    assert_eq!(Some(&typed), expected, "typed read of {path:?}");
                }
                assert_eq!(view.lookup(&path).as_deref(), expected, "{path:?}");
            }
        }
        assert!(
            read_typed > 20,
            "only {read_typed} paths were read from the typed event"
        );
    }

    /// The reason the module exists is to answer exactly what JavaScript answers: every
    /// expression it decides is also run in the real engine, bound to the same event the
    /// pipeline would bind.
    #[test]
    fn decisions_agree_with_javascript() {
        let mut engine = kensa_eval::Engine::new(kensa_eval::Limits::default()).unwrap();
        let decided = [
            "event.check.status >= 0",
            "event.check.status > 2",
            "event.check.status == 2",
            "event.check.status === 2.0",
            "event.check.status != 2",
            "event.check.status !== 3",
            "event.check.status < 3",
            "event.check.status <= 1",
            "2 <= event.check.status",
            "event.check.occurrences == 3",
            "event.check.duration < 0.3",
            "event.check.duration == 0.25",
            "event.check.executed > 1699999999",
            "event.check.interval >= -7",
            "event.check.name == 'disk'",
            "event.check.name === \"disk\"",
            "event.check.name != 'cpu'",
            "event.check.metadata.name == 'disk'",
            "event.check.namespace == 'default'",
            "event.check.state == 'failing'",
            "event.entity.entity_class == 'agent'",
            "event.entity.name !== 'web2'",
            "event.entity.system.os == 'linux'",
            "event.entity.labels.tier == 'web'",
            "event.entity.labels.password == 'hunter2'",
            "event.namespace == 'default'",
            "event.timestamp > 0",
            "event.check.round_robin == true",
            "event.check.round_robin !== false",
            "event.is_incident",
            "!event.is_incident",
            "event.is_resolution",
            "!event.is_silenced",
            "event.has_check === true",
            "event.check.output",
            "!event.check.output",
            "event.check.occurrences",
            "event.check.history",
            "event.entity.subscriptions",
            "0 < 1",
            "true == false",
        ];
        // Left to JavaScript: missing fields (undefined, or a TypeError), null, objects,
        // mixed types and string ordering.
        let undecided = [
            "event.check.missing == 1",
            "event.check.missing.deeper == 1",
            "event.missing.status == 1",
            "event.check.nothing == null",
            "event.check.history == 1",
            "event.check.metadata == 1",
            "event.check.status == '2'",
            "event.check.round_robin == 1",
            "event.check.name < 'z'",
            "event.check.round_robin > false",
            "event.check.missing",
            "event.check.status.toFixed == 1",
        ];
        let mut decided_count = 0;
        for event in events() {
            let view = EventView::new(&event);
            let bound = engine
                .bind_event(&crate::redacted_json(&event), 1_700_000_100)
                .unwrap();
            for source in decided {
                let expression = Expression::parse(source).unwrap_or_else(|| panic!("{source:?}"));
                let javascript = bound.eval_bool(source);
                match expression.decide(&view) {
                    Some(native) => {
                        decided_count += 1;
                        assert_eq!(Ok(native), javascript, "{source:?}");
                    }
                    // Only where this event lacks the field (the proxy event: no history,
                    // labels, round robin…).
                    None => assert!(event.entity.as_ref().unwrap().entity_class == "proxy"),
                }
            }
            for source in undecided {
                let decision = Expression::parse(source).and_then(|e| e.decide(&view));
                assert_eq!(decision, None, "{source:?}");
            }
        }
        assert!(decided_count >= decided.len(), "{decided_count}");
    }
}
