//! The agent's allow-list (Sensu's `allow-list` option, reference §2.5 step 3): a YAML or JSON
//! file listing the only commands checks and hooks may run. Entries are Sensu's:
//!
//! ```yaml
//! - exec: /usr/lib/nagios/plugins/check_disk   # the executable (a path, or a name on PATH)
//!   args: ["-w 20%", "-c 10%", "-p /"]          # allowed arguments; [""] = none
//!   sha512: 3d5f…                               # optional: the executable's SHA-512
//!   enable_env: true                            # optional: keep the check's env_vars
//! ```
//!
//! With an allow-list, a check or hook runs only if its command (after token substitution)
//! matches an entry; otherwise its result is a status-3 failure "check command denied by the
//! agent allow list: <why>" (the check annotation `allow_list_on_deny_status` sets another
//! status, as in Sensu). Without `enable_env: true` the check's `env_vars` are dropped.
//!
//! Matching is on **words**, not substrings (Sensu deleted `exec` and each arg wherever they
//! occurred in the command text and accepted what was left if it was blank — reference §8.10):
//! - the command is split into words as `sh` would (quotes, backslashes, `$VAR` / `${VAR}`
//!   expanded from the environment the command will get, asset variables included). A
//!   command using anything else the shell would interpret — `;`, `|`, `&`, redirections,
//!   `$(…)`, backquotes, globs, a leading `VAR=x` — cannot be checked word by word and is
//!   denied, saying so;
//! - the first word must be `exec`, or name the same file (with the same file name) once
//!   both are looked up on the command's `PATH`;
//! - the remaining words must be made of the entry's `args` — each an argument string, split
//!   into words the same way (no expansion) — in any order, each any number of times (Sensu's
//!   set semantics, made word-exact); `""` stands for no arguments;
//! - with `sha512`, the executable the command would run is hashed and must match.
//!
//! Executables from runtime assets match (Sensu looked them up on the agent's own `PATH`,
//! so an asset executable with a `sha512` was always denied — anchors B6 #51): lookups and
//! `$<ASSET>_PATH` use the command's environment, assets' `bin/` first, after the assets are
//! installed.
//!
//! Unlike Sensu, an allow-list file with no entries is refused at startup rather than
//! meaning "allow everything", and unknown keys in an entry are refused (a typo such as
//! `enable-env` must not silently change what runs).

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sha2::{Digest, Sha512};

use crate::exec_env::ExecEnv;

/// The start of every denial's output (Sensu's text for checks).
pub const CHECK_DENIED: &str = "check command denied by the agent allow list";
/// The same for hooks.
pub const HOOK_DENIED: &str = "check hook command denied by the agent allow list";
/// The check annotation that sets the status of a denied check (default 3).
pub const ON_DENY_STATUS_ANNOTATION: &str = "allow_list_on_deny_status";

/// Executables whose digest is remembered; beyond this the memory is cleared.
const MAX_DIGESTS: usize = 256;

/// Why the allow-list file cannot be used: names the file and the entry or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct AllowListError {
    pub path: PathBuf,
    pub message: String,
}

/// An entry as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    #[serde(default)]
    exec: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    sha512: String,
    #[serde(default)]
    enable_env: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    exec: String,
    /// Each allowed argument string as words; an empty one stands for "no arguments".
    args: Vec<Vec<String>>,
    /// Lowercase hex.
    sha512: Option<String>,
    enable_env: bool,
}

/// What the allow-list says about a check or hook about to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Run it with this environment (the check's `env_vars` included or not).
    Run(ExecEnv),
    /// Do not; the reason completes "… denied by the agent allow list: ".
    Denied(String),
}

/// What the allow-list says about one command in one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It may run; `enable_env` says whether the check's `env_vars` are kept.
    Allowed { enable_env: bool },
    /// It may not; the reason completes "… denied by the agent allow list: ".
    Denied(String),
}

/// A loaded allow-list. Shared (`Arc`) by every execution.
#[derive(Debug)]
pub struct AllowList {
    path: PathBuf,
    entries: Vec<Entry>,
    /// SHA-512 of executables already hashed, by path, with the file's identity and mtime
    /// at the time (a replaced or modified file is hashed again).
    digests: Mutex<HashMap<PathBuf, (FileStamp, String)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

impl AllowList {
    /// Reads and validates the file: JSON when it ends in `.json`, YAML otherwise.
    pub fn load(path: &Path) -> Result<AllowList, AllowListError> {
        let text = std::fs::read_to_string(path).map_err(|err| AllowListError {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        AllowList::parse(path, &text)
    }

    /// Parses `text` as the content of `path` (whose extension picks JSON or YAML).
    pub fn parse(path: &Path, text: &str) -> Result<AllowList, AllowListError> {
        let error = |message: String| AllowListError {
            path: path.to_owned(),
            message,
        };
        let is_json = path
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("json"));
        let raw: Vec<RawEntry> = if is_json {
            serde_json::from_str(text).map_err(|err| error(err.to_string()))?
        } else if text.trim().is_empty() {
            Vec::new()
        } else {
            yaml_serde::from_str(text).map_err(|err| error(err.to_string()))?
        };
        if raw.is_empty() {
            return Err(error(
                "has no entries (an empty allow-list would deny every command; remove the \
                 allow-list option to allow all)"
                    .to_owned(),
            ));
        }
        let entries = raw
            .into_iter()
            .enumerate()
            .map(|(index, raw)| {
                Entry::validate(raw).map_err(|message| error(format!("[{index}].{message}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowList {
            path: path.to_owned(),
            entries,
            digests: Mutex::new(HashMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `command` may run, and with which environment: `base` (the agent's and the
    /// assets' variables) plus, when the matching entry has `enable_env`, the check's
    /// `env_vars`. The decision always holds for the environment returned — `$VAR`s are
    /// expanded from it — so `env_vars` cannot change what runs after the check (a variable
    /// carrying extra arguments, say). On the blocking pool: it looks files up and may hash.
    pub async fn check(
        self: &Arc<Self>,
        command: &str,
        base: ExecEnv,
        env_vars: Vec<(String, String)>,
    ) -> Verdict {
        let (list, command) = (self.clone(), command.to_owned());
        tokio::task::spawn_blocking(move || list.verdict(&command, base, &env_vars))
            .await
            .unwrap_or_else(|err| Verdict::Denied(format!("the allow list check failed: {err}")))
    }

    /// [`check`](Self::check), blocking.
    pub fn verdict(&self, command: &str, base: ExecEnv, env_vars: &[(String, String)]) -> Verdict {
        if !env_vars.is_empty() {
            let mut full = base.clone();
            full.add_env_vars(
                env_vars
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_str())),
            );
            if self.decide(command, &full) == (Decision::Allowed { enable_env: true }) {
                return Verdict::Run(full);
            }
        }
        // Without the check's variables (dropped by the entry, or they changed the match).
        match self.decide(command, &base) {
            Decision::Allowed { .. } => Verdict::Run(base),
            Decision::Denied(why) => Verdict::Denied(why),
        }
    }

    /// Whether `command` may run with `env` (the environment it would get). Blocking.
    pub fn decide(&self, command: &str, env: &ExecEnv) -> Decision {
        let words = match split_words(command, Some(env)) {
            Ok(words) => words,
            Err(why) => {
                return Decision::Denied(format!(
                    "the command uses shell syntax the allow list cannot check ({why})"
                ))
            }
        };
        let Some((program, arguments)) = words.split_first() else {
            return Decision::Denied("the command is empty".to_owned());
        };
        if is_assignment(program) {
            return Decision::Denied(
                "the command uses shell syntax the allow list cannot check (a leading \
                 variable assignment)"
                    .to_owned(),
            );
        }
        let mut same_program = false;
        let mut resolved_program: Option<Option<PathBuf>> = None;
        let mut resolve_program = || {
            resolved_program
                .get_or_insert_with(|| resolve(program, env))
                .clone()
        };
        for entry in &self.entries {
            // Looked up only when the file names agree (`check_disk` and
            // `/usr/lib/nagios/plugins/check_disk`), so most entries cost no file access.
            let exec_matches = entry.exec == *program
                || (file_name(&entry.exec) == file_name(program) && {
                    match (resolve(&entry.exec, env), resolve_program()) {
                        (Some(a), Some(b)) => same_file(&a, &b),
                        _ => false,
                    }
                });
            if !exec_matches {
                continue;
            }
            same_program = true;
            if !arguments_match(&entry.args, arguments) {
                continue;
            }
            if let Some(expected) = &entry.sha512 {
                let Some(path) = resolve_program() else {
                    return Decision::Denied(format!(
                        "{program:?} was not found on PATH, so its sha512 cannot be checked"
                    ));
                };
                match self.digest(&path) {
                    Ok(actual) if actual == *expected => {}
                    Ok(actual) => {
                        return Decision::Denied(format!(
                            "{} has sha512 {actual}, not the one its entry lists",
                            path.display()
                        ))
                    }
                    Err(err) => {
                        return Decision::Denied(format!("cannot read {}: {err}", path.display()))
                    }
                }
            }
            return Decision::Allowed {
                enable_env: entry.enable_env,
            };
        }
        Decision::Denied(match same_program {
            true => format!("no entry for {program:?} allows these arguments"),
            false => format!("no entry for {program:?}"),
        })
    }

    /// The SHA-512 of the file at `path`, remembered while the file stays the same.
    fn digest(&self, path: &Path) -> std::io::Result<String> {
        let canonical = path.canonicalize()?;
        let stamp = FileStamp::of(&std::fs::metadata(&canonical)?);
        if let Some((known, digest)) = self
            .digests
            .lock()
            .expect("digest lock poisoned")
            .get(&canonical)
        {
            if *known == stamp {
                return Ok(digest.clone());
            }
        }
        let mut file = std::fs::File::open(&canonical)?;
        let mut hasher = Sha512::new();
        std::io::copy(&mut file, &mut hasher)?;
        let digest = crate::assets::fetch::hex(&hasher.finalize());
        let mut digests = self.digests.lock().expect("digest lock poisoned");
        if digests.len() >= MAX_DIGESTS {
            digests.clear();
        }
        digests.insert(canonical, (stamp, digest.clone()));
        Ok(digest)
    }
}

impl Entry {
    /// The error names the field (the caller adds `[index].`).
    fn validate(raw: RawEntry) -> Result<Entry, String> {
        if raw.exec.trim().is_empty() {
            return Err("exec: cannot be empty".to_owned());
        }
        if raw.args.is_empty() {
            return Err(
                "args: cannot be empty (use [\"\"] for a command without arguments)".to_owned(),
            );
        }
        let args = raw
            .args
            .iter()
            .enumerate()
            .map(|(index, text)| {
                split_words(text, None).map_err(|why| format!("args[{index}]: {why}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sha512 = match raw.sha512.trim() {
            "" => None,
            hex if hex.len() == 128 && hex.bytes().all(|byte| byte.is_ascii_hexdigit()) => {
                Some(hex.to_ascii_lowercase())
            }
            _ => return Err("sha512: must be 128 hexadecimal characters".to_owned()),
        };
        Ok(Entry {
            exec: raw.exec.trim().to_owned(),
            args,
            sha512,
            enable_env: raw.enable_env,
        })
    }
}

/// Whether `words` can be cut into consecutive runs that each equal one of `allowed`.
fn arguments_match(allowed: &[Vec<String>], words: &[String]) -> bool {
    // reachable[i]: the first i words are made of allowed arguments.
    let mut reachable = vec![false; words.len() + 1];
    reachable[0] = true;
    for start in 0..words.len() {
        if !reachable[start] {
            continue;
        }
        for argument in allowed.iter().filter(|argument| !argument.is_empty()) {
            let end = start + argument.len();
            if end <= words.len() && words[start..end] == argument[..] {
                reachable[end] = true;
            }
        }
    }
    reachable[words.len()]
}

/// `NAME=value` as a first word is an assignment to `sh`, not a program.
fn is_assignment(word: &str) -> bool {
    let Some((name, _)) = word.split_once('=') else {
        return false;
    };
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Finds the file `program` names: a path as is, a bare name on `env`'s `PATH`.
fn resolve(program: &str, env: &ExecEnv) -> Option<PathBuf> {
    let is_executable = |path: &Path| {
        std::fs::metadata(path)
            .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    env.get("PATH")?
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable(candidate))
}

fn file_name(program: &str) -> &str {
    program.rsplit('/').next().unwrap_or(program)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Splits `text` into words as `sh` would. With `env`, it is a command: `$NAME` and `${NAME}`
/// are expanded from `env`, and whatever else the shell would interpret is an error saying
/// what. Without, it is an allow-list argument: only quotes and backslashes are special.
pub fn split_words(text: &str, env: Option<&ExecEnv>) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether `word` is a word yet (`''` is an empty word; an empty `$UNSET` is none).
    let mut in_word = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated quote".to_owned()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.peek() {
                            Some(&next @ ('$' | '`' | '"' | '\\')) => {
                                word.push(next);
                                chars.next();
                            }
                            Some('\n') => {
                                chars.next();
                            }
                            _ => word.push('\\'),
                        },
                        Some('$') if env.is_some() => {
                            if let Some(value) = expansion(&mut chars, env)? {
                                word.push_str(&value);
                            } else {
                                word.push('$');
                            }
                        }
                        Some('`') if env.is_some() => return Err("command substitution".to_owned()),
                        Some(c) => word.push(c),
                        None => return Err("unterminated quote".to_owned()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(next) => {
                    word.push(next);
                    in_word = true;
                }
                None => return Err("a trailing backslash".to_owned()),
            },
            _ if env.is_none() => {
                word.push(c);
                in_word = true;
            }
            '$' => match expansion(&mut chars, env)? {
                Some(value) => {
                    if value.contains(|c: char| c.is_whitespace() || "*?[".contains(c)) {
                        return Err(format!(
                            "an unquoted variable whose value has spaces or wildcards: {value:?}"
                        ));
                    }
                    if !value.is_empty() {
                        word.push_str(&value);
                        in_word = true;
                    }
                }
                None => {
                    word.push('$');
                    in_word = true;
                }
            },
            ';' | '&' | '|' | '<' | '>' | '(' | ')' | '`' | '\n' => {
                return Err(format!("{c:?}"));
            }
            '*' | '?' | '[' => return Err(format!("the wildcard {c:?}")),
            '~' | '#' if !in_word => return Err(format!("{c:?} at the start of a word")),
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// After a `$`: the value of `NAME` / `{NAME}` (unset is empty), `None` when the `$` is a
/// literal one (nothing name-like follows), an error for any other expansion.
fn expansion(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    env: Option<&ExecEnv>,
) -> Result<Option<String>, String> {
    let is_name_start = |c: char| c.is_ascii_alphabetic() || c == '_';
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let lookup = |name: &str| env.and_then(|env| env.get(name)).unwrap_or_default();
    match chars.peek().copied() {
        Some('{') => {
            chars.next();
            let mut name = String::new();
            loop {
                match chars.next() {
                    Some('}') => break,
                    Some(c) => name.push(c),
                    None => return Err("an unterminated ${".to_owned()),
                }
            }
            let valid = name.chars().next().is_some_and(is_name_start) && name.chars().all(is_name);
            match valid {
                true => Ok(Some(lookup(&name))),
                false => Err(format!("the expansion ${{{name}}}")),
            }
        }
        Some(c) if is_name_start(c) => {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if !is_name(c) {
                    break;
                }
                name.push(c);
                chars.next();
            }
            Ok(Some(lookup(&name)))
        }
        Some(c) if c.is_ascii_digit() || "@*#?-$!(".contains(c) => Err(format!("${c}")),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(yaml: &str) -> AllowList {
        AllowList::parse(Path::new("allow.yml"), yaml).unwrap()
    }

    #[test]
    fn commands_split_like_sh_and_shell_syntax_is_refused() {
        let mut env = ExecEnv::default();
        env.set("ASSET_PATH", "/cache/assets/abc");
        env.set("EMPTY", "");
        env.set("SPACED", "a b");
        let cases: &[(&str, Result<&[&str], &str>)] = &[
            (
                "check_disk -w 20% -c 10%",
                Ok(&["check_disk", "-w", "20%", "-c", "10%"]),
            ),
            (
                "  echo 'a b'  \"c d\" e\\ f ''",
                Ok(&["echo", "a b", "c d", "e f", ""]),
            ),
            (
                "$ASSET_PATH/bin/run x",
                Ok(&["/cache/assets/abc/bin/run", "x"]),
            ),
            (
                "${ASSET_PATH}/bin/run \"$SPACED\"",
                Ok(&["/cache/assets/abc/bin/run", "a b"]),
            ),
            ("run $EMPTY x", Ok(&["run", "x"])),
            ("echo cost: $ 5", Ok(&["echo", "cost:", "$", "5"])),
            ("a=b", Ok(&["a=b"])),
            ("check; rm -rf /", Err("';'")),
            ("check && true", Err("'&'")),
            ("check | tee", Err("'|'")),
            ("check > /tmp/x", Err("'>'")),
            ("check $(id)", Err("$(")),
            ("check `id`", Err("'`'")),
            ("check \"`id`\"", Err("command substitution")),
            ("check /etc/*", Err("wildcard")),
            ("check $SPACED", Err("spaces or wildcards")),
            ("check ${X:-y}", Err("${X:-y}")),
            ("check 'open", Err("unterminated quote")),
            ("check ~/x", Err("'~'")),
        ];
        for (command, expected) in cases {
            let result = split_words(command, Some(&env));
            match (result, expected) {
                (Ok(words), Ok(expected)) => assert_eq!(words, *expected, "{command}"),
                (Err(err), Err(expected)) => {
                    assert!(
                        err.contains(expected),
                        "{command}: {err:?} lacks {expected:?}"
                    )
                }
                (result, expected) => panic!("{command}: {result:?}, expected {expected:?}"),
            }
        }
        // Arguments in the file are literal apart from quoting.
        assert_eq!(
            split_words("-p '/var/log' $HOME;x", None).unwrap(),
            ["-p", "/var/log", "$HOME;x"]
        );
    }

    #[test]
    fn arguments_are_matched_word_by_word() {
        let allow = list(
            "- exec: /usr/bin/check_disk\n  args: ['-w 20%', '-c 10%', '-p /']\n\
             - exec: /usr/bin/uptime\n  args: ['']\n",
        );
        let env = ExecEnv::default();
        let cases = [
            ("/usr/bin/check_disk -w 20% -c 10% -p /", true),
            ("/usr/bin/check_disk -p / -w 20%", true),
            ("/usr/bin/check_disk", true),
            ("/usr/bin/check_disk -w 20%% -c 10%", false),
            // Sensu accepted this: deleting "-w 20%" from "-w 20%x" left "x"... and "-c 10%"
            // inside "-c 10%-p /" too. Words are not substrings.
            ("/usr/bin/check_disk -w 20%-c 10%", false),
            ("/usr/bin/check_disk -w 99%", false),
            ("/usr/bin/check_disk -w", false),
            ("/usr/bin/uptime", true),
            ("/usr/bin/uptime -p", false),
            ("/usr/bin/check_diskx", false),
            ("/tmp/usr/bin/check_disk", false),
        ];
        for (command, allowed) in cases {
            let decision = allow.decide(command, &env);
            assert_eq!(
                matches!(decision, Decision::Allowed { .. }),
                allowed,
                "{command}: {decision:?}"
            );
        }
        assert_eq!(
            allow.decide("/usr/bin/check_disk -w 99%", &env),
            Decision::Denied("no entry for \"/usr/bin/check_disk\" allows these arguments".into())
        );
        assert_eq!(
            allow.decide("/bin/true", &env),
            Decision::Denied("no entry for \"/bin/true\"".into())
        );
    }

    #[test]
    fn env_vars_cannot_change_what_runs_after_the_decision() {
        let allow = list(
            "- exec: /usr/bin/check_disk\n  args: ['-w 20%']\n  enable_env: true\n\
             - exec: /usr/bin/uptime\n  args: ['']\n",
        );
        let pairs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let base = ExecEnv::default();
        let with = |pairs: &[(&str, &str)]| {
            let mut env = base.clone();
            env.add_env_vars(pairs.iter().copied());
            env
        };
        let cases = [
            // Kept: the entry enables env and the command matches with them.
            (
                "/usr/bin/check_disk -w 20%",
                &[("A", "1")][..],
                Verdict::Run(with(&[("A", "1")])),
            ),
            (
                "/usr/bin/check_disk -w \"$PCT\"",
                &[("PCT", "20%")][..],
                Verdict::Run(with(&[("PCT", "20%")])),
            ),
            // A variable smuggling arguments: without it the command is allowed, so it runs
            // without it (sh then expands $EXTRA to nothing, as decided).
            (
                "/usr/bin/check_disk -w 20% $EXTRA",
                &[("EXTRA", "-c1")][..],
                Verdict::Run(base.clone()),
            ),
            // The entry does not enable env: dropped.
            (
                "/usr/bin/uptime",
                &[("A", "1")][..],
                Verdict::Run(base.clone()),
            ),
        ];
        for (command, env_vars, expected) in cases {
            assert_eq!(
                allow.verdict(command, base.clone(), &pairs(env_vars)),
                expected,
                "{command}"
            );
        }
        assert!(matches!(
            allow.verdict("/usr/bin/check_disk $ARGS", base.clone(), &pairs(&[("ARGS", "-w 20%")])),
            Verdict::Run(env) if env == base
        ));
    }

    #[test]
    fn sha512_and_path_lookup_follow_the_command_environment() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("asset/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = bin.join("hello.sh");
        std::fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let digest = crate::assets::fetch::hex(&Sha512::digest(b"#!/bin/sh\necho hello\n"));
        let allow = list(&format!(
            "- exec: hello.sh\n  args: ['']\n  sha512: {}\n  enable_env: true\n\
             - exec: {}\n  args: ['x']\n",
            digest.to_uppercase(),
            script.display()
        ));
        let mut env = ExecEnv::default();
        // Not on the agent's PATH: denied, saying why.
        let denied = allow.decide("hello.sh", &env);
        assert!(
            matches!(&denied, Decision::Denied(why) if why.contains("not found on PATH")),
            "{denied:?}"
        );
        // On the command's PATH (an asset's bin/): allowed, by name and by full path.
        env.set("PATH", &bin.to_string_lossy());
        env.set("HELLO_PATH", &dir.path().join("asset").to_string_lossy());
        assert_eq!(
            allow.decide("hello.sh", &env),
            Decision::Allowed { enable_env: true }
        );
        assert_eq!(
            allow.decide("$HELLO_PATH/bin/hello.sh", &env),
            Decision::Allowed { enable_env: true },
            "the same file as the entry's exec"
        );
        assert_eq!(
            allow.decide("hello.sh x", &env),
            Decision::Allowed { enable_env: false },
            "the second entry names the same file by path"
        );
        // A changed executable no longer matches its sha512.
        std::fs::write(&script, "#!/bin/sh\necho changed\n").unwrap();
        let denied = allow.decide("hello.sh", &env);
        assert!(
            matches!(&denied, Decision::Denied(why) if why.contains("has sha512")),
            "{denied:?}"
        );
    }

    #[test]
    fn bad_files_name_the_entry_and_field() {
        let cases = [
            (
                "allow.yml",
                "- exec: ''\n  args: ['']\n",
                "allow.yml: [0].exec: cannot be empty",
            ),
            (
                "allow.yml",
                "- exec: /bin/a\n  args: ['']\n- exec: /bin/b\n",
                "allow.yml: [1].args: cannot be empty",
            ),
            (
                "allow.yml",
                "- exec: /bin/a\n  args: ['']\n  sha512: abc\n",
                "allow.yml: [0].sha512: must be 128",
            ),
            (
                "allow.yml",
                "- exec: /bin/a\n  args: [\"'open\"]\n",
                "allow.yml: [0].args[0]: unterminated quote",
            ),
            (
                "allow.yml",
                "- exec: /bin/a\n  args: ['']\n  enable-env: true\n",
                "unknown field `enable-env`",
            ),
            ("allow.yml", "exec: /bin/a\n", "allow.yml: "),
            ("allow.yml", "", "allow.yml: has no entries"),
            (
                "allow.json",
                "[{\"exec\": \"/bin/a\", \"args\": [\"\"], \"sha512\": 5}]",
                "allow.json: invalid type",
            ),
            ("allow.json", "[]", "allow.json: has no entries"),
        ];
        for (name, text, expected) in cases {
            let err = AllowList::parse(Path::new(name), text)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{text:?}: {err:?} lacks {expected:?}"
            );
        }
        let parsed = AllowList::parse(
            Path::new("allow.json"),
            "[{\"exec\": \"/bin/a\", \"args\": [\"\"], \"enable_env\": true}]",
        )
        .unwrap();
        assert_eq!(
            parsed.decide("/bin/a", &ExecEnv::default()),
            Decision::Allowed { enable_env: true }
        );
    }
}
