//! Sensu token substitution: rendering Go-template tokens such as
//! `{{ .labels.disk | default 80 }}` in check, hook and asset definitions against the
//! synthesized entity (reference: sensu-resources-api.md §6.2).
//!
//! Semantics follow Go's `text/template` as Sensu uses it, with two deliberate differences,
//! both turning silent garbage into an error: a JSON `null` without a `default` is an
//! unmatched token (Go would print `<nil>`), and so is `index` on a missing key (Go prints
//! `<nil>` or an empty string depending on the map type). Values print like Go's `%v`: maps
//! as `map[k:v]` with sorted keys, arrays as `[a b]`, integral floats without a fraction.

mod parse;

use std::borrow::Cow;

use serde_json::{Map, Value};

use parse::{Action, Command, Function, Operand, Piece, Pipeline};

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A token resolved to nothing (missing key or null) and had no `default`. Holds the
    /// token as written, e.g. `{{ .labels.missing }}`.
    #[error("unmatched token: {0}")]
    Unmatched(String),
    /// The template does not parse; positions are 1-based.
    #[error("invalid template at line {line}, column {column}: {message}")]
    Syntax {
        /// What is wrong, e.g. `unclosed action`.
        message: String,
        /// 1-based line in the template.
        line: usize,
        /// 1-based column (in characters) in the template.
        column: usize,
    },
    /// A token could not be evaluated, e.g. a field of a string or an index out of range.
    #[error("cannot evaluate {token}: {message}")]
    Eval {
        /// The token as written.
        token: String,
        /// What went wrong.
        message: String,
    },
    /// An error in one string of a JSON document rendered by [`substitute_json`].
    #[error("{path}: {source}")]
    InField {
        /// Where the string is, e.g. `proxy_requests.entity_attributes[0]`.
        path: String,
        /// The error of that string.
        source: Box<TokenError>,
    },
}

/// The environment variable that holds an asset's install directory (`sensu/http-checks` →
/// `SENSU_HTTP_CHECKS_PATH`: uppercased, every character but ASCII letters and digits
/// replaced by `_`). It is what the `assetPath` template function returns, so
/// `${{assetPath "sensu/http-checks"}}` renders as `$SENSU_HTTP_CHECKS_PATH` and
/// `%{{assetPath "x"}}%` as `%X_PATH%` on Windows.
pub fn asset_path_variable(asset_name: &str) -> String {
    let mut variable: String = asset_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    variable.push_str("_PATH");
    variable
}

/// Renders one template string against `data` (normally [`crate::synthesize_entity`]).
///
/// ```
/// use kensa_eval::{render, TokenError};
/// use serde_json::json;
///
/// let entity = json!({"name": "web1", "labels": {"disk": "70", "cpu.threshold": "90"}});
/// let command = r#"check -w {{ .labels.disk | default 80 }} -c {{ index .labels "cpu.threshold" }} {{ .name }}"#;
/// assert_eq!(render(command, &entity).unwrap(), "check -w 70 -c 90 web1");
/// assert_eq!(
///     render("{{ .labels.missing }}", &entity),
///     Err(TokenError::Unmatched("{{ .labels.missing }}".into()))
/// );
/// ```
pub fn render(template: &str, data: &Value) -> Result<String, TokenError> {
    if !template.contains("{{") {
        return Ok(template.to_owned());
    }
    let mut output = String::with_capacity(template.len());
    for piece in parse::parse(template)? {
        match piece {
            Piece::Text(text) => output.push_str(text),
            Piece::Action(action) => render_action(&action, data, &mut output)?,
        }
    }
    Ok(output)
}

/// Renders every string in `value` (through objects and arrays; keys and non-string values
/// are left alone), as Sensu does with a check, hook or asset before using it. Errors name
/// the JSON path of the failing string. Callers exclude fields that must never be
/// substituted (an asset's `sha512`).
pub fn substitute_json(value: &Value, data: &Value) -> Result<Value, TokenError> {
    substitute_at(value, data, &mut String::new())
}

fn substitute_at(value: &Value, data: &Value, path: &mut String) -> Result<Value, TokenError> {
    match value {
        Value::String(template) => {
            render(template, data)
                .map(Value::String)
                .map_err(|error| match path.is_empty() {
                    true => error,
                    false => TokenError::InField {
                        path: path.clone(),
                        source: Box::new(error),
                    },
                })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                with_segment(path, &format!("[{index}]"), |path| {
                    substitute_at(item, data, path)
                })
            })
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(fields) => fields
            .iter()
            .map(|(key, field)| {
                let segment = if path.is_empty() {
                    key.clone()
                } else {
                    format!(".{key}")
                };
                with_segment(path, &segment, |path| substitute_at(field, data, path))
                    .map(|field| (key.clone(), field))
            })
            .collect::<Result<Map<_, _>, _>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

/// Runs `f` with `segment` appended to `path`, restoring `path` afterwards.
fn with_segment<R>(path: &mut String, segment: &str, f: impl FnOnce(&mut String) -> R) -> R {
    let length = path.len();
    path.push_str(segment);
    let result = f(path);
    path.truncate(length);
    result
}

/// The value of an operand or command: Go's "invalid value" for a missing key, or JSON.
enum Resolved<'d> {
    Missing,
    Json(Cow<'d, Value>),
}

impl Resolved<'_> {
    /// Missing or null: what `default` replaces.
    fn is_nil(&self) -> bool {
        match self {
            Resolved::Missing => true,
            Resolved::Json(value) => value.is_null(),
        }
    }
}

fn render_action(action: &Action<'_>, data: &Value, output: &mut String) -> Result<(), TokenError> {
    let eval_error = |message: String| TokenError::Eval {
        token: action.source.to_owned(),
        message,
    };
    match eval_pipeline(&action.pipeline, data).map_err(eval_error)? {
        Resolved::Json(value) if !value.is_null() => {
            print_value(&value, output);
            Ok(())
        }
        _ => Err(TokenError::Unmatched(action.source.to_owned())),
    }
}

fn eval_pipeline<'d>(pipeline: &Pipeline, data: &'d Value) -> Result<Resolved<'d>, String> {
    let mut piped = None;
    for command in &pipeline.0 {
        piped = Some(eval_command(command, data, piped)?);
    }
    Ok(piped.unwrap_or(Resolved::Missing))
}

/// Evaluates a command; `piped` is the previous stage's result, passed as last argument.
fn eval_command<'d>(
    command: &Command,
    data: &'d Value,
    piped: Option<Resolved<'d>>,
) -> Result<Resolved<'d>, String> {
    let mut args = command
        .args
        .iter()
        .map(|operand| eval_operand(operand, data))
        .collect::<Result<Vec<_>, _>>()?;
    args.extend(piped);
    match command.function {
        None => Ok(args.pop().unwrap_or(Resolved::Missing)),
        Some(Function::Default) => call_default(args),
        Some(Function::Index) => call_index(args),
        Some(Function::AssetPath) => call_asset_path(args),
    }
}

fn eval_operand<'d>(operand: &Operand, data: &'d Value) -> Result<Resolved<'d>, String> {
    match operand {
        Operand::Literal(value) => Ok(Resolved::Json(Cow::Owned(value.clone()))),
        Operand::Pipeline(pipeline) => eval_pipeline(pipeline, data),
        Operand::Field(path) => {
            let mut current = data;
            for name in path {
                current = match current {
                    Value::Object(fields) => match fields.get(name) {
                        Some(field) => field,
                        None => return Ok(Resolved::Missing),
                    },
                    Value::Null => return Err(format!("nil pointer evaluating .{name}")),
                    other => {
                        return Err(format!(
                            "can't evaluate field {name} in type {}",
                            type_name(other)
                        ))
                    }
                };
            }
            Ok(Resolved::Json(Cow::Borrowed(current)))
        }
    }
}

/// `default FALLBACK VALUE`: VALUE unless it is missing or null (an empty string stays).
fn call_default(mut args: Vec<Resolved<'_>>) -> Result<Resolved<'_>, String> {
    match args.len() {
        1 => Ok(args.remove(0)),
        2 => {
            let value = args.remove(1);
            Ok(if value.is_nil() {
                args.remove(0)
            } else {
                value
            })
        }
        count => Err(format!(
            "wrong number of args for default: want 1 or 2 got {count}"
        )),
    }
}

/// `index ITEM KEY...`: object keys (strings) and array positions (integers).
fn call_index(args: Vec<Resolved<'_>>) -> Result<Resolved<'_>, String> {
    let mut args = args.into_iter();
    let Some(mut item) = args.next() else {
        return Err("wrong number of args for index: want at least 1 got 0".to_owned());
    };
    for key in args {
        let (Resolved::Json(container), Resolved::Json(key)) = (item, key) else {
            return Err("index of untyped nil".to_owned());
        };
        item = match container {
            Cow::Borrowed(container) => child(container, &key)?.map(Cow::Borrowed),
            Cow::Owned(container) => child(&container, &key)?.cloned().map(Cow::Owned),
        }
        .map_or(Resolved::Missing, Resolved::Json);
    }
    Ok(item)
}

/// The element of `container` at `key`, `None` for a missing object key.
fn child<'v>(container: &'v Value, key: &Value) -> Result<Option<&'v Value>, String> {
    match (container, key) {
        (Value::Object(fields), Value::String(name)) => Ok(fields.get(name)),
        (Value::Array(items), Value::Number(position)) => position
            .as_u64()
            .and_then(|position| usize::try_from(position).ok())
            .and_then(|position| items.get(position))
            .map(Some)
            .ok_or_else(|| format!("index out of range: {position}")),
        (Value::Null, _) => Err("index of untyped nil".to_owned()),
        (Value::Object(_) | Value::Array(_), key) => {
            Err(format!("cannot index with a {}", type_name(key)))
        }
        (other, _) => Err(format!("can't index item of type {}", type_name(other))),
    }
}

/// `assetPath NAME`: the environment variable naming the asset's directory.
fn call_asset_path(args: Vec<Resolved<'_>>) -> Result<Resolved<'_>, String> {
    match args.as_slice() {
        [Resolved::Json(name)] => match name.as_ref() {
            Value::String(name) => Ok(Resolved::Json(Cow::Owned(Value::String(
                asset_path_variable(name),
            )))),
            other => Err(format!(
                "assetPath expects a string, got a {}",
                type_name(other)
            )),
        },
        [Resolved::Missing] => Err("assetPath of a missing value".to_owned()),
        args => Err(format!(
            "wrong number of args for assetPath: want 1 got {}",
            args.len()
        )),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "nil",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "map",
    }
}

/// Appends `value` formatted like Go's `%v` of the decoded JSON.
fn print_value(value: &Value, output: &mut String) {
    match value {
        Value::Null => output.push_str("<nil>"),
        Value::Bool(flag) => output.push_str(if *flag { "true" } else { "false" }),
        Value::String(text) => output.push_str(text),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(integer), _, _) => output.push_str(&integer.to_string()),
            (None, Some(integer), _) => output.push_str(&integer.to_string()),
            (None, None, Some(float)) => output.push_str(&go_float(float)),
            (None, None, None) => output.push_str(&number.to_string()),
        },
        Value::Array(items) => {
            output.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    output.push(' ');
                }
                print_value(item, output);
            }
            output.push(']');
        }
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            output.push_str("map[");
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    output.push(' ');
                }
                output.push_str(key);
                output.push(':');
                print_value(&fields[key], output);
            }
            output.push(']');
        }
    }
}

/// A float as Go's `%v` prints it: shortest representation, exponent form below 1e-4 and from
/// 1e21 on (`1e-05`, `1e+21`), integral values without a fraction.
fn go_float(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-4..1e21).contains(&magnitude) {
        let formatted = format!("{value:e}");
        let (mantissa, exponent) = formatted.split_once('e').unwrap_or((&formatted, "0"));
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(digits) => ('-', digits),
            None => ('+', exponent),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    format!("{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_go() {
        assert_eq!(go_float(80.0), "80");
        assert_eq!(go_float(1.5), "1.5");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(-2.5e-7), "-2.5e-07");
    }

    #[test]
    fn asset_path_variables_follow_sensu() {
        assert_eq!(
            asset_path_variable("sensu/http-checks"),
            "SENSU_HTTP_CHECKS_PATH"
        );
        assert_eq!(asset_path_variable("my.asset_1"), "MY_ASSET_1_PATH");
    }
}
