//! Parser for the subset of Go `text/template` that Sensu token substitution uses: text,
//! `{{ pipeline }}` actions with `{{-`/`-}}` trimming, `{{/* comments */}}`, and pipelines
//! made of fields (`.labels.url`, `.`, `$`), literals (strings, raw strings, numbers,
//! booleans, `nil`), parentheses and the functions `index`, `default` and `assetPath`.
//! Control actions (`if`, `range`, ...) and variables are rejected with their position.

use serde_json::{Number, Value};

use super::TokenError;

/// A parsed template: text and actions in order, with trim markers already applied.
pub(super) enum Piece<'t> {
    Text(&'t str),
    Action(Action<'t>),
}

/// One `{{ ... }}` action.
pub(super) struct Action<'t> {
    /// The action exactly as written, delimiters included, for error messages.
    pub(super) source: &'t str,
    pub(super) pipeline: Pipeline,
}

/// Commands separated by `|`; each command's result is the last argument of the next.
pub(super) struct Pipeline(pub(super) Vec<Command>);

/// A function call with its arguments, or (without a function) a single operand.
pub(super) struct Command {
    pub(super) function: Option<Function>,
    pub(super) args: Vec<Operand>,
}

/// The template functions Sensu registers (plus Go's builtin `index`).
#[derive(Clone, Copy)]
pub(super) enum Function {
    Index,
    Default,
    AssetPath,
}

pub(super) enum Operand {
    /// A field chain from the data root; an empty path is the root itself (`.` or `$`).
    Field(Vec<String>),
    Literal(Value),
    Pipeline(Pipeline),
}

/// Parses `template`. Templates without `{{` are a single text piece.
pub(super) fn parse(template: &str) -> Result<Vec<Piece<'_>>, TokenError> {
    let mut pieces = Vec::new();
    let mut text_start = 0;
    let mut trim_next_text = false;
    while let Some(found) = template[text_start..].find("{{") {
        let open = text_start + found;
        let mut lexer = Lexer {
            template,
            pos: open + 2,
            open,
        };
        let trim_left = lexer.eat_left_trim_marker();
        let mut text = &template[text_start..open];
        if trim_next_text {
            text = text.trim_start_matches(is_space);
        }
        if trim_left {
            text = text.trim_end_matches(is_space);
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        let (pipeline, trim_right) = match lexer.eat_comment()? {
            Some(trim_right) => (None, trim_right),
            None => {
                let (tokens, trim_right) = lexer.action_tokens()?;
                let pipeline = Parser {
                    template,
                    tokens: &tokens,
                    next: 0,
                    end: lexer.pos,
                }
                .action()?;
                (Some(pipeline), trim_right)
            }
        };
        if let Some(pipeline) = pipeline {
            pieces.push(Piece::Action(Action {
                source: &template[open..lexer.pos],
                pipeline,
            }));
        }
        text_start = lexer.pos;
        trim_next_text = trim_right;
    }
    let mut text = &template[text_start..];
    if trim_next_text {
        text = text.trim_start_matches(is_space);
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// Go template white space.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_identifier_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// A syntax error at byte `offset` of `template`.
fn syntax_error(template: &str, offset: usize, message: impl Into<String>) -> TokenError {
    let before = &template[..offset.min(template.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    TokenError::Syntax {
        message: message.into(),
        line,
        column,
    }
}

enum Token {
    /// `.a.b`, `.` (empty), `$` or `$.a.b`.
    Field(Vec<String>),
    Identifier(String),
    Literal(Value),
    Nil,
    Pipe,
    Open,
    Close,
}

/// Splits one action into tokens.
struct Lexer<'t> {
    template: &'t str,
    /// Byte offset of the next character.
    pos: usize,
    /// Byte offset of the action's `{{`, for "unclosed action" errors.
    open: usize,
}

impl<'t> Lexer<'t> {
    fn rest(&self) -> &'t str {
        &self.template[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn error(&self, message: impl Into<String>) -> TokenError {
        syntax_error(self.template, self.pos, message)
    }

    /// `{{- ` trims the text before the action; the dash must be followed by white space.
    fn eat_left_trim_marker(&mut self) -> bool {
        let mut chars = self.rest().chars();
        if chars.next() == Some('-') && chars.next().is_some_and(is_space) {
            self.pos += 1;
            return true;
        }
        false
    }

    /// After the action's contents: `}}`, or ` -}}` which also trims the following text.
    /// Returns the trim flag when the action is closed here.
    fn eat_close(&mut self) -> Option<bool> {
        let rest = self.rest();
        let spaces = rest.len() - rest.trim_start_matches(is_space).len();
        if rest.starts_with("}}") {
            self.pos += 2;
            return Some(false);
        }
        if spaces > 0 && rest[spaces..].starts_with("-}}") {
            self.pos += spaces + 3;
            return Some(true);
        }
        None
    }

    /// `{{/* ... */}}` (optionally with trim markers): returns the right trim flag if this
    /// action is a comment.
    fn eat_comment(&mut self) -> Result<Option<bool>, TokenError> {
        let rest = self.rest();
        let body = rest.trim_start_matches(is_space);
        if !body.starts_with("/*") {
            return Ok(None);
        }
        let start = self.pos + (rest.len() - body.len());
        let Some(end) = body.find("*/") else {
            return Err(syntax_error(self.template, start, "unclosed comment"));
        };
        self.pos = start + end + 2;
        match self.eat_close() {
            Some(trim) => Ok(Some(trim)),
            None => Err(self.error("comment ends before closing delimiter")),
        }
    }

    /// The tokens of the action up to its closing delimiter, each with its byte offset, and
    /// whether the delimiter trims the following text.
    fn action_tokens(&mut self) -> Result<(Vec<(Token, usize)>, bool), TokenError> {
        let mut tokens = Vec::new();
        loop {
            if let Some(trim) = self.eat_close() {
                return Ok((tokens, trim));
            }
            self.pos = self.template.len() - self.rest().trim_start_matches(is_space).len();
            if let Some(trim) = self.eat_close() {
                return Ok((tokens, trim));
            }
            let start = self.pos;
            let Some(next) = self.peek() else {
                return Err(syntax_error(self.template, self.open, "unclosed action"));
            };
            let token = match next {
                '|' => self.single(Token::Pipe),
                '(' => self.single(Token::Open),
                ')' => self.single(Token::Close),
                '"' => Token::Literal(Value::String(self.quoted()?)),
                '`' => Token::Literal(Value::String(self.raw_string()?)),
                '.' | '$' if !self.starts_number() => self.field()?,
                '\'' => return Err(self.error("character constants are not supported")),
                c if c.is_ascii_digit() || self.starts_number() => {
                    Token::Literal(Value::Number(self.number()?))
                }
                c if is_identifier_char(c) => self.identifier(),
                c => return Err(self.error(format!("unexpected {c:?} in action"))),
            };
            if !matches!(token, Token::Pipe | Token::Open) {
                self.expect_separator()?;
            }
            tokens.push((token, start));
        }
    }

    fn single(&mut self, token: Token) -> Token {
        self.pos += 1;
        token
    }

    /// Operands must be followed by white space, `|`, `)` or the closing delimiter.
    fn expect_separator(&self) -> Result<(), TokenError> {
        match self.peek() {
            None => Ok(()),
            Some(c) if is_space(c) || c == '|' || c == ')' || c == '}' => Ok(()),
            Some('.') => Err(self.error("field access on this operand is not supported")),
            Some(c) => Err(self.error(format!("unexpected {c:?} after operand"))),
        }
    }

    fn starts_number(&self) -> bool {
        let mut chars = self.rest().chars();
        match chars.next() {
            Some('+' | '-') => chars.next().is_some_and(|c| c.is_ascii_digit() || c == '.'),
            Some('.') => chars.next().is_some_and(|c| c.is_ascii_digit()),
            Some(c) => c.is_ascii_digit(),
            None => false,
        }
    }

    /// `.a.b`, `.`, `$`, `$.a.b`. Named variables (`$x`) are not supported.
    fn field(&mut self) -> Result<Token, TokenError> {
        let mut path = Vec::new();
        if self.peek() == Some('$') {
            self.pos += 1;
            if self.peek().is_some_and(is_identifier_char) {
                return Err(self.error("template variables are not supported"));
            }
            if self.peek() != Some('.') {
                return Ok(Token::Field(path));
            }
        }
        // At a '.': a lone dot is the root, otherwise a chain of names.
        self.pos += 1;
        loop {
            let name_length: usize = self
                .rest()
                .chars()
                .take_while(|c| is_identifier_char(*c))
                .map(char::len_utf8)
                .sum();
            if name_length == 0 {
                if path.is_empty() {
                    return Ok(Token::Field(path));
                }
                return Err(self.error("missing field name after '.'"));
            }
            path.push(self.rest()[..name_length].to_owned());
            self.pos += name_length;
            if self.peek() != Some('.') {
                return Ok(Token::Field(path));
            }
            self.pos += 1;
        }
    }

    fn identifier(&mut self) -> Token {
        let length: usize = self
            .rest()
            .chars()
            .take_while(|c| is_identifier_char(*c))
            .map(char::len_utf8)
            .sum();
        let word = &self.rest()[..length];
        self.pos += length;
        match word {
            "true" => Token::Literal(Value::Bool(true)),
            "false" => Token::Literal(Value::Bool(false)),
            "nil" => Token::Nil,
            word => Token::Identifier(word.to_owned()),
        }
    }

    /// Decimal integers, hexadecimal (`0x1f`), floats (`1.5`, `2e3`), with `_` separators and
    /// an optional sign.
    fn number(&mut self) -> Result<Number, TokenError> {
        let start = self.pos;
        let length = self
            .rest()
            .char_indices()
            .take_while(|(index, c)| {
                c.is_ascii_alphanumeric()
                    || *c == '_'
                    || *c == '.'
                    || (*index == 0 && "+-".contains(*c))
            })
            .count();
        // Exponent signs (`1e-3`) are part of the number too.
        let mut end = start + length;
        while self.template[..end].ends_with(['e', 'E'])
            && self.template[end..].starts_with(['+', '-'])
            && !self.template[start..end].starts_with("0x")
        {
            end += 1;
            end += self.template[end..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '_')
                .count();
        }
        let text = self.template[start..end].replace('_', "");
        self.pos = end;
        let bad = || {
            syntax_error(
                self.template,
                start,
                format!("bad number syntax: {:?}", &self.template[start..end]),
            )
        };
        let (negative, digits) = match text.strip_prefix('-') {
            Some(digits) => (true, digits),
            None => (false, text.strip_prefix('+').unwrap_or(&text)),
        };
        let hex = digits
            .strip_prefix("0x")
            .or_else(|| digits.strip_prefix("0X"));
        if let Some(hex) = hex {
            let value = i64::from_str_radix(hex, 16).map_err(|_| bad())?;
            return Ok(Number::from(if negative { -value } else { value }));
        }
        if digits.contains(['.', 'e', 'E']) {
            let value: f64 = text.parse().map_err(|_| bad())?;
            return Number::from_f64(value).ok_or_else(bad);
        }
        text.parse::<i64>().map(Number::from).map_err(|_| bad())
    }

    /// A Go interpreted string literal; the lexer is at the opening quote.
    fn quoted(&mut self) -> Result<String, TokenError> {
        self.pos += 1;
        let mut value = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.error("unterminated quoted string"));
            };
            self.pos += c.len_utf8();
            match c {
                '"' => return Ok(value),
                '\n' => return Err(self.error("unterminated quoted string")),
                '\\' => value.push(self.escape()?),
                c => value.push(c),
            }
        }
    }

    /// The character of an escape sequence; the lexer is just after the backslash.
    fn escape(&mut self) -> Result<char, TokenError> {
        let Some(c) = self.peek() else {
            return Err(self.error("unterminated quoted string"));
        };
        self.pos += c.len_utf8();
        let (digits, radix) = match c {
            'a' => return Ok('\u{7}'),
            'b' => return Ok('\u{8}'),
            'f' => return Ok('\u{c}'),
            'n' => return Ok('\n'),
            'r' => return Ok('\r'),
            't' => return Ok('\t'),
            'v' => return Ok('\u{b}'),
            '\\' | '"' | '\'' => return Ok(c),
            'x' => (2, 16),
            'u' => (4, 16),
            'U' => (8, 16),
            '0'..='7' => {
                self.pos -= 1;
                (3, 8)
            }
            c => return Err(self.error(format!("unknown escape sequence \\{c}"))),
        };
        let code = self
            .rest()
            .get(..digits)
            .and_then(|digits| u32::from_str_radix(digits, radix).ok())
            .and_then(char::from_u32)
            .ok_or_else(|| self.error("invalid escape sequence"))?;
        self.pos += digits;
        Ok(code)
    }

    /// A Go raw string literal (no escapes); the lexer is at the opening backquote.
    fn raw_string(&mut self) -> Result<String, TokenError> {
        let body = &self.rest()[1..];
        let Some(end) = body.find('`') else {
            return Err(self.error("unterminated raw string"));
        };
        let value = body[..end].to_owned();
        self.pos += end + 2;
        Ok(value)
    }
}

/// Builds the pipeline of one action from its tokens.
struct Parser<'a> {
    template: &'a str,
    tokens: &'a [(Token, usize)],
    next: usize,
    /// Byte offset just past the action, for errors at its end.
    end: usize,
}

impl Parser<'_> {
    /// A syntax error at the token with index `index` (or at the end of the action).
    fn error_at(&self, index: usize, message: impl Into<String>) -> TokenError {
        let offset = self
            .tokens
            .get(index)
            .map_or(self.end, |(_, offset)| *offset);
        syntax_error(self.template, offset, message)
    }

    fn error_here(&self, message: impl Into<String>) -> TokenError {
        self.error_at(self.next, message)
    }

    fn action(&mut self) -> Result<Pipeline, TokenError> {
        if self.tokens.is_empty() {
            return Err(self.error_here("missing value for command"));
        }
        let pipeline = self.pipeline()?;
        if self.next < self.tokens.len() {
            return Err(self.error_here("unexpected ')' in action"));
        }
        Ok(pipeline)
    }

    fn pipeline(&mut self) -> Result<Pipeline, TokenError> {
        let mut commands = vec![self.command(true)?];
        while matches!(self.tokens.get(self.next), Some((Token::Pipe, _))) {
            self.next += 1;
            commands.push(self.command(false)?);
        }
        Ok(Pipeline(commands))
    }

    /// One command; `first` tells whether it starts the pipeline (later stages receive the
    /// previous result as an argument, so they must call a function).
    fn command(&mut self, first: bool) -> Result<Command, TokenError> {
        let start = self.next;
        let function = match self.tokens.get(self.next) {
            Some((Token::Identifier(name), _)) => {
                let function = self.function(name)?;
                self.next += 1;
                Some(function)
            }
            _ => None,
        };
        let mut args = Vec::new();
        while let Some(operand) = self.operand()? {
            args.push(operand);
        }
        if function.is_some() {
            return Ok(Command { function, args });
        }
        match (args.len(), first) {
            (0, _) => Err(self.error_here("missing value for command")),
            (1, true) if matches!(self.tokens[start].0, Token::Nil) => {
                Err(self.error_at(start, "nil is not a command"))
            }
            (1, true) => Ok(Command { function, args }),
            (_, false) => Err(self.error_at(start, "only a function can receive a piped value")),
            (_, true) => Err(self.error_at(start + 1, "can't give argument to non-function")),
        }
    }

    fn function(&self, name: &str) -> Result<Function, TokenError> {
        match name {
            "index" => Ok(Function::Index),
            "default" => Ok(Function::Default),
            "assetPath" => Ok(Function::AssetPath),
            "if" | "else" | "end" | "range" | "with" | "define" | "template" | "block"
            | "break" | "continue" => {
                Err(self.error_here(format!("{{{{{name}}}}} actions are not supported")))
            }
            name => Err(self.error_here(format!("function {name:?} is not supported"))),
        }
    }

    /// The next operand of a command, or `None` at `|`, `)` or the end of the action.
    fn operand(&mut self) -> Result<Option<Operand>, TokenError> {
        let Some((token, _)) = self.tokens.get(self.next) else {
            return Ok(None);
        };
        let operand = match token {
            Token::Pipe | Token::Close => return Ok(None),
            Token::Field(path) => Operand::Field(path.clone()),
            Token::Literal(value) => Operand::Literal(value.clone()),
            Token::Nil => Operand::Literal(Value::Null),
            Token::Identifier(name) => {
                return Err(self.error_here(format!(
                    "function {name:?} must come first in its command; use parentheses"
                )))
            }
            Token::Open => {
                self.next += 1;
                let pipeline = self.pipeline()?;
                if !matches!(self.tokens.get(self.next), Some((Token::Close, _))) {
                    return Err(self.error_here("unclosed left parenthesis"));
                }
                Operand::Pipeline(pipeline)
            }
        };
        self.next += 1;
        Ok(Some(operand))
    }
}
