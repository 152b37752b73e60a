//! Reading and splitting the resource files given to `kensactl create` and `delete` (reference
//! §1.4): sources (files, directories, `http(s)://` URLs, stdin) are read into text, the text
//! is split into chunks on every line that *starts with* `---` (so `--- # comment` separates
//! too, and CRLF files work), and each chunk is parsed as JSON when it starts with `{` or `[`
//! (possibly a stream of concatenated objects `{..}{..}`) and as YAML otherwise.
//!
//! This module only produces JSON values with their position (source, document number, line);
//! what a value *means* is decided in [`crate::resources`]. Line numbers are 1-based and point
//! at the first line of the document that is neither blank nor a comment, so that an error
//! message leads the reader to the `type:` line (or the `{`) of the offending document.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Number, Value};
use thiserror::Error;

/// One parsed document and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file name, URL or `(stdin)` the document was read from.
    pub origin: String,
    /// 1-based position among the documents of `origin` (empty chunks are not counted).
    pub index: usize,
    /// 1-based line in `origin` where the document starts.
    pub line: usize,
    pub value: Value,
}

/// A document that could not be parsed or turned into a resource, located precisely enough
/// to be found in an editor.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{origin}: document {index} (line {line}): {message}")]
pub struct DocumentError {
    pub origin: String,
    pub index: usize,
    pub line: usize,
    pub message: String,
}

impl DocumentError {
    pub fn at(document: &Document, message: impl Into<String>) -> Self {
        DocumentError {
            origin: document.origin.clone(),
            index: document.index,
            line: document.line,
            message: message.into(),
        }
    }
}

/// A source could not be read at all (missing file, unreadable directory, failed download).
#[derive(Debug, Error)]
pub enum SourceError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{path}: not valid UTF-8")]
    NotUtf8 { path: String },
}

/// The text of one input, before splitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub origin: String,
    pub text: String,
}

/// File extensions picked up when a directory is given (files named explicitly are read
/// whatever their extension).
const EXTENSIONS: [&str; 3] = ["yml", "yaml", "json"];

/// Reads every `-f` argument. `-` is stdin, `http://`/`https://` URLs go through `fetch`
/// (the caller owns HTTP so that TLS settings apply), `file://` URLs and plain paths are read
/// from disk. Directories contribute their `.yml`/`.yaml`/`.json` files in name order, top
/// level only unless `recursive`. No specs at all means stdin.
pub fn read_sources(
    specs: &[String],
    recursive: bool,
    fetch: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Vec<Source>, SourceError> {
    if specs.is_empty() {
        return Ok(vec![read_stdin()?]);
    }
    let mut sources = Vec::new();
    for spec in specs {
        if spec == "-" {
            sources.push(read_stdin()?);
        } else if spec.starts_with("http://") || spec.starts_with("https://") {
            let text = fetch(spec).map_err(|message| SourceError::Fetch {
                url: spec.clone(),
                message,
            })?;
            sources.push(Source {
                origin: spec.clone(),
                text,
            });
        } else {
            let path = Path::new(spec.strip_prefix("file://").unwrap_or(spec));
            read_path(path, recursive, true, &mut sources)?;
        }
    }
    Ok(sources)
}

fn read_stdin() -> Result<Source, SourceError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|source| SourceError::Io {
            path: "(stdin)".into(),
            source,
        })?;
    let text = String::from_utf8(bytes).map_err(|_| SourceError::NotUtf8 {
        path: "(stdin)".into(),
    })?;
    Ok(Source {
        origin: "(stdin)".into(),
        text,
    })
}

/// `top` is true for the path the user named: a directory there is always listed, while a
/// directory found inside it is only entered when `recursive`.
fn read_path(
    path: &Path,
    recursive: bool,
    top: bool,
    out: &mut Vec<Source>,
) -> Result<(), SourceError> {
    let io_err = |source| SourceError::Io {
        path: path.display().to_string(),
        source,
    };
    // fs::metadata follows symlinks, as sensuctl does.
    let meta = fs::metadata(path).map_err(io_err)?;
    if !meta.is_dir() {
        let bytes = fs::read(path).map_err(io_err)?;
        let text = String::from_utf8(bytes).map_err(|_| SourceError::NotUtf8 {
            path: path.display().to_string(),
        })?;
        out.push(Source {
            origin: path.display().to_string(),
            text,
        });
        return Ok(());
    }
    if !top && !recursive {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(path)
        .map_err(io_err)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io_err)?;
    entries.sort();
    for entry in entries {
        let resource_file = entry
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        // Subdirectories are filtered by the `top`/`recursive` check of the recursive call.
        if entry.is_dir() || resource_file {
            read_path(&entry, recursive, false, out)?;
        }
    }
    Ok(())
}

/// A run of lines between two separators. `first_line` is the 1-based line number of the
/// first line of `text` in the whole source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk<'a> {
    first_line: usize,
    text: &'a str,
}

/// Splits on lines starting with `---`; the separator line itself (and anything after the
/// dashes, such as a comment) belongs to no chunk.
fn split_chunks(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        if line.starts_with("---") {
            chunks.push(Chunk {
                first_line: start_line,
                text: &text[start..offset],
            });
            start = offset + line.len();
            start_line = number + 2;
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        first_line: start_line,
        text: &text[start..],
    });
    chunks
}

/// The line of the first line in `text` that carries content (not blank, not a `#` comment).
fn content_line(first_line: usize, text: &str) -> usize {
    text.lines()
        .position(|line| {
            let trimmed = line.trim();
            !trimmed.is_empty() && !trimmed.starts_with('#')
        })
        .map_or(first_line, |n| first_line + n)
}

/// Parses all documents of one source. Every document that parses is returned, every one that
/// does not becomes an error, so that a caller can report all problems at once.
pub fn parse_source(source: &Source) -> (Vec<Document>, Vec<DocumentError>) {
    let text = source.text.strip_prefix('\u{feff}').unwrap_or(&source.text);
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    let mut index = 0;
    for chunk in split_chunks(text) {
        if chunk.text.trim().is_empty() {
            continue;
        }
        let parsed = if chunk.text.trim_start().starts_with(['{', '[']) {
            parse_json_stream(chunk)
        } else {
            parse_yaml(chunk).into_iter().collect()
        };
        for item in parsed {
            index += 1;
            match item {
                Ok((line, value)) => documents.push(Document {
                    origin: source.origin.clone(),
                    index,
                    line,
                    value,
                }),
                Err((line, message)) => errors.push(DocumentError {
                    origin: source.origin.clone(),
                    index,
                    line,
                    message,
                }),
            }
        }
    }
    (documents, errors)
}

type Parsed = Result<(usize, Value), (usize, String)>;

/// The chunk's text preceded by one newline per line before it, so that the line numbers the
/// JSON and YAML parsers put in their messages are line numbers of the whole source.
fn padded(chunk: Chunk<'_>) -> String {
    let mut text = "\n".repeat(chunk.first_line - 1);
    text.push_str(chunk.text);
    text
}

/// A chunk holding one JSON value or several concatenated ones. A JSON syntax error ends the
/// chunk: what follows it cannot be located reliably.
fn parse_json_stream(chunk: Chunk<'_>) -> Vec<Parsed> {
    let text = padded(chunk);
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
    let mut end = 0;
    loop {
        let rest = &text[end..];
        let start = end + (rest.len() - rest.trim_start().len());
        let line = 1 + text[..start].matches('\n').count();
        match stream.next() {
            None => break,
            Some(Ok(Value::Array(_))) => out.push(Err((
                line,
                "a JSON array is not a resource: write one object per resource ({...}{...}) or use YAML documents"
                    .to_owned(),
            ))),
            Some(Ok(value)) => out.push(Ok((line, value))),
            Some(Err(err)) => {
                out.push(Err((err.line(), format!("invalid JSON: {err}"))));
                break;
            }
        }
        end = stream.byte_offset();
    }
    out
}

/// One YAML document. A chunk that holds only comments parses to null and is skipped like an
/// empty one.
fn parse_yaml(chunk: Chunk<'_>) -> Option<Parsed> {
    let line = content_line(chunk.first_line, chunk.text);
    let mut yaml: yaml_serde::Value = match yaml_serde::from_str(&padded(chunk)) {
        Ok(yaml) => yaml,
        Err(err) => {
            let err_line = err.location().map_or(line, |loc| loc.line());
            return Some(Err((err_line, format!("invalid YAML: {err}"))));
        }
    };
    if let Err(err) = yaml.apply_merge() {
        return Some(Err((line, format!("invalid YAML merge key: {err}"))));
    }
    match yaml {
        yaml_serde::Value::Null => None,
        yaml => Some(
            yaml_to_json(yaml)
                .map(|value| (line, value))
                .map_err(|message| (line, message)),
        ),
    }
}

/// Converts YAML to the JSON data model. Non-string mapping keys become strings (so that hook
/// lists written as `- 2: [hook]` mean `{"2": ["hook"]}`), which serde_json's own `Value`
/// would refuse.
fn yaml_to_json(yaml: yaml_serde::Value) -> Result<Value, String> {
    Ok(match yaml {
        yaml_serde::Value::Null => Value::Null,
        yaml_serde::Value::Bool(b) => Value::Bool(b),
        yaml_serde::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Number(i.into())
            } else if let Some(u) = n.as_u64() {
                Value::Number(u.into())
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                Value::Number(
                    Number::from_f64(f)
                        .ok_or_else(|| format!("number {n} cannot be represented in JSON"))?,
                )
            }
        }
        yaml_serde::Value::String(s) => Value::String(s),
        yaml_serde::Value::Sequence(items) => Value::Array(
            items
                .into_iter()
                .map(yaml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        yaml_serde::Value::Mapping(mapping) => {
            let mut map = Map::new();
            for (key, value) in mapping {
                let key = match key {
                    yaml_serde::Value::String(s) => s,
                    yaml_serde::Value::Number(n) => n.to_string(),
                    yaml_serde::Value::Bool(b) => b.to_string(),
                    other => return Err(format!("mapping key {other:?} must be a string")),
                };
                map.insert(key, yaml_to_json(value)?);
            }
            Value::Object(map)
        }
        yaml_serde::Value::Tagged(tagged) => {
            return Err(format!("YAML tag {} is not supported", tagged.tag))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> (Vec<Document>, Vec<DocumentError>) {
        parse_source(&Source {
            origin: "test.yaml".into(),
            text: text.into(),
        })
    }

    /// (what the case shows, input, expected (line, value) per document, expected error lines)
    type Case = (&'static str, &'static str, Vec<(usize, Value)>, Vec<usize>);

    #[test]
    fn splitting_and_parsing_table() {
        let cases: Vec<Case> = vec![
            ("single yaml document", "a: 1\n", vec![(1, json!({"a": 1}))], vec![]),
            (
                "leading separator and two docs",
                "---\na: 1\n---\nb: 2\n",
                vec![(2, json!({"a": 1})), (4, json!({"b": 2}))],
                vec![],
            ),
            (
                "CRLF line endings",
                "---\r\na: 1\r\nb: x\r\n---\r\nc: 3\r\n",
                vec![(2, json!({"a": 1, "b": "x"})), (5, json!({"c": 3}))],
                vec![],
            ),
            (
                "separator with a comment, and comment-only documents are dropped",
                "--- # first\na: 1\n--- # only a comment below\n# nothing here\n---\n\n# lead\nb: 2\n",
                vec![(2, json!({"a": 1})), (8, json!({"b": 2}))],
                vec![],
            ),
            (
                "JSON stream of concatenated objects",
                "{\"a\": 1}{\"b\": 2}\n\n  {\"c\":\n 3}\n",
                vec![(1, json!({"a": 1})), (1, json!({"b": 2})), (3, json!({"c": 3}))],
                vec![],
            ),
            (
                "JSON and YAML mixed across separators",
                "{\"a\": 1}\n---\nb: 2\n---\n\n{\"c\": 3}\n",
                vec![(1, json!({"a": 1})), (3, json!({"b": 2})), (6, json!({"c": 3}))],
                vec![],
            ),
            (
                "numeric mapping keys become strings",
                "check_hooks:\n- 2: [a]\n",
                vec![(1, json!({"check_hooks": [{"2": ["a"]}]}))],
                vec![],
            ),
            ("a top-level JSON array is refused", "[{\"a\": 1}]\n", vec![], vec![1]),
            (
                "YAML syntax error is located in the file, later documents still parse",
                "a: 1\n---\nb: 1\nc: d: e\n---\nd: 4\n",
                vec![(1, json!({"a": 1})), (6, json!({"d": 4}))],
                vec![4],
            ),
            (
                "JSON syntax error line counts from the chunk start",
                "x: 1\n---\n{\"a\": 1,\n\"b\": }\n",
                vec![(1, json!({"x": 1}))],
                vec![4],
            ),
            ("UTF-8 byte order mark", "\u{feff}a: 1\n", vec![(1, json!({"a": 1}))], vec![]),
            ("separator at end without newline", "a: 1\n---", vec![(1, json!({"a": 1}))], vec![]),
        ];
        for (what, input, expected_docs, expected_errors) in cases {
            let (docs, errors) = parse(input);
            let got: Vec<(usize, Value)> = docs.iter().map(|d| (d.line, d.value.clone())).collect();
            assert_eq!(got, expected_docs, "{what}");
            let got_errors: Vec<usize> = errors.iter().map(|e| e.line).collect();
            assert_eq!(got_errors, expected_errors, "{what}: {errors:?}");
        }
    }

    #[test]
    fn documents_are_numbered_across_errors() {
        let (docs, errors) = parse("a: 1\n---\nb: [\n---\nc: 3\n");
        assert_eq!(docs.iter().map(|d| d.index).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(errors[0].index, 2);
        assert!(
            errors[0]
                .to_string()
                .starts_with("test.yaml: document 2 (line"),
            "{}",
            errors[0]
        );
        // Positions inside the parser's own message are in source lines too.
        let (_, errors) = parse("a: 1\n---\nb: 1\nc: d: e\n");
        assert!(
            errors[0].message.contains("line 4"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn directories_are_filtered_and_recursion_is_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("b.yaml"), "b: 1\n").unwrap();
        fs::write(dir.path().join("a.json"), "{\"a\": 1}").unwrap();
        fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/c.yml"), "c: 1\n").unwrap();
        let spec = vec![dir.path().display().to_string()];
        let mut no_fetch = |_: &str| -> Result<String, String> { unreachable!() };
        let names = |sources: Vec<Source>| -> Vec<String> {
            sources
                .iter()
                .map(|s| {
                    Path::new(&s.origin)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        assert_eq!(
            names(read_sources(&spec, false, &mut no_fetch).unwrap()),
            vec!["a.json", "b.yaml"]
        );
        assert_eq!(
            names(read_sources(&spec, true, &mut no_fetch).unwrap()),
            vec!["a.json", "b.yaml", "c.yml"]
        );
        let missing = vec![dir.path().join("nope.yaml").display().to_string()];
        assert!(read_sources(&missing, false, &mut no_fetch)
            .unwrap_err()
            .to_string()
            .contains("nope.yaml"));
    }
}
