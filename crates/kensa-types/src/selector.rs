//! Label and field selectors (`?labelSelector=…`, `?fieldSelector=…`, reference §3.7): a small
//! language of `key op value` statements joined with `&&`, evaluated against a resource's field
//! set (`Kind::fields`).
//!
//! ```text
//! selector  = [ statement { "&&" statement } ]
//! statement = operand op value
//! op        = "==" | "!=" | "in" | "notin" | "matches"
//! value     = identifier | quoted string | true | false      (for ==, !=, matches)
//!           | "[" value { "," value } "]" | identifier        (for in, notin)
//! ```
//!
//! Identifiers start with a letter or `_` and continue with letters, digits, `_`, `/` and
//! `.`-separated segments (`check.subscriptions`, `sensu.io/managed_by`); anything else
//! (values starting with a digit, containing `-` or `:`) must be quoted with `'` or `"`.
//!
//! Semantics follow Sensu: `==`/`in` need the key present with a listed value; `!=`/`notin`
//! hold when the key is absent or its value is not listed; `matches` is a substring test. When
//! the right side of `in`/`notin` is a single identifier that names a field, the statement is
//! read the other way round: `linux in check.subscriptions` is true when `linux` is one of the
//! comma-separated values of `check.subscriptions`.

use thiserror::Error;

/// Why a selector did not parse. The API answers `failed to parse labelSelector` (or
/// `fieldSelector`); the message says what was wrong, for logs and kensactl.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct SelectorError(String);

/// A comparison of a selector statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equal,
    NotEqual,
    In,
    NotIn,
    Matches,
}

/// One `key op values` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The field key, or (reverse form) the value looked for.
    pub key: String,
    pub operator: Operator,
    /// The values listed on the right, or (reverse form) the field key.
    pub values: Vec<String>,
}

/// A parsed selector: the AND of its operations. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub operations: Vec<Operation>,
}

/// Parses a field selector (or a label selector before [`Selector::for_labels`]).
pub fn parse(input: &str) -> Result<Selector, SelectorError> {
    let tokens = tokenize(input)?;
    Parser {
        tokens,
        position: 0,
    }
    .selector()
}

impl Selector {
    /// Turns a parsed label selector into one over a kind's field set: every key `k` becomes
    /// `<prefix>.labels.k` (`region == "us-west-1"` on checks reads `check.labels.region`).
    pub fn for_labels(mut self, prefix: &str) -> Selector {
        for operation in &mut self.operations {
            operation.key = format!("{prefix}.labels.{}", operation.key);
        }
        self
    }

    /// Parses `input` as a label selector for the kind whose field prefix is `prefix`.
    pub fn parse_labels(input: &str, prefix: &str) -> Result<Selector, SelectorError> {
        parse(input).map(|selector| selector.for_labels(prefix))
    }

    /// The AND of two selectors (several `labelSelector`/`fieldSelector` parameters).
    pub fn and(mut self, other: Selector) -> Selector {
        self.operations.extend(other.operations);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Whether a resource with field set `fields` is selected.
    pub fn matches(&self, fields: &[(String, String)]) -> bool {
        self.operations
            .iter()
            .all(|operation| operation.matches(fields))
    }
}

impl Operation {
    fn matches(&self, fields: &[(String, String)]) -> bool {
        let lookup = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let listed = |value: &str| self.values.iter().any(|v| v == value);
        // `linux in check.subscriptions`: the right side names a field holding a list.
        let reverse_list = || match self.values.as_slice() {
            [key] => lookup(key).map(|list| {
                list.trim_matches(['[', ']'])
                    .split(',')
                    .any(|item| item.trim() == self.key)
            }),
            _ => None,
        };
        match self.operator {
            Operator::In => match reverse_list() {
                Some(found) => found,
                None => lookup(&self.key).is_some_and(listed),
            },
            Operator::Equal => lookup(&self.key).is_some_and(listed),
            Operator::NotIn => match reverse_list() {
                Some(found) => !found,
                None => !lookup(&self.key).is_some_and(listed),
            },
            Operator::NotEqual => !lookup(&self.key).is_some_and(listed),
            Operator::Matches => lookup(&self.key).is_some_and(|value| {
                self.values
                    .iter()
                    .any(|pattern| value.contains(pattern.as_str()))
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Identifier(String),
    Quoted(String),
    Bool(String),
    Operator(Operator),
    And,
    LeftBracket,
    RightBracket,
    Comma,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Identifier(s) | Token::Bool(s) => s.clone(),
            Token::Quoted(s) => format!("{s:?}"),
            Token::Operator(op) => format!("{op:?}"),
            Token::And => "&&".to_owned(),
            Token::LeftBracket => "[".to_owned(),
            Token::RightBracket => "]".to_owned(),
            Token::Comma => ",".to_owned(),
        }
    }
}

fn tokenize(input: &str) -> Result<Vec<Token>, SelectorError> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let token = match c {
            c if c.is_whitespace() => continue,
            '[' => Token::LeftBracket,
            ']' => Token::RightBracket,
            ',' => Token::Comma,
            '=' | '!' | '&' => {
                let expected = if c == '&' { '&' } else { '=' };
                match chars.next() {
                    Some((_, next)) if next == expected => {}
                    _ => return Err(SelectorError(format!("at {start}, expected {c}{expected}"))),
                }
                match c {
                    '=' => Token::Operator(Operator::Equal),
                    '!' => Token::Operator(Operator::NotEqual),
                    _ => Token::And,
                }
            }
            '"' | '\'' => {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"' | '\'')) => break,
                        Some((_, c)) => value.push(c),
                        None => {
                            return Err(SelectorError(
                                "end of input while scanning a quoted string".to_owned(),
                            ))
                        }
                    }
                }
                Token::Quoted(value)
            }
            c if c == '_' || c.is_alphabetic() => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, c)) = chars.peek() {
                    if c == '_' || c == '.' || c == '/' || c.is_alphanumeric() {
                        end = i + c.len_utf8();
                        chars.next();
                    } else if c.is_whitespace()
                        || matches!(c, '[' | ']' | '!' | '&' | ',' | '=' | '"' | '\'')
                    {
                        break;
                    } else {
                        return Err(SelectorError(format!(
                            "invalid identifier: {:?}",
                            &input[start..i + c.len_utf8()]
                        )));
                    }
                }
                identifier_token(&input[start..end])?
            }
            other => {
                return Err(SelectorError(format!(
                    "invalid character {other:?} at {start}"
                )))
            }
        };
        tokens.push(token);
    }
    Ok(tokens)
}

/// Keywords are case-insensitive; every `.`-separated segment must start like an identifier.
fn identifier_token(word: &str) -> Result<Token, SelectorError> {
    let segment_ok = |segment: &str| {
        segment
            .chars()
            .next()
            .is_some_and(|c| c == '_' || c.is_alphabetic())
    };
    if !word.split('.').all(segment_ok) {
        return Err(SelectorError(format!("invalid identifier: {word:?}")));
    }
    Ok(match word.to_lowercase().as_str() {
        "in" => Token::Operator(Operator::In),
        "notin" => Token::Operator(Operator::NotIn),
        "matches" => Token::Operator(Operator::Matches),
        "true" | "false" => Token::Bool(word.to_lowercase()),
        _ => Token::Identifier(word.to_owned()),
    })
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn selector(mut self) -> Result<Selector, SelectorError> {
        let mut operations = Vec::new();
        if self.tokens.is_empty() {
            return Ok(Selector { operations });
        }
        loop {
            operations.push(self.operation()?);
            match self.next() {
                None => return Ok(Selector { operations }),
                Some(Token::And) => continue,
                Some(other) => {
                    return Err(SelectorError(format!(
                        "unexpected {:?}, expected && or the end",
                        other.describe()
                    )))
                }
            }
        }
    }

    fn operation(&mut self) -> Result<Operation, SelectorError> {
        let key = match self.next() {
            Some(Token::Identifier(key) | Token::Quoted(key)) => key,
            Some(other) => {
                return Err(SelectorError(format!(
                    "unexpected {:?}, expected an identifier",
                    other.describe()
                )))
            }
            None => {
                return Err(SelectorError(
                    "unexpected end after &&, expected an identifier".to_owned(),
                ))
            }
        };
        let operator = match self.next() {
            Some(Token::Operator(operator)) => operator,
            Some(other) => {
                return Err(SelectorError(format!(
                    "unexpected operator {:?}",
                    other.describe()
                )))
            }
            None => return Err(SelectorError(format!("missing operator after {key:?}"))),
        };
        let values = match operator {
            Operator::In | Operator::NotIn => self.list()?,
            _ => match self.next() {
                Some(Token::Identifier(value) | Token::Quoted(value) | Token::Bool(value)) => {
                    vec![value]
                }
                Some(other) => {
                    return Err(SelectorError(format!(
                        "unexpected {:?}, expected an identifier or literal value",
                        other.describe()
                    )))
                }
                None => return Err(SelectorError(format!("missing value after {key:?}"))),
            },
        };
        Ok(Operation {
            key,
            operator,
            values,
        })
    }

    /// `[a, "b", c]` or a single identifier.
    fn list(&mut self) -> Result<Vec<String>, SelectorError> {
        match self.next() {
            Some(Token::Identifier(value)) => return Ok(vec![value]),
            Some(Token::LeftBracket) => {}
            Some(other) => {
                return Err(SelectorError(format!(
                    "found {:?}, expected '['",
                    other.describe()
                )))
            }
            None => return Err(SelectorError("missing list after in/notin".to_owned())),
        }
        let mut values = Vec::new();
        loop {
            match self.next() {
                Some(Token::Identifier(value) | Token::Quoted(value)) => values.push(value),
                Some(Token::Comma) => continue,
                Some(Token::RightBracket) => return Ok(values),
                Some(other) => {
                    return Err(SelectorError(format!(
                        "unexpected {:?}, expected a comma or an identifier",
                        other.describe()
                    )))
                }
                None => return Err(SelectorError("unterminated list, expected ']'".to_owned())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<(String, String)> {
        [
            ("check.name", "linux-cpu"),
            ("check.namespace", "dev"),
            ("check.subscriptions", "linux,web"),
            ("check.publish", "true"),
            ("event.check.status", "2"),
            ("check.labels.region", "us-west-1"),
            ("check.labels.sensu.io/managed_by", "sensuctl"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn field_selectors_match_like_sensu() {
        for (input, expected) in [
            ("check.name == \"linux-cpu\"", true),
            ("check.name == 'linux-cpu'", true),
            ("check.name != \"linux-cpu\"", false),
            ("check.missing != x", true),
            ("check.missing == x", false),
            ("check.namespace in [dev, production]", true),
            ("check.namespace in [\"staging\", production]", false),
            ("check.namespace notin [dev,production]", false),
            ("check.missing notin [dev]", true),
            ("check.namespace in dev", true),
            ("linux in check.subscriptions", true),
            ("windows in check.subscriptions", false),
            ("\"web\" in check.subscriptions", true),
            ("windows notin check.subscriptions", true),
            ("linux notin check.subscriptions", false),
            ("check.name matches \"linux-\"", true),
            ("check.name matches windows", false),
            ("check.missing matches x", false),
            ("check.publish == true", true),
            ("check.publish == FALSE", false),
            ("event.check.status == \"2\"", true),
            (
                "check.namespace == dev && linux in check.subscriptions",
                true,
            ),
            ("check.namespace == dev && check.publish == false", false),
            ("check.namespace IN [dev]", true),
        ] {
            let selector = parse(input).unwrap_or_else(|err| panic!("{input}: {err}"));
            assert_eq!(selector.matches(&fields()), expected, "{input}");
        }
    }

    #[test]
    fn label_selectors_read_the_kinds_labels() {
        for (input, expected) in [
            ("region == \"us-west-1\"", true),
            ("region != \"us-west-1\"", false),
            ("region in [\"us-east-1\", \"us-west-1\"]", true),
            ("sensu.io/managed_by == sensuctl", true),
            ("tier == gold", false),
        ] {
            let selector = Selector::parse_labels(input, "check")
                .unwrap_or_else(|err| panic!("{input}: {err}"));
            assert_eq!(selector.matches(&fields()), expected, "{input}");
        }
    }

    #[test]
    fn malformed_selectors_are_rejected() {
        for (input, message) in [
            ("check.name", "missing operator"),
            ("check.name =", "expected =="),
            ("check.name = x", "expected =="),
            ("check.name == ", "missing value"),
            ("check.name == us-west-1", "invalid identifier"),
            ("check.name == 2", "invalid character"),
            ("check.name == \"open", "end of input"),
            ("check.name in [a, b", "unterminated list"),
            ("check.name in \"a\"", "expected '['"),
            ("check.name in (a)", "invalid character"),
            ("check.name == a &&", "unexpected end after &&"),
            ("&& check.name == a", "expected an identifier"),
            (
                "check.name == a check.namespace == b",
                "expected && or the end",
            ),
            ("check. == a", "invalid identifier"),
            ("check.name & x", "expected &&"),
            ("check.name > 1", "invalid character"),
            ("check.name in [a, ==]", "expected a comma or an identifier"),
        ] {
            let err = parse(input).expect_err(input).to_string();
            assert!(
                err.contains(message),
                "{input:?}: {err:?} does not contain {message:?}"
            );
        }
    }

    #[test]
    fn selectors_combine_with_and() {
        let selector = parse("check.namespace == dev")
            .expect("parses")
            .and(Selector::parse_labels("region == x", "check").expect("parses"));
        assert_eq!(selector.operations.len(), 2);
        assert!(!selector.matches(&fields()));
        assert!(Selector::default().matches(&fields()));
        assert_eq!(
            parse("  ").expect("an empty selector parses"),
            Selector::default()
        );
    }
}
