//! The embedded store: one SQLite file (the default under `--state-dir`), for a single backend
//! process. SQLite allows one writer at a time, so every write goes through a dedicated pool of
//! one connection and runs in a `BEGIN IMMEDIATE` transaction that allocates its revisions from
//! the `store_revision` row, writes `resources` and appends to `changes` together; readers use a
//! separate pool and, thanks to WAL, never wait for the writer. `wait_for_change` is woken by
//! this process's own commits and polls the revision for anyone else writing the file.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous, SqliteTransactionManager,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction, TransactionManager};

use crate::sql::{self, RevisionSignal};
use crate::{
    Change, ChangeOp, Key, KindChanges, ListQuery, Page, Precondition, RawChange, Result, Store,
    StoreError, Stored,
};

/// How long a statement waits for a lock held by another connection (another process, or a
/// checkpoint) before failing with `Unavailable`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The writer connection's page cache (`PRAGMA cache_size`; negative: KiB, filled only as pages
/// are touched): room for the dirty pages of a large event batch, and for the pages of the
/// event rows an upsert reads (10,000 agents keep ~200,000 events, ~400 MiB; 32 MiB gave ingest
/// p99 669–728 ms in `bench/scale.sh`, 256 MiB 545 ms).
const WRITER_CACHE_SIZE: &str = "-262144";
/// Concurrent readers. WAL readers do not block each other or the writer; a handful covers the
/// API and the followers without one thread per request.
const READER_CONNECTIONS: u32 = 4;
/// How often the checkpointer copies the WAL's new pages into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// A WAL this many pages long (256 MiB at 4 KiB pages) is checkpointed in `RESTART` mode,
/// which waits for the writer and makes the next write start the WAL over: a fallback for
/// when passive checkpoints never see a quiet moment to finish in.
const WAL_RESTART_PAGES: i64 = 65_536;

pub struct SqliteStore {
    /// Serves every read. Equal to `writer` for an in-memory database, which exists only
    /// inside its one connection.
    readers: SqlitePool,
    /// The only connection that writes. Writers queue for it in the pool (in arrival order)
    /// instead of spinning in SQLite's busy handler against each other.
    writer: SqlitePool,
    /// The newest committed revision this instance knows of; `wait_for_change` waits on it.
    signal: RevisionSignal,
    /// How often `wait_for_change` reads the revision itself when nothing woke it.
    poll_interval: Duration,
    /// The background checkpointer of a file database (stopped with the store).
    checkpointer: Option<AbortOnDrop>,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SqliteStore {
    /// Opens (creating it and its parent directory if needed) the database file at `path` and
    /// applies pending migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore> {
        let subject = format!("sqlite database {}", path.display());
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            tokio::fs::create_dir_all(parent).await.map_err(|err| {
                StoreError::Unavailable(format!("{subject}: creating {}: {err}", parent.display()))
            })?;
        }
        // WAL lets readers run beside the writer. `synchronous = NORMAL` is the usual pairing:
        // a commit survives a crash of the process and the file is never corrupted, but the
        // last commits may be lost on power failure; a FULL fsync per event write is not worth it.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // The writer commits batches of hundreds of events: with SQLite's default 2 MiB page
        // cache a batch spilled dirty pages to the WAL mid-transaction, and multi-row
        // statements spilled their statement journal to a temporary file. Its own larger
        // cache (filled only as pages are touched) and in-memory temporaries avoid both.
        //
        // Checkpoints (copying the WAL's pages into the database file, with its fsyncs) run on
        // a connection of their own ([`checkpoint_loop`]) instead of inside whichever commit
        // crossed SQLite's 1,000-page threshold: with hundreds of thousands of events stored,
        // such a commit stalled every event behind it for up to a second.
        let writer_options = options
            .clone()
            .pragma("cache_size", WRITER_CACHE_SIZE)
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", "0");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(writer_options)
            .await
            .map_err(|err| sql::translate(&subject, err))?;
        // Migrate before any reader connects, so no reader sees a half-created schema.
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|err| sql::translate(&subject, err.into()))?;
        let checkpoints = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(|err| sql::translate(&subject, err))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READER_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|err| sql::translate(&subject, err))?;
        let mut store = SqliteStore::from_pools(readers, writer).await?;
        store.checkpointer = Some(AbortOnDrop(tokio::spawn(checkpoint_loop(checkpoints))));
        Ok(store)
    }

    /// A private, empty database that lives as long as the store (for tests and tools). It is
    /// one connection that never closes: an in-memory database disappears with its connection.
    pub async fn open_in_memory() -> Result<SqliteStore> {
        let subject = "in-memory sqlite database";
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(|err| sql::translate(&subject, err))?
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|err| sql::translate(&subject, err))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|err| sql::translate(&subject, err.into()))?;
        SqliteStore::from_pools(pool.clone(), pool).await
    }

    async fn from_pools(readers: SqlitePool, writer: SqlitePool) -> Result<SqliteStore> {
        let mut store = SqliteStore {
            readers,
            writer,
            signal: RevisionSignal::new(0),
            poll_interval: sql::DEFAULT_CHANGE_POLL_INTERVAL,
            checkpointer: None,
        };
        let current = store.revision().await?;
        store.signal = RevisionSignal::new(current);
        Ok(store)
    }

    /// Changes how often `wait_for_change` polls when nothing woke it (default 1 s). Tests set
    /// it long to prove that wake-ups come from writes, not from polling.
    pub fn with_change_poll_interval(mut self, interval: Duration) -> SqliteStore {
        self.poll_interval = interval;
        self
    }

    /// Takes the write lock: `BEGIN IMMEDIATE` acquires SQLite's write lock at once, so a
    /// transaction never reads under a shared lock and then fails to upgrade it (which busy
    /// waiting cannot resolve) if another process writes the file.
    ///
    /// sqlx creates the transaction object one await after its `BEGIN` ran: a write whose
    /// future is dropped right there (a caller's timeout) leaves the writer connection inside
    /// a transaction nobody will end, and every later `BEGIN IMMEDIATE` fails. Such a
    /// transaction has run nothing but `BEGIN`, so rolling it back loses nothing.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        match self.writer.begin_with("BEGIN IMMEDIATE").await {
            Err(sqlx::Error::InvalidSavePointStatement) => {
                tracing::warn!("the store's writer connection was left inside an abandoned transaction; rolling it back");
                let mut conn = self
                    .writer
                    .acquire()
                    .await
                    .map_err(|err| sql::translate(&"begin write", err))?;
                <SqliteTransactionManager as TransactionManager>::rollback(&mut *conn)
                    .await
                    .map_err(|err| sql::translate(&"begin write", err))?;
                drop(conn);
                self.writer
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(|err| sql::translate(&"begin write", err))
            }
            other => other.map_err(|err| sql::translate(&"begin write", err)),
        }
    }

    /// Commits `outcome`'s transaction (or rolls it back on error) and wakes waiters with the
    /// last revision it wrote.
    async fn finish<T>(
        &self,
        tx: Transaction<'static, Sqlite>,
        outcome: Result<Written<T>>,
    ) -> Result<T> {
        match outcome {
            Ok(written) => {
                tx.commit()
                    .await
                    .map_err(|err| sql::translate(&"commit", err))?;
                if let Some(revision) = written.last_revision {
                    self.signal.observe(revision);
                }
                Ok(written.value)
            }
            Err(err) => {
                // Explicit, so the writer connection is clean before the next writer gets it;
                // a failed rollback is superseded by `err` and sqlx discards the connection.
                let _ = tx.rollback().await;
                Err(err)
            }
        }
    }
}

/// What a write transaction produced, and the last revision it allocated (`None`: it changed
/// nothing, so there is nothing to wake anyone for).
struct Written<T> {
    value: T,
    last_revision: Option<i64>,
}

/// Allocates `count` consecutive revisions and returns the first. Runs inside the write
/// transaction, so a rollback returns them and the sequence stays dense.
async fn allocate_revisions(conn: &mut SqliteConnection, count: i64) -> Result<i64> {
    let last: i64 = sqlx::query_scalar(
        "UPDATE store_revision SET revision = revision + ? WHERE id = 1 RETURNING revision",
    )
    .bind(count)
    .fetch_one(&mut *conn)
    .await
    .map_err(|err| sql::translate(&"allocate revision", err))?;
    Ok(last - count + 1)
}

async fn current_revision_of(conn: &mut SqliteConnection, key: &Key) -> Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT revision FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
    )
    .bind(&key.kind)
    .bind(&key.namespace)
    .bind(&key.name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|err| sql::translate(key, err))
}

/// Writes the row and its change-feed entry at `revision`.
async fn upsert(
    conn: &mut SqliteConnection,
    key: &Key,
    value_text: &str,
    revision: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO resources (kind, namespace, name, value, revision) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (kind, namespace, name) DO UPDATE SET value = excluded.value, revision = excluded.revision",
    )
    .bind(&key.kind)
    .bind(&key.namespace)
    .bind(&key.name)
    .bind(value_text)
    .bind(revision)
    .execute(&mut *conn)
    .await
    .map_err(|err| sql::translate(key, err))?;
    record_change(conn, revision, ChangeOp::Put, key).await
}

/// Appends the change-feed entry of a write (no value: see [`sql::CHANGES_WITH_VALUES`]).
async fn record_change(
    conn: &mut SqliteConnection,
    revision: i64,
    op: ChangeOp,
    key: &Key,
) -> Result<()> {
    sqlx::query("INSERT INTO changes (revision, op, kind, namespace, name) VALUES (?, ?, ?, ?, ?)")
        .bind(revision)
        .bind(sql::op_text(op))
        .bind(&key.kind)
        .bind(&key.namespace)
        .bind(&key.name)
        .execute(&mut *conn)
        .await
        .map_err(|err| sql::translate(key, err))?;
    Ok(())
}

async fn put_in(
    conn: &mut SqliteConnection,
    key: &Key,
    value_text: &str,
    precondition: Precondition,
) -> Result<Written<i64>> {
    let current = current_revision_of(conn, key).await?;
    sql::check_precondition(key, current, precondition)?;
    let revision = allocate_revisions(conn, 1).await?;
    upsert(conn, key, value_text, revision).await?;
    Ok(Written {
        value: revision,
        last_revision: Some(revision),
    })
}

/// `put_each` inside the writer's transaction: one read of the keys' revisions, then the
/// accepted writes as one `put_all` (a handful of statements for the whole batch).
/// Checkpoints the WAL every [`CHECKPOINT_INTERVAL`] on its own connection, so no commit waits
/// for one. `PASSIVE` never blocks the writer or readers; a WAL that grew past
/// [`WAL_RESTART_PAGES`] anyway (writes so steady that a passive checkpoint never finishes
/// before new pages arrive, so the WAL is never started over) gets a `RESTART` checkpoint,
/// which waits for the writer's current transaction. Runs until the store is dropped; errors
/// (a busy database) are retried at the next tick.
async fn checkpoint_loop(pool: SqlitePool) {
    let mut ticker = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let passive: std::result::Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&pool)
                .await;
        match passive {
            Ok((_, wal_pages, _)) if wal_pages >= WAL_RESTART_PAGES => {
                if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(%err, wal_pages, "restarting the store's WAL failed");
                }
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(%err, "store checkpoint failed; retrying"),
        }
    }
}

async fn put_each_in(
    conn: &mut SqliteConnection,
    items: Vec<(&Key, String, Precondition)>,
) -> Result<Written<Vec<Result<i64>>>> {
    let current = revisions_of(conn, &sql::PutEachPlan::keys(&items)).await?;
    let plan = sql::PutEachPlan::new(items, current);
    let last_revision = match plan.writes.is_empty() {
        true => None,
        false => put_all_in(conn, &plan.writes).await?.last_revision,
    };
    Ok(Written {
        value: plan.outcomes(last_revision),
        last_revision,
    })
}

/// Appends ` WHERE (kind, namespace, name) IN (VALUES …)` for `keys` (a chunk of at most
/// [`sql::MAX_ROWS_PER_INSERT`]).
fn push_keys_in<K: std::borrow::Borrow<Key>>(query: &mut QueryBuilder<'_, Sqlite>, keys: &[K]) {
    query.push(" WHERE (kind, namespace, name) IN (");
    query.push_values(keys, |mut row, key| {
        let key = key.borrow();
        row.push_bind(key.kind.clone())
            .push_bind(key.namespace.clone())
            .push_bind(key.name.clone());
    });
    query.push(")");
}

/// The current revisions of those of `keys` that exist.
async fn revisions_of(conn: &mut SqliteConnection, keys: &[&Key]) -> Result<HashMap<Key, i64>> {
    let subject = format!("revisions of {} keys", keys.len());
    let mut revisions = HashMap::with_capacity(keys.len());
    let mut offset = 0;
    for rows in sql::chunk_sizes(keys.len()) {
        let chunk = &keys[offset..offset + rows];
        offset += rows;
        let mut select =
            QueryBuilder::<Sqlite>::new("SELECT kind, namespace, name, revision FROM resources");
        push_keys_in(&mut select, chunk);
        let found = select
            .build()
            .fetch_all(&mut *conn)
            .await
            .map_err(|err| sql::translate(&subject, err))?;
        for row in found {
            let key = Key::new(
                row.get::<&str, _>(0),
                row.get::<&str, _>(1),
                row.get::<&str, _>(2),
            );
            revisions.insert(key, row.get::<i64, _>(3));
        }
    }
    Ok(revisions)
}

async fn create_in(
    conn: &mut SqliteConnection,
    key: &Key,
    value_text: &str,
) -> Result<Written<i64>> {
    if current_revision_of(conn, key).await?.is_some() {
        return Err(StoreError::AlreadyExists(key.to_string()));
    }
    let revision = allocate_revisions(conn, 1).await?;
    upsert(conn, key, value_text, revision).await?;
    Ok(Written {
        value: revision,
        last_revision: Some(revision),
    })
}

async fn delete_in(
    conn: &mut SqliteConnection,
    key: &Key,
    precondition: Precondition,
) -> Result<Written<()>> {
    let current = current_revision_of(conn, key).await?;
    if current.is_none() {
        return Err(StoreError::NotFound(key.to_string()));
    }
    sql::check_precondition(key, current, precondition)?;
    let revision = allocate_revisions(conn, 1).await?;
    sqlx::query("DELETE FROM resources WHERE kind = ? AND namespace = ? AND name = ?")
        .bind(&key.kind)
        .bind(&key.namespace)
        .bind(&key.name)
        .execute(&mut *conn)
        .await
        .map_err(|err| sql::translate(key, err))?;
    record_change(conn, revision, ChangeOp::Delete, key).await?;
    Ok(Written {
        value: (),
        last_revision: Some(revision),
    })
}

/// Appends `AND name >= prefix [AND name < successor]`: the index-friendly exact prefix range.
fn push_name_prefix(query: &mut QueryBuilder<'_, Sqlite>, prefix: &str) {
    query.push(" AND name >= ").push_bind(prefix.to_owned());
    if let Some(upper) = sql::prefix_upper_bound(prefix) {
        query.push(" AND name < ").push_bind(upper);
    }
}

async fn delete_prefix_in(
    conn: &mut SqliteConnection,
    kind: &str,
    namespace: &str,
    name_prefix: &str,
) -> Result<Written<u64>> {
    let subject = format!("{kind} in {namespace:?} with prefix {name_prefix:?}");
    // Under the write lock nothing else changes `resources`, so the rows logged here are
    // exactly the rows deleted below; each gets its own revision, in name order, after `base`.
    let base: i64 = sqlx::query_scalar("SELECT revision FROM store_revision WHERE id = 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| sql::translate(&subject, err))?;
    let push_rows = |query: &mut QueryBuilder<'_, Sqlite>| {
        query
            .push(" WHERE kind = ")
            .push_bind(kind.to_owned())
            .push(" AND namespace = ")
            .push_bind(namespace.to_owned());
        push_name_prefix(query, name_prefix);
    };
    let deleted = log_and_delete(conn, &subject, base, "name", push_rows).await?;
    Ok(Written {
        value: deleted as u64,
        last_revision: (deleted > 0).then_some(base + deleted),
    })
}

/// Logs a deletion of every `resources` row `push_rows` selects (a `WHERE` clause) — revisions
/// `base + 1…` in `order` — deletes those rows and allocates the revisions. Under the write
/// lock nothing else changes `resources` in between, so the rows logged are exactly the rows
/// deleted. Returns how many.
async fn log_and_delete(
    conn: &mut SqliteConnection,
    subject: &str,
    base: i64,
    order: &str,
    push_rows: impl Fn(&mut QueryBuilder<'_, Sqlite>),
) -> Result<i64> {
    let mut log = QueryBuilder::<Sqlite>::new(
        "INSERT INTO changes (revision, op, kind, namespace, name, value) SELECT ",
    );
    log.push_bind(base).push(format!(
        " + ROW_NUMBER() OVER (ORDER BY {order}), 'delete', kind, namespace, name, NULL FROM resources"
    ));
    push_rows(&mut log);
    let logged = log
        .build()
        .execute(&mut *conn)
        .await
        .map_err(|err| sql::translate(&subject, err))?
        .rows_affected();
    if logged == 0 {
        return Ok(0);
    }
    let mut delete = QueryBuilder::<Sqlite>::new("DELETE FROM resources");
    push_rows(&mut delete);
    let deleted = delete
        .build()
        .execute(&mut *conn)
        .await
        .map_err(|err| sql::translate(&subject, err))?
        .rows_affected();
    if deleted != logged {
        return Err(StoreError::Internal(format!(
            "{subject}: logged {logged} deletions but deleted {deleted} rows"
        )));
    }
    let count = i64::try_from(deleted)
        .map_err(|_| StoreError::Internal(format!("{subject}: too many rows")))?;
    let first = allocate_revisions(conn, count).await?;
    debug_assert_eq!(first, base + 1);
    Ok(count)
}

/// [`Store::delete_all`] inside the write transaction, a chunk of keys at a time: under the
/// write lock the rows logged are exactly the rows deleted next (as in [`delete_prefix_in`]).
async fn delete_all_in(conn: &mut SqliteConnection, keys: &[Key]) -> Result<Written<u64>> {
    let subject = format!("delete_all of {} keys", keys.len());
    let mut base: i64 = sqlx::query_scalar("SELECT revision FROM store_revision WHERE id = 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| sql::translate(&subject, err))?;
    let first = base;
    let mut offset = 0;
    for rows in sql::chunk_sizes(keys.len()) {
        let chunk = &keys[offset..offset + rows];
        offset += rows;
        let push_rows = |query: &mut QueryBuilder<'_, Sqlite>| push_keys_in(query, chunk);
        base += log_and_delete(conn, &subject, base, "kind, namespace, name", push_rows).await?;
    }
    let total = base - first;
    Ok(Written {
        value: total as u64,
        last_revision: (total > 0).then_some(base),
    })
}

async fn put_all_in(conn: &mut SqliteConnection, items: &[(&Key, String)]) -> Result<Written<()>> {
    let count = i64::try_from(items.len())
        .map_err(|_| StoreError::Internal("put_all: too many items".to_owned()))?;
    let first = allocate_revisions(conn, count).await?;
    // Multi-row statements: every statement is a round trip to sqlx's SQLite worker thread,
    // and one per row pair made a batch of events cost two thread hand-offs per event.
    let mut offset = 0;
    for rows in sql::chunk_sizes(items.len()) {
        let chunk = &items[offset..offset + rows];
        let chunk_first = first + offset as i64;
        offset += rows;
        let subject = format!("put_all of {count} items");
        // Rows of one statement are applied in order, so a key written twice in a batch ends
        // with its last value and revision, as with one upsert per row.
        let mut upsert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO resources (kind, namespace, name, value, revision) ",
        );
        upsert.push_values(
            chunk.iter().zip(chunk_first..),
            |mut row, ((key, value_text), revision)| {
                row.push_bind(key.kind.as_str())
                    .push_bind(key.namespace.as_str())
                    .push_bind(key.name.as_str())
                    .push_bind(value_text.as_str())
                    .push_bind(revision);
            },
        );
        upsert.push(
            " ON CONFLICT (kind, namespace, name) \
             DO UPDATE SET value = excluded.value, revision = excluded.revision",
        );
        upsert
            .build()
            .execute(&mut *conn)
            .await
            .map_err(|err| sql::translate(&subject, err))?;
        let mut log = QueryBuilder::<Sqlite>::new(
            "INSERT INTO changes (revision, op, kind, namespace, name) ",
        );
        log.push_values(
            chunk.iter().zip(chunk_first..),
            |mut row, ((key, _), revision)| {
                row.push_bind(revision)
                    .push_bind(sql::op_text(ChangeOp::Put))
                    .push_bind(key.kind.as_str())
                    .push_bind(key.namespace.as_str())
                    .push_bind(key.name.as_str());
            },
        );
        log.build()
            .execute(&mut *conn)
            .await
            .map_err(|err| sql::translate(&subject, err))?;
    }
    Ok(Written {
        value: (),
        last_revision: Some(first + count - 1),
    })
}

fn stored_from_row(row: &SqliteRow) -> Result<Stored> {
    let field = |err| sql::translate(&"resources row", err);
    let key = Key {
        kind: row.try_get("kind").map_err(field)?,
        namespace: row.try_get("namespace").map_err(field)?,
        name: row.try_get("name").map_err(field)?,
    };
    let value = sql::decode_value(&key, row.try_get("value").map_err(field)?)?;
    Ok(Stored {
        value,
        revision: row.try_get("revision").map_err(field)?,
        key,
    })
}

fn raw_change_from_row(row: &SqliteRow) -> Result<RawChange> {
    let field = |err| sql::translate(&"changes row", err);
    Ok(RawChange {
        revision: row.try_get("revision").map_err(field)?,
        op: sql::parse_op(row.try_get("op").map_err(field)?)?,
        key: Key {
            kind: row.try_get("kind").map_err(field)?,
            namespace: row.try_get("namespace").map_err(field)?,
            name: row.try_get("name").map_err(field)?,
        },
        value: row.try_get("value").map_err(field)?,
    })
}

fn change_from_row(row: &SqliteRow) -> Result<Change> {
    let field = |err| sql::translate(&"changes row", err);
    let key = Key {
        kind: row.try_get("kind").map_err(field)?,
        namespace: row.try_get("namespace").map_err(field)?,
        name: row.try_get("name").map_err(field)?,
    };
    let value = match row.try_get::<Option<&str>, _>("value").map_err(field)? {
        Some(text) => Some(sql::decode_value(&key, text)?),
        None => None,
    };
    Ok(Change {
        revision: row.try_get("revision").map_err(field)?,
        op: sql::parse_op(row.try_get("op").map_err(field)?)?,
        key,
        value,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &Key) -> Result<Option<Stored>> {
        let row = sqlx::query(
            "SELECT kind, namespace, name, value, revision FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
        )
        .bind(&key.kind)
        .bind(&key.namespace)
        .bind(&key.name)
        .fetch_optional(&self.readers)
        .await
        .map_err(|err| sql::translate(key, err))?;
        row.as_ref().map(stored_from_row).transpose()
    }

    async fn create(&self, key: &Key, value: &Value) -> Result<i64> {
        let value_text = sql::encode_value(value);
        let mut tx = self.begin_write().await?;
        let outcome = create_in(&mut tx, key, &value_text).await;
        self.finish(tx, outcome).await
    }

    async fn put(&self, key: &Key, value: &Value, precondition: Precondition) -> Result<i64> {
        let value_text = sql::encode_value(value);
        let mut tx = self.begin_write().await?;
        let outcome = put_in(&mut tx, key, &value_text, precondition).await;
        self.finish(tx, outcome).await
    }

    async fn delete(&self, key: &Key, precondition: Precondition) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let outcome = delete_in(&mut tx, key, precondition).await;
        self.finish(tx, outcome).await
    }

    async fn delete_prefix(&self, kind: &str, namespace: &str, name_prefix: &str) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let outcome = delete_prefix_in(&mut tx, kind, namespace, name_prefix).await;
        self.finish(tx, outcome).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Page> {
        let page_size = sql::page_size(query.limit);
        let after = query
            .continue_token
            .as_deref()
            .map(sql::decode_continue_token)
            .transpose()?;
        let mut select = QueryBuilder::<Sqlite>::new(
            "SELECT kind, namespace, name, value, revision FROM resources WHERE kind = ",
        );
        select.push_bind(query.kind.clone());
        if let Some(namespace) = &query.namespace {
            select
                .push(" AND namespace = ")
                .push_bind(namespace.clone());
        }
        if let Some(prefix) = query
            .name_prefix
            .as_deref()
            .filter(|prefix| !prefix.is_empty())
        {
            push_name_prefix(&mut select, prefix);
        }
        // Spelled so that SQLite seeks the primary key to the cursor: with the namespace fixed,
        // a plain `name > ?` range; a row-value comparison made it scan from the first row,
        // so each page cost as much as all pages before it.
        match (after, &query.namespace) {
            (Some((_, name)), Some(_)) => {
                select.push(" AND name > ").push_bind(name);
            }
            (Some((namespace, name)), None) => {
                // Without a namespace equality, this row-value form does seek the primary key.
                select
                    .push(" AND (namespace, name) > (")
                    .push_bind(namespace)
                    .push(", ")
                    .push_bind(name)
                    .push(")");
            }
            (None, _) => {}
        }
        // One row more than the page tells whether another page follows.
        select
            .push(" ORDER BY namespace, name LIMIT ")
            .push_bind(sql::sql_limit(page_size.saturating_add(1)));
        let rows = select
            .build()
            .fetch_all(&self.readers)
            .await
            .map_err(|err| sql::translate(&query.kind, err))?;
        let items = rows
            .iter()
            .take(page_size)
            .map(stored_from_row)
            .collect::<Result<Vec<_>>>()?;
        let continue_token = match items.last() {
            Some(last) if rows.len() > page_size => Some(sql::encode_continue_token(
                &last.key.namespace,
                &last.key.name,
            )),
            _ => None,
        };
        Ok(Page {
            items,
            continue_token,
        })
    }

    async fn count_in_namespace(&self, namespace: &str) -> Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resources WHERE namespace = ?")
            .bind(namespace)
            .fetch_one(&self.readers)
            .await
            .map_err(|err| sql::translate(&format!("namespace {namespace:?}"), err))?;
        Ok(count.unsigned_abs())
    }

    async fn put_all(&self, items: &[(Key, Value)]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let encoded: Vec<(&Key, String)> = items
            .iter()
            .map(|(key, value)| (key, sql::encode_value(value)))
            .collect();
        let mut tx = self.begin_write().await?;
        let outcome = put_all_in(&mut tx, &encoded).await;
        self.finish(tx, outcome).await
    }

    async fn put_each(&self, items: &[(Key, Value, Precondition)]) -> Result<Vec<Result<i64>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let encoded: Vec<(&Key, String, Precondition)> = items
            .iter()
            .map(|(key, value, precondition)| (key, sql::encode_value(value), *precondition))
            .collect();
        let mut tx = self.begin_write().await?;
        let outcome = put_each_in(&mut tx, encoded).await;
        self.finish(tx, outcome).await
    }

    async fn delete_all(&self, keys: &[Key]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let outcome = delete_all_in(&mut tx, keys).await;
        self.finish(tx, outcome).await
    }

    async fn revision(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT revision FROM store_revision WHERE id = 1")
            .fetch_one(&self.readers)
            .await
            .map_err(|err| sql::translate(&"revision", err))
    }

    async fn changes_since(&self, after: i64, limit: usize) -> Result<Vec<Change>> {
        let rows = sqlx::query(&format!(
            "SELECT {} WHERE c.revision > ? ORDER BY c.revision LIMIT ?",
            sql::CHANGES_WITH_VALUES
        ))
        .bind(after)
        .bind(sql::sql_limit(sql::page_size(limit)))
        .fetch_all(&self.readers)
        .await
        .map_err(|err| sql::translate(&"change feed", err))?;
        rows.iter().map(change_from_row).collect()
    }

    async fn changes_of_kinds(
        &self,
        after: i64,
        kinds: &[&str],
        limit: usize,
    ) -> Result<KindChanges> {
        // One read transaction, so the head, the rows and the gap check see one snapshot.
        let mut tx = self
            .readers
            .begin()
            .await
            .map_err(|err| sql::translate(&"change feed", err))?;
        let head: i64 = sqlx::query_scalar("SELECT revision FROM store_revision WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(|err| sql::translate(&"change feed", err))?;
        if head <= after {
            return Ok(sql::nothing_after(after));
        }
        let page_size = sql::page_size(limit);
        let mut changes = Vec::new();
        if !kinds.is_empty() {
            let mut select = QueryBuilder::<Sqlite>::new(format!(
                "SELECT {} WHERE {} AND c.revision > ",
                sql::CHANGES_WITH_VALUES,
                sql::NOT_SUPERSEDED
            ));
            select
                .push_bind(after)
                .push(" AND c.revision <= ")
                .push_bind(head)
                .push(" AND c.kind IN (");
            let mut separated = select.separated(", ");
            for kind in kinds {
                separated.push_bind((*kind).to_owned());
            }
            select
                .push(") ORDER BY c.revision LIMIT ")
                .push_bind(sql::sql_limit(page_size));
            let rows = select
                .build()
                .fetch_all(&mut *tx)
                .await
                .map_err(|err| sql::translate(&"change feed", err))?;
            changes = rows
                .iter()
                .map(raw_change_from_row)
                .collect::<Result<Vec<_>>>()?;
        }
        let next_kept: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM changes WHERE revision = ?)")
                .bind(after + 1)
                .fetch_one(&mut *tx)
                .await
                .map_err(|err| sql::translate(&"change feed", err))?;
        // Read-only: ending it either way releases the snapshot.
        let _ = tx.rollback().await;
        Ok(sql::kind_changes(
            after, head, page_size, changes, next_kept,
        ))
    }

    async fn prune_changes(&self, before_revision: i64) -> Result<u64> {
        let result = sqlx::query("DELETE FROM changes WHERE revision < ?")
            .bind(before_revision)
            .execute(&self.writer)
            .await
            .map_err(|err| sql::translate(&"prune change feed", err))?;
        Ok(result.rows_affected())
    }

    async fn wait_for_change(&self, after: i64) {
        self.signal
            .wait_past(after, self.poll_interval, || self.revision())
            .await;
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map_err(|err| sql::translate(&"ping", err))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::conformance::Fixture;

    /// A fresh store in its own temporary directory, removed after the case.
    async fn fixture() -> Option<Fixture> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("state/kensa.db"))
            .await
            .expect("open sqlite store")
            .with_change_poll_interval(crate::conformance::LONG_POLL_INTERVAL);
        Some(Fixture::new(Arc::new(store), async move { drop(dir) }))
    }

    crate::store_conformance_tests!(fixture);

    /// The same suite on the in-memory variant, whose reads and writes share one connection.
    mod in_memory {
        use super::*;

        async fn fixture() -> Option<Fixture> {
            let store = SqliteStore::open_in_memory()
                .await
                .expect("open in-memory store")
                .with_change_poll_interval(crate::conformance::LONG_POLL_INTERVAL);
            Some(Fixture::new(Arc::new(store), async {}))
        }

        crate::store_conformance_tests!(fixture);
    }

    #[tokio::test]
    async fn reopening_keeps_resources_and_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kensa.db");
        let key = Key::new("checks", "default", "web");
        let revision = {
            let store = SqliteStore::open(&path).await.unwrap();
            store
                .create(&key, &serde_json::json!({"command": "true"}))
                .await
                .unwrap()
        };
        let store = SqliteStore::open(&path).await.unwrap();
        let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.readers)
            .await
            .unwrap();
        assert_eq!(journal_mode, "wal");
        assert_eq!(store.revision().await.unwrap(), revision);
        assert_eq!(store.get(&key).await.unwrap().unwrap().revision, revision);
        assert_eq!(
            store
                .put(&key, &serde_json::json!({}), Precondition::None)
                .await
                .unwrap(),
            revision + 1
        );
    }

    /// A database written by a build before migration 0002 (a WITHOUT ROWID `resources`
    /// table) opens with every resource, revision and listing order intact, and takes writes.
    #[tokio::test]
    async fn a_database_from_before_the_rowid_migration_keeps_its_resources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kensa.db");
        {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&path)
                        .create_if_missing(true),
                )
                .await
                .unwrap();
            let all = sqlx::migrate!("./migrations/sqlite");
            let first_only = sqlx::migrate::Migrator {
                migrations: std::borrow::Cow::Owned(all.migrations[..1].to_vec()),
                ..all
            };
            first_only.run(&pool).await.unwrap();
            for (revision, name) in [(1, "web"), (2, "db"), (3, "api")] {
                sqlx::query(
                    "INSERT INTO resources (kind, namespace, name, value, revision) \
                     VALUES ('checks', 'default', ?, ?, ?)",
                )
                .bind(name)
                .bind(format!(r#"{{"command":"check-{name}"}}"#))
                .bind(revision)
                .execute(&pool)
                .await
                .unwrap();
            }
            sqlx::query("UPDATE store_revision SET revision = 3")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }

        let store = SqliteStore::open(&path).await.unwrap();
        let table: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'resources'")
                .fetch_one(&store.readers)
                .await
                .unwrap();
        assert!(!table.contains("WITHOUT ROWID"), "{table}");
        let web = Key::new("checks", "default", "web");
        let stored = store.get(&web).await.unwrap().unwrap();
        assert_eq!(stored.value, serde_json::json!({"command": "check-web"}));
        assert_eq!(stored.revision, 1);
        let listed = store
            .list(&ListQuery {
                kind: "checks".into(),
                namespace: Some("default".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let names: Vec<&str> = listed.items.iter().map(|i| i.key.name.as_str()).collect();
        assert_eq!(names, ["api", "db", "web"]);
        assert_eq!(
            store
                .put(&web, &serde_json::json!({}), Precondition::Revision(1))
                .await
                .unwrap(),
            4
        );
        assert!(matches!(
            store
                .create(&Key::new("checks", "default", "db"), &serde_json::json!({}))
                .await,
            Err(StoreError::AlreadyExists(_))
        ));
    }

    /// Commits no longer checkpoint (the writer's automatic checkpoints are off): the
    /// background checkpointer copies the WAL into the database file while the store is open.
    #[tokio::test]
    async fn the_checkpointer_moves_writes_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kensa.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let empty = std::fs::metadata(&path).unwrap().len();
        let value = serde_json::json!({"output": "x".repeat(2000)});
        for batch in 0..10 {
            let items: Vec<(Key, Value)> = (0..100)
                .map(|i| {
                    let name = format!("agent-{batch}/check-{i}");
                    (Key::new("events", "default", name), value.clone())
                })
                .collect();
            store.put_all(&items).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let size = std::fs::metadata(&path).unwrap().len();
            if size > empty + 2_000_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {size} bytes (empty: {empty})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What a write cancelled right after its `BEGIN` leaves behind (sqlx has run `BEGIN` but
    /// no transaction object exists to end it): the next writes still succeed.
    #[tokio::test]
    async fn writes_survive_a_transaction_abandoned_after_begin() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("kensa.db"))
            .await
            .unwrap();
        let key = Key::new("checks", "default", "web");
        store.create(&key, &serde_json::json!({})).await.unwrap();
        {
            let mut conn = store.writer.acquire().await.unwrap();
            <SqliteTransactionManager as TransactionManager>::begin(&mut *conn, None)
                .await
                .unwrap();
            // Back to the pool inside the transaction.
        }
        let revision = store
            .put(
                &key,
                &serde_json::json!({"after": true}),
                Precondition::None,
            )
            .await
            .expect("a write after the abandoned transaction");
        let stored = store.get(&key).await.unwrap().unwrap();
        assert_eq!(stored.revision, revision);
        assert_eq!(stored.value, serde_json::json!({"after": true}));
        // And it is committed: a reopened store sees it.
        drop(store);
        let store = SqliteStore::open(&dir.path().join("kensa.db"))
            .await
            .unwrap();
        assert_eq!(store.get(&key).await.unwrap().unwrap().revision, revision);
    }

    #[tokio::test]
    async fn in_memory_store_passes_a_round_trip() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        let key = Key::new("checks", "default", "web");
        let revision = store
            .create(&key, &serde_json::json!({"b": 1, "a": 2}))
            .await
            .unwrap();
        let stored = store.get(&key).await.unwrap().unwrap();
        assert_eq!(stored.revision, revision);
        assert_eq!(stored.value.to_string(), r#"{"b":1,"a":2}"#);
        assert_eq!(store.changes_since(0, 0).await.unwrap().len(), 1);
    }
}
