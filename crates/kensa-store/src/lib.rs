//! Kensa's store: one [`Store`] interface over resources kept as JSON documents, addressed by
//! `(kind, namespace, name)`, with two implementations that pass one conformance suite:
//! embedded SQLite (the default, one file under `--state-dir`) and PostgreSQL (scale-out).
//!
//! The store knows nothing about what a resource means: `kind` is the resource's RBAC/URL name
//! (`checks`, `events`, or an internal kind such as `sessions`), the value is the canonical JSON
//! the API produced. Validation happens before a value reaches the store.
//!
//! Invariants:
//! - Every write gets a fresh, strictly increasing `revision` (one counter per store). A row's
//!   revision is its version for conditional writes and its ETag.
//! - Revisions are dense: every revision number is exactly one entry of the change feed, and a
//!   failed write consumes none. A follower that asks for changes after `r` and gets a first
//!   change other than `r + 1` knows the feed was pruned past it and must re-list.
//! - Conditional writes never silently overwrite: `create` fails with `AlreadyExists`,
//!   `Precondition::Revision` fails with `Conflict` when the row moved on.
//! - Every successful write is visible in the change feed ([`Store::changes_since`]) in
//!   revision order, so other services (and other backends on PostgreSQL) can follow it;
//!   followers of a few kinds read [`Store::changes_of_kinds`], which skips the rest (events)
//!   inside the store.
//! - Listing is keyset-paginated on `(namespace, name)` in bytewise (UTF-8) order, the same on
//!   both backends; nothing loads a whole table.
//!
//! Code map: [`sqlite`] and [`postgres`] are the implementations; `sql` holds what they share
//! (continue tokens, prefix ranges, error translation); `conformance` is the suite both must
//! pass and `testing` gives other crates' tests a throwaway PostgreSQL database (both behind
//! the `testsuite` feature).

use std::fmt;

use async_trait::async_trait;
use serde_json::Value;

pub mod batched;
pub mod postgres;
mod sql;
pub mod sqlite;

#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
#[cfg(any(test, feature = "testsuite"))]
pub mod testing;

/// The page size of a listing or change-feed read that asks for `limit: 0`.
pub const DEFAULT_PAGE_SIZE: usize = 500;

/// Where a resource lives. `namespace` is `""` for cluster-wide kinds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Key {
        Key {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// `checks "default/web"`, or `namespaces "default"` for a cluster-wide kind: the form error
/// messages use.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} \"{}\"", self.kind, self.name)
        } else {
            write!(f, "{} \"{}/{}\"", self.kind, self.namespace, self.name)
        }
    }
}

/// A stored resource with the revision of its last write.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub key: Key,
    pub value: Value,
    pub revision: i64,
}

/// The condition a write or delete is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Create or replace, whatever is there.
    None,
    /// Only if the resource exists (else `NotFound`).
    MustExist,
    /// Only if the resource exists at exactly this revision (else `NotFound`/`Conflict`).
    Revision(i64),
    /// Only if the resource does not exist (else `AlreadyExists`): `create` as a precondition,
    /// for [`Store::put_each`].
    Absent,
}

/// What to list: one kind, in one namespace or in all, optionally only names starting with a
/// prefix (the events of one entity are `<entity>/…`).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub kind: String,
    /// `None`: every namespace (cluster-wide listing). `Some("")` for cluster-wide kinds.
    pub namespace: Option<String>,
    pub name_prefix: Option<String>,
    /// At most this many items; 0 means [`DEFAULT_PAGE_SIZE`] (still paginated).
    pub limit: usize,
    /// The `continue` token of the previous page, as returned in [`Page::continue_token`].
    pub continue_token: Option<String>,
}

/// One page of a listing, ordered by `(namespace, name)`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub items: Vec<Stored>,
    /// Opaque (base64url, no padding); `None` on the last page.
    pub continue_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Put,
    Delete,
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub revision: i64,
    pub op: ChangeOp,
    pub key: Key,
    /// For `Put`, the key's value while this entry is its latest write; `None` for a `Put`
    /// that a later write replaced (that entry carries the state) and for `Delete`. The feed
    /// records which keys changed; values are stored once, with the resource.
    pub value: Option<Value>,
}

/// One entry of the change feed with its value still the stored JSON text, as
/// [`Store::changes_of_kinds`] returns it: a follower that keeps a summary parses only what it
/// needs, and one that wants the document calls [`RawChange::decode`].
#[derive(Debug, Clone, PartialEq)]
pub struct RawChange {
    pub revision: i64,
    pub op: ChangeOp,
    pub key: Key,
    /// The new value's JSON text for `Put`; `None` for `Delete`.
    pub value: Option<String>,
}

impl RawChange {
    /// The change with its value parsed, as [`Store::changes_since`] would have returned it.
    pub fn decode(self) -> Result<Change> {
        let value = match &self.value {
            Some(text) => Some(sql::decode_value(&self.key, text)?),
            None => None,
        };
        Ok(Change {
            revision: self.revision,
            op: self.op,
            key: self.key,
            value,
        })
    }
}

/// A read of the change feed restricted to some kinds ([`Store::changes_of_kinds`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindChanges {
    /// The changes of the requested kinds, oldest first.
    pub changes: Vec<RawChange>,
    /// The read covered every revision up to this one, of any kind: the `after` of the next
    /// read. Equal to `after` when the feed holds nothing newer (or when `pruned`).
    pub through: i64,
    /// The feed no longer holds the revision right after `after`: entries the caller has not
    /// seen were pruned, so it must re-list (a filtered read cannot show this as a gap).
    /// `changes` is then empty.
    pub pruned: bool,
}

/// The store's domain errors; driver errors are translated at the boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} was changed concurrently (revision mismatch)")]
    Conflict(String),
    #[error("invalid continue token")]
    InvalidToken,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store error: {0}")]
    Internal(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &Key) -> Result<Option<Stored>>;

    /// Creates the resource; `AlreadyExists` if it is there. Returns the new revision.
    async fn create(&self, key: &Key, value: &Value) -> Result<i64>;

    /// Creates or replaces under `precondition`. Returns the new revision.
    async fn put(&self, key: &Key, value: &Value, precondition: Precondition) -> Result<i64>;

    /// Deletes under `precondition`; `NotFound` if absent.
    async fn delete(&self, key: &Key, precondition: Precondition) -> Result<()>;

    /// Deletes every resource of `kind` in `namespace` whose name starts with `name_prefix`
    /// (an entity's events). Returns how many were deleted.
    async fn delete_prefix(&self, kind: &str, namespace: &str, name_prefix: &str) -> Result<u64>;

    async fn list(&self, query: &ListQuery) -> Result<Page>;

    /// How many resources of any kind live in `namespace` (for "namespace is not empty").
    async fn count_in_namespace(&self, namespace: &str) -> Result<u64>;

    /// Applies several writes atomically: all or none. Used by bootstrap and by callers that
    /// must never half-apply.
    async fn put_all(&self, items: &[(Key, Value)]) -> Result<()>;

    /// Applies each conditional write on its own terms, in one transaction: a write whose
    /// precondition fails (`Conflict`, `NotFound`, `AlreadyExists` in its slot of the answer)
    /// leaves the others standing. Returns one outcome per item, in order: the new revision or
    /// why that write was skipped. `Err` (and nothing written) only when the transaction
    /// itself failed. For writers that group many small compare-and-set writes into one
    /// transaction (round-robin claims).
    async fn put_each(&self, items: &[(Key, Value, Precondition)]) -> Result<Vec<Result<i64>>>;

    /// Deletes those of `keys` that exist, atomically (all or none); missing keys are skipped
    /// (listing a key twice deletes it once). Each deletion gets its own revision and
    /// change-feed entry. Returns how many were deleted. For writers that batch
    /// many small deletions into one transaction (the in-process queue's acknowledgements).
    async fn delete_all(&self, keys: &[Key]) -> Result<u64>;

    /// The current (highest) revision.
    async fn revision(&self) -> Result<i64>;

    /// Changes with a revision greater than `after`, oldest first, at most `limit` (0 means
    /// [`DEFAULT_PAGE_SIZE`]): every revision, with values as [`Change::value`] says. Empty
    /// when there is nothing newer.
    async fn changes_since(&self, after: i64, limit: usize) -> Result<Vec<Change>>;

    /// The changes of `kinds` with a revision greater than `after`, oldest first, at most
    /// `limit` (0 means [`DEFAULT_PAGE_SIZE`]), values unparsed. Entries of other kinds are
    /// skipped inside the store, so a follower of a few kinds costs nothing per event written.
    /// Because the result skips revisions, the follower continues after
    /// [`KindChanges::through`] and learns of pruning from [`KindChanges::pruned`], not from a
    /// gap. Consistent like `changes_since`: nothing at or below `through` commits later.
    /// A `Put` that a later write replaced is skipped too (the entry that replaced it is
    /// returned at its revision), so every returned `Put` has its value.
    async fn changes_of_kinds(
        &self,
        after: i64,
        kinds: &[&str],
        limit: usize,
    ) -> Result<KindChanges>;

    /// Forgets change-feed entries with a revision lower than `before_revision` (resources and
    /// the current revision are untouched). Returns how many entries were removed. The backend
    /// calls it periodically so the feed keeps a bounded window; followers that fall behind it
    /// see a gap and re-list.
    async fn prune_changes(&self, before_revision: i64) -> Result<u64>;

    /// Resolves when a change with revision greater than `after` may exist (a wake-up, not a
    /// guarantee: callers then read `changes_since`). Implementations wake within about a
    /// second at most even without a notification.
    async fn wait_for_change(&self, after: i64);

    /// Checks the connection (for `/health`).
    async fn ping(&self) -> Result<()>;
}
