//! What the SQLite and PostgreSQL stores share: the continue-token format, the exact range that
//! selects names by prefix, the JSON text encoding of values and changes, and the translation of
//! driver errors into [`StoreError`]. Keeping these in one place is what makes the two backends
//! paginate, filter and fail identically; the SQL itself differs and lives in each backend.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use tokio::sync::watch;

use crate::{ChangeOp, Key, KindChanges, Precondition, RawChange, StoreError, DEFAULT_PAGE_SIZE};

/// How long `wait_for_change` trusts notifications before it looks at the revision itself:
/// the bound on how late a follower learns of a write whose notification was lost.
pub(crate) const DEFAULT_CHANGE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The number of rows a page asks for, `limit: 0` meaning the default page size.
pub(crate) fn page_size(limit: usize) -> usize {
    if limit == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        limit
    }
}

/// The select list and `FROM` clause of a change-feed read (alias `c` for `changes`, `r` for
/// `resources`). A change-feed entry records which key changed, not the value: writes store
/// each value once, in `resources` (the event path writes one row per event instead of two
/// copies), and a read takes a `put`'s value from the resource while it is still at that
/// revision. A `put` that a later write replaced reads without a value (`NULL`); the later
/// entry carries the key's state. (Entries written before this layout kept their value in
/// `changes.value`, which is no longer read.)
pub(crate) const CHANGES_WITH_VALUES: &str = "c.revision AS revision, c.op AS op, \
     c.kind AS kind, c.namespace AS namespace, c.name AS name, r.value AS value \
     FROM changes c LEFT JOIN resources r ON r.kind = c.kind AND r.namespace = c.namespace \
     AND r.name = c.name AND r.revision = c.revision";

/// Keeps the entries a follower needs: deletions, and `put`s still current. A follower that
/// skips a replaced `put` loses nothing, since the entry that replaced it follows.
pub(crate) const NOT_SUPERSEDED: &str = "(c.op = 'delete' OR r.value IS NOT NULL)";

/// The most rows one multi-row `INSERT` of `put_all` carries (SQLite; 6 parameters a row,
/// far below SQLite's limit of 32,766).
pub(crate) const MAX_ROWS_PER_INSERT: usize = 64;

/// How `put_all` on SQLite cuts `total` rows into multi-row statements: full chunks of
/// [`MAX_ROWS_PER_INSERT`], then the rest as decreasing powers of two. Prepared statements are
/// cached by their text, so a few shapes (64, 32, …, 1 rows) serve every batch size instead of
/// one new statement per size.
pub(crate) fn chunk_sizes(total: usize) -> impl Iterator<Item = usize> {
    let full = total / MAX_ROWS_PER_INSERT;
    let rest = total % MAX_ROWS_PER_INSERT;
    std::iter::repeat_n(MAX_ROWS_PER_INSERT, full).chain(
        (0..MAX_ROWS_PER_INSERT.trailing_zeros())
            .rev()
            .map(|bit| 1usize << bit)
            .filter(move |size| rest & size != 0),
    )
}

/// What `put_each` writes and answers, decided from the current revisions of its keys (read
/// inside the write transaction): the items whose precondition holds are written in order —
/// the n-th of them at revision `first + n` — and the others are answered with the failed
/// precondition. A key written by an earlier item of the same call counts as existing at a
/// revision no caller can name, so a second compare-and-set of it in one call conflicts, as
/// it would have one call later.
pub(crate) struct PutEachPlan<'a> {
    pub(crate) writes: Vec<(&'a Key, String)>,
    /// Per item: the index of its write, or why it was skipped.
    answers: Vec<Result<usize, StoreError>>,
}

/// The revision a key written earlier in the same `put_each` is known by: none a caller has.
const WRITTEN_IN_THIS_CALL: i64 = -1;

impl<'a> PutEachPlan<'a> {
    pub(crate) fn new(
        items: Vec<(&'a Key, String, Precondition)>,
        mut current: std::collections::HashMap<Key, i64>,
    ) -> PutEachPlan<'a> {
        let mut writes = Vec::with_capacity(items.len());
        let mut answers = Vec::with_capacity(items.len());
        for (key, value_text, precondition) in items {
            match check_precondition(key, current.get(key).copied(), precondition) {
                Ok(()) => {
                    current.insert(key.clone(), WRITTEN_IN_THIS_CALL);
                    answers.push(Ok(writes.len()));
                    writes.push((key, value_text));
                }
                Err(err) => answers.push(Err(err)),
            }
        }
        PutEachPlan { writes, answers }
    }

    /// The keys of `items` whose precondition needs their current revision (an unconditional
    /// write needs none, so a batch of mostly unconditional writes reads little).
    pub(crate) fn keys<'k>(items: &[(&'k Key, String, Precondition)]) -> Vec<&'k Key> {
        items
            .iter()
            .filter(|(_, _, precondition)| *precondition != Precondition::None)
            .map(|(key, _, _)| *key)
            .collect()
    }

    /// The answers once the writes were made, the last of them at `last_revision` (`None`:
    /// nothing was written).
    pub(crate) fn outcomes(self, last_revision: Option<i64>) -> Vec<Result<i64, StoreError>> {
        let first = last_revision.unwrap_or_default() - self.writes.len() as i64 + 1;
        self.answers
            .into_iter()
            .map(|answer| answer.map(|index| first + index as i64))
            .collect()
    }
}

/// `limit` as an SQL `LIMIT` argument. Lists fetch one row more than the page to learn whether
/// a next page exists; saturating keeps an absurd `usize` from wrapping negative.
pub(crate) fn sql_limit(rows: usize) -> i64 {
    i64::try_from(rows).unwrap_or(i64::MAX)
}

/// Encodes the position after `(namespace, name)`. The payload is the JSON array
/// `[namespace, name]`: JSON string escaping makes it unambiguous for any two strings (a plain
/// separator would not be, since names may contain `/` or anything else).
pub(crate) fn encode_continue_token(namespace: &str, name: &str) -> String {
    let payload = Value::Array(vec![Value::from(namespace), Value::from(name)]).to_string();
    URL_SAFE_NO_PAD.encode(payload)
}

/// The inverse of [`encode_continue_token`]; anything else is [`StoreError::InvalidToken`].
pub(crate) fn decode_continue_token(token: &str) -> Result<(String, String), StoreError> {
    let payload = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| StoreError::InvalidToken)?;
    match serde_json::from_slice::<Value>(&payload) {
        Ok(Value::Array(parts)) => match <[Value; 2]>::try_from(parts) {
            Ok([Value::String(namespace), Value::String(name)]) => Ok((namespace, name)),
            _ => Err(StoreError::InvalidToken),
        },
        _ => Err(StoreError::InvalidToken),
    }
}

/// The smallest string greater than every string that starts with `prefix`, or `None` when no
/// such bound exists (the prefix is all U+10FFFF). With it, `name >= prefix AND name < bound`
/// selects exactly the names with that prefix and can use the primary-key index; UTF-8 byte
/// order equals code-point order, so incrementing the last code point is exact on both backends
/// (unlike appending a "highest" character, which misses names continuing with that character).
pub(crate) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // Surrogates are not chars: the successor of U+D7FF is U+E000.
        let successor = if last == '\u{D7FF}' {
            Some('\u{E000}')
        } else {
            char::from_u32(u32::from(last) + 1)
        };
        if let Some(successor) = successor {
            chars.push(successor);
            return Some(chars.into_iter().collect());
        }
        // `last` was U+10FFFF, which has no successor: carry into the character before it.
    }
    None
}

/// The stored text of a value. Compact JSON, fields in the order the caller built them
/// (serde_json's `preserve_order`), which is the order the API returns them in.
pub(crate) fn encode_value(value: &Value) -> String {
    // Into a byte buffer rather than through `Display`, which writes the same compact text
    // but through `fmt::Formatter` token by token: encoding was a visible share of committing
    // a batch of events. Serializing a `Value` cannot fail (its keys are strings).
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

pub(crate) fn decode_value(key: &dyn Display, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|err| StoreError::Internal(format!("{key}: stored value is not JSON: {err}")))
}

pub(crate) fn op_text(op: ChangeOp) -> &'static str {
    match op {
        ChangeOp::Put => "put",
        ChangeOp::Delete => "delete",
    }
}

pub(crate) fn parse_op(text: &str) -> Result<ChangeOp, StoreError> {
    match text {
        "put" => Ok(ChangeOp::Put),
        "delete" => Ok(ChangeOp::Delete),
        other => Err(StoreError::Internal(format!(
            "change feed: unknown op {other:?}"
        ))),
    }
}

/// The answer of `changes_of_kinds` when the feed holds nothing after `after`.
pub(crate) fn nothing_after(after: i64) -> KindChanges {
    KindChanges {
        changes: Vec::new(),
        through: after,
        pruned: false,
    }
}

/// Assembles a `changes_of_kinds` answer from a read of the revisions in `(after, head]`
/// (`head > after`): `changes` are the rows of the wanted kinds, at most `page_size`, and
/// `next_kept` says whether revision `after + 1` was still in the feed when checked (after the
/// rows were read, so a prune racing the read is never missed). A full page ends at its last
/// row, since more rows of those kinds may follow; a short one covered everything to `head`.
pub(crate) fn kind_changes(
    after: i64,
    head: i64,
    page_size: usize,
    changes: Vec<RawChange>,
    next_kept: bool,
) -> KindChanges {
    if !next_kept {
        return KindChanges {
            changes: Vec::new(),
            through: after,
            pruned: true,
        };
    }
    let through = match changes.last() {
        Some(last) if changes.len() >= page_size => last.revision,
        _ => head,
    };
    KindChanges {
        changes,
        through,
        pruned: false,
    }
}

/// Whether a write under `precondition` may go ahead, given the key's current revision
/// (`None`: absent). `create` and unconditional deletes check existence themselves.
pub(crate) fn check_precondition(
    key: &Key,
    current: Option<i64>,
    precondition: Precondition,
) -> Result<(), StoreError> {
    match (precondition, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::MustExist | Precondition::Revision(_), None) => {
            Err(StoreError::NotFound(key.to_string()))
        }
        (Precondition::MustExist, Some(_)) => Ok(()),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => Err(StoreError::AlreadyExists(key.to_string())),
        (Precondition::Revision(expected), Some(actual)) if expected == actual => Ok(()),
        (Precondition::Revision(_), Some(_)) => Err(StoreError::Conflict(key.to_string())),
    }
}

/// The newest revision one store instance knows to be committed, which `wait_for_change`
/// waits on. Local writes raise it after commit; on PostgreSQL the notification listener raises
/// it for other backends' writes; polling raises it when a notification was lost.
pub(crate) struct RevisionSignal {
    latest: watch::Sender<i64>,
}

impl RevisionSignal {
    pub(crate) fn new(initial: i64) -> RevisionSignal {
        RevisionSignal {
            latest: watch::channel(initial).0,
        }
    }

    /// Records that `revision` is committed. Never lowers the value: notifications and polls
    /// can arrive out of order.
    pub(crate) fn observe(&self, revision: i64) {
        self.latest.send_if_modified(|latest| {
            let newer = revision > *latest;
            if newer {
                *latest = revision;
            }
            newer
        });
    }

    /// Resolves once a revision greater than `after` is known. Every `poll_interval` without
    /// news it asks `read_revision` (the database) directly, so a lost notification or a write
    /// by another process delays a follower by at most that long. A failing read resolves the
    /// wait: the caller then meets the error in `changes_since` and applies its own backoff.
    pub(crate) async fn wait_past<F, Fut>(
        &self,
        after: i64,
        poll_interval: Duration,
        read_revision: F,
    ) where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<i64, StoreError>>,
    {
        let mut latest = self.latest.subscribe();
        loop {
            if *latest.borrow_and_update() > after {
                return;
            }
            match tokio::time::timeout(poll_interval, latest.changed()).await {
                Ok(Ok(())) => continue,
                // The sender lives as long as the store, which outlives this borrow.
                Ok(Err(_closed)) => return,
                Err(_elapsed) => match read_revision().await {
                    Ok(revision) => self.observe(revision),
                    Err(_) => return,
                },
            }
        }
    }
}

/// Translates a driver error about `subject` (a key, or what the operation was) into the domain
/// error, so no sqlx type crosses the crate boundary. Connection trouble becomes `Unavailable`
/// (callers may retry or report unhealthy), a unique violation `AlreadyExists`, the rest
/// `Internal`.
pub(crate) fn translate(subject: &dyn Display, err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(format!("{subject}: {err}")),
        sqlx::Error::Database(ref db) if db.is_unique_violation() => {
            StoreError::AlreadyExists(subject.to_string())
        }
        sqlx::Error::Database(ref db) if db.code().is_some_and(|code| is_transient_code(&code)) => {
            StoreError::Unavailable(format!("{subject}: {err}"))
        }
        sqlx::Error::Migrate(migrate) => match *migrate {
            sqlx::migrate::MigrateError::Execute(inner) => translate(subject, inner),
            other => StoreError::Internal(format!("{subject}: migrations: {other}")),
        },
        other => StoreError::Internal(format!("{subject}: {other}")),
    }
}

/// Whether a database error code means "the database cannot serve us right now" rather than
/// "this statement is wrong". PostgreSQL codes are SQLSTATEs, always five characters; SQLite
/// codes are decimal extended result codes, at most four digits: one function tells both apart.
fn is_transient_code(code: &str) -> bool {
    if code.len() == 5 {
        return is_transient_sqlstate(code);
    }
    match code.parse::<i32>() {
        // The primary SQLite result code is the low byte of the extended one.
        Ok(sqlite_code) => matches!(
            sqlite_code & 0xff,
            5 /* BUSY */ | 6 /* LOCKED */ | 10 /* IOERR */ | 13 /* FULL */ | 14 /* CANTOPEN */
        ),
        Err(_) => false,
    }
}

fn is_transient_sqlstate(sqlstate: &str) -> bool {
    // 08: connection exception; 53: insufficient resources (too many connections, disk full);
    // 57P01-57P03: admin/crash shutdown, cannot connect now; 40001/40P01: serialization failure
    // and deadlock, which a retry resolves.
    sqlstate.starts_with("08")
        || sqlstate.starts_with("53")
        || matches!(sqlstate, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let cases = [
            ("", ""),
            ("default", "web"),
            ("a\"b", "c/d"),
            ("ns", "\u{10FFFF}é\n"),
        ];
        for (namespace, name) in cases {
            let token = encode_continue_token(namespace, name);
            assert!(
                !token.contains('=') && !token.contains('+') && !token.contains('/'),
                "{token}"
            );
            assert_eq!(
                decode_continue_token(&token).unwrap(),
                (namespace.to_owned(), name.to_owned())
            );
        }
        let garbage = [
            "",
            "!!!",
            "e30",
            /* {} */ "WyJhIl0",
            /* ["a"] */ "WyJhIiwxXQ", /* ["a",1] */
        ];
        for token in garbage {
            assert!(
                matches!(decode_continue_token(token), Err(StoreError::InvalidToken)),
                "{token:?}"
            );
        }
    }

    #[test]
    fn prefix_upper_bound_is_the_successor() {
        let cases = [
            ("", None),
            ("a", Some("b")),
            ("web/", Some("web0")),
            ("x\u{10FFFF}", Some("y")),
            ("\u{10FFFF}\u{10FFFF}", None),
            ("\u{D7FF}", Some("\u{E000}")),
        ];
        for (prefix, expected) in cases {
            assert_eq!(
                prefix_upper_bound(prefix).as_deref(),
                expected,
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn values_are_encoded_as_compact_json_in_field_order() {
        let value = serde_json::json!({
            "b": [1, -2.5, "é\"\n\u{1}", null, true],
            "a": {"z": {}, "y": []},
            "big": u64::MAX,
        });
        assert_eq!(encode_value(&value), value.to_string());
        assert_eq!(
            encode_value(&value),
            r#"{"b":[1,-2.5,"é\"\n\u0001",null,true],"a":{"z":{},"y":[]},"big":18446744073709551615}"#
        );
    }

    #[test]
    fn chunk_sizes_cover_every_row_with_few_shapes() {
        let cases: [(usize, &[usize]); 6] = [
            (0, &[]),
            (1, &[1]),
            (7, &[4, 2, 1]),
            (64, &[64]),
            (130, &[64, 64, 2]),
            (191, &[64, 64, 32, 16, 8, 4, 2, 1]),
        ];
        for (total, expected) in cases {
            assert_eq!(chunk_sizes(total).collect::<Vec<_>>(), expected, "{total}");
        }
        for total in 0..300 {
            assert_eq!(chunk_sizes(total).sum::<usize>(), total);
        }
    }

    #[test]
    fn transient_codes() {
        let cases = [
            ("08006", true),
            ("57P01", true),
            ("53300", true),
            ("23505", false),
            ("42P01", false),
            ("5", true),
            ("517", true),
            ("19", false),
            ("2067", false),
        ];
        for (code, transient) in cases {
            assert_eq!(is_transient_code(code), transient, "{code}");
        }
    }
}
