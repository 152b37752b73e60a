//! The scale-out store: PostgreSQL shared by several backends, each following the others'
//! writes through the change feed.
//!
//! Revision order: every write transaction starts by updating the single `store_revision` row
//! (allocating its revisions), which row-locks it until commit. Writers are therefore serialized
//! across all backends, a revision is committed only after every lower one, and a follower that
//! reads `revision > last` can never skip a change that commits later — which a BIGSERIAL (or
//! any sequence) allows, because sequence values are handed out at insert time but become
//! visible in commit order. The price is one write transaction at a time cluster-wide, held for
//! a few local round trips and the commit; writes are configuration changes plus one per event,
//! which that comfortably covers. Because the counter is transactional, a failed write leaves
//! no gap: revisions are dense, as on SQLite.
//!
//! Wake-ups: a write sends `NOTIFY kensa_changes, '<revision>'` inside its transaction (so it is
//! delivered exactly when the commit is visible). Each store keeps one dedicated listener
//! connection feeding its revision signal; `wait_for_change` also polls the revision every second
//! so a notification lost to a reconnect delays a follower by at most that.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, QueryBuilder, Row, Transaction};
use tokio::task::JoinHandle;

use crate::sql::{self, RevisionSignal};
use crate::{
    Change, ChangeOp, Key, KindChanges, ListQuery, Page, Precondition, RawChange, Result, Store,
    StoreError, Stored,
};

/// The NOTIFY channel carrying the revision of each committed write.
const CHANGE_CHANNEL: &str = "kensa_changes";
/// The `application_name` of the listener connection, so operators (and a test) can find it.
const LISTENER_APPLICATION_NAME: &str = "kensa-change-listener";
/// Reads run concurrently; this bounds one backend's share of the server's connections.
const READER_CONNECTIONS: u32 = 8;
/// Writes are serialized by the counter row anyway: a second connection only lets the next
/// writer queue inside the database (saving a round trip) while the current one commits.
/// Waiting writers queue in the pool, so they never take reader connections.
const WRITER_CONNECTIONS: u32 = 2;
/// How long a writer may queue for a connection before the write fails as `Unavailable`; long
/// enough to ride out a burst behind the cluster-wide write order.
const WRITER_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
const READER_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before rebuilding a failed listener connection.
const LISTENER_RETRY_DELAY: Duration = Duration::from_secs(1);

pub struct PostgresStore {
    readers: PgPool,
    writer: PgPool,
    /// The newest committed revision this instance knows of, raised by local commits and by
    /// the listener task; `wait_for_change` waits on it.
    signal: Arc<RevisionSignal>,
    /// How often `wait_for_change` reads the revision itself when nothing woke it.
    poll_interval: Duration,
    /// Follows NOTIFY for as long as the store lives; aborted when it is dropped.
    listener_task: JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.listener_task.abort();
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`), applies pending migrations
    /// (sqlx takes an advisory lock, so backends starting together migrate once) and starts
    /// listening for other backends' writes.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| StoreError::Internal(format!("invalid postgres url: {err}")))?;
        PostgresStore::connect_with_options(options).await
    }

    pub(crate) async fn connect_with_options(options: PgConnectOptions) -> Result<PostgresStore> {
        let options = options.application_name("kensa");
        let subject = format!(
            "postgres database {:?}",
            options.get_database().unwrap_or_default()
        );
        let writer = PgPoolOptions::new()
            .max_connections(WRITER_CONNECTIONS)
            .acquire_timeout(WRITER_ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|err| sql::translate(&subject, err))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&writer)
            .await
            .map_err(|err| sql::translate(&subject, err.into()))?;
        let readers = PgPoolOptions::new()
            .max_connections(READER_CONNECTIONS)
            .acquire_timeout(READER_ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|err| sql::translate(&subject, err))?;
        // The listener gets a pool of its own (one connection, never recycled by age) so it
        // neither holds a reader connection forever nor loses LISTEN to an idle timeout.
        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options.application_name(LISTENER_APPLICATION_NAME));
        let listener = listen(&listener_pool)
            .await
            .map_err(|err| sql::translate(&subject, err))?;
        // Read the revision only after LISTEN: a write committed in between is then either in
        // this read or notified, never neither.
        let current = read_revision(&readers).await?;
        let signal = Arc::new(RevisionSignal::new(current));
        let listener_task = tokio::spawn(follow_notifications(
            listener,
            listener_pool,
            readers.clone(),
            signal.clone(),
        ));
        Ok(PostgresStore {
            readers,
            writer,
            signal,
            poll_interval: sql::DEFAULT_CHANGE_POLL_INTERVAL,
            listener_task,
        })
    }

    /// Changes how often `wait_for_change` polls when nothing woke it (default 1 s). Tests set
    /// it long to prove that wake-ups come from notifications, not from polling.
    pub fn with_change_poll_interval(mut self, interval: Duration) -> PostgresStore {
        self.poll_interval = interval;
        self
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>> {
        self.writer
            .begin()
            .await
            .map_err(|err| sql::translate(&"begin write", err))
    }

    /// Commits `outcome`'s transaction, notifying other backends of its last revision, or
    /// rolls it back on error (explicitly, so the counter row lock is released now rather than
    /// whenever the connection is next used).
    async fn finish<T>(
        &self,
        mut tx: Transaction<'static, Postgres>,
        outcome: Result<Written<T>>,
    ) -> Result<T> {
        match outcome {
            Ok(written) => {
                if let Some(revision) = written.last_revision {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANGE_CHANNEL)
                        .bind(revision.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(|err| sql::translate(&"notify", err))?;
                }
                tx.commit()
                    .await
                    .map_err(|err| sql::translate(&"commit", err))?;
                if let Some(revision) = written.last_revision {
                    self.signal.observe(revision);
                }
                Ok(written.value)
            }
            Err(err) => {
                // A failed rollback is superseded by `err`; sqlx then discards the connection,
                // which ends the transaction and its lock on the server side.
                let _ = tx.rollback().await;
                Err(err)
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANGE_CHANNEL).await?;
    Ok(listener)
}

async fn read_revision(pool: &PgPool) -> Result<i64> {
    sqlx::query_scalar("SELECT revision FROM store_revision")
        .fetch_one(pool)
        .await
        .map_err(|err| sql::translate(&"revision", err))
}

/// Feeds notifications into `signal` for the store's lifetime. After any connection loss it
/// re-listens and then reads the revision, covering whatever was notified while it was away.
async fn follow_notifications(
    mut listener: PgListener,
    listener_pool: PgPool,
    readers: PgPool,
    signal: Arc<RevisionSignal>,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                // Payloads are revisions; anything else (a manual NOTIFY) is only a hint.
                match notification.payload().parse::<i64>() {
                    Ok(revision) => signal.observe(revision),
                    Err(_) => catch_up(&readers, &signal).await,
                }
            }
            // The connection dropped and sqlx re-established it and LISTEN.
            Ok(None) => catch_up(&readers, &signal).await,
            Err(err) => {
                tracing::warn!(%err, "store change listener failed; reconnecting (followers poll meanwhile)");
                drop(listener);
                listener = loop {
                    tokio::time::sleep(LISTENER_RETRY_DELAY).await;
                    match listen(&listener_pool).await {
                        Ok(listener) => break listener,
                        Err(err) => {
                            tracing::warn!(%err, "store change listener could not reconnect")
                        }
                    }
                };
                catch_up(&readers, &signal).await;
            }
        }
    }
}

async fn catch_up(readers: &PgPool, signal: &RevisionSignal) {
    match read_revision(readers).await {
        Ok(revision) => signal.observe(revision),
        Err(err) => {
            tracing::debug!(%err, "store change listener could not read the revision; followers will poll")
        }
    }
}

/// What a write transaction produced, and the last revision it allocated (`None`: it changed
/// nothing, so there is nothing to announce).
struct Written<T> {
    value: T,
    last_revision: Option<i64>,
}

/// Allocates `count` consecutive revisions and returns the first. This update is the write
/// lock (see the module docs): it must be a transaction's first statement, so everything the
/// transaction reads afterwards is read under the lock, with every earlier write committed.
async fn allocate_revisions(conn: &mut PgConnection, count: i64) -> Result<i64> {
    let last: i64 =
        sqlx::query_scalar("UPDATE store_revision SET revision = revision + $1 RETURNING revision")
            .bind(count)
            .fetch_one(&mut *conn)
            .await
            .map_err(|err| sql::translate(&"allocate revision", err))?;
    Ok(last - count + 1)
}

async fn current_revision_of(conn: &mut PgConnection, key: &Key) -> Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT revision FROM resources WHERE kind = $1 AND namespace = $2 AND name = $3",
    )
    .bind(&key.kind)
    .bind(&key.namespace)
    .bind(&key.name)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|err| sql::translate(key, err))
}

/// Writes the row and its change-feed entry at `revision`.
async fn upsert(conn: &mut PgConnection, key: &Key, value_text: &str, revision: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO resources (kind, namespace, name, value, revision) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (kind, namespace, name) DO UPDATE SET value = EXCLUDED.value, revision = EXCLUDED.revision",
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
    conn: &mut PgConnection,
    revision: i64,
    op: ChangeOp,
    key: &Key,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO changes (revision, op, kind, namespace, name) VALUES ($1, $2, $3, $4, $5)",
    )
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
    conn: &mut PgConnection,
    key: &Key,
    value_text: &str,
    precondition: Precondition,
) -> Result<Written<i64>> {
    let revision = allocate_revisions(conn, 1).await?;
    let current = current_revision_of(conn, key).await?;
    sql::check_precondition(key, current, precondition)?;
    upsert(conn, key, value_text, revision).await?;
    Ok(Written {
        value: revision,
        last_revision: Some(revision),
    })
}

/// `put_each` inside one transaction: the revision counter's row is locked first (as every
/// writer does), so one read of the keys' revisions sees the latest committed state; then the
/// accepted writes go as one `put_all`.
async fn put_each_in(
    conn: &mut PgConnection,
    items: Vec<(&Key, String, Precondition)>,
) -> Result<Written<Vec<Result<i64>>>> {
    allocate_revisions(conn, 0).await?;
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

/// The current revisions of those of `keys` that exist.
async fn revisions_of(conn: &mut PgConnection, keys: &[&Key]) -> Result<HashMap<Key, i64>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let kinds: Vec<&str> = keys.iter().map(|key| key.kind.as_str()).collect();
    let namespaces: Vec<&str> = keys.iter().map(|key| key.namespace.as_str()).collect();
    let names: Vec<&str> = keys.iter().map(|key| key.name.as_str()).collect();
    let rows = sqlx::query(
        "SELECT kind, namespace, name, revision FROM resources \
         WHERE (kind, namespace, name) IN \
             (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]))",
    )
    .bind(&kinds)
    .bind(&namespaces)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await
    .map_err(|err| sql::translate(&format!("revisions of {} keys", keys.len()), err))?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let key = Key::new(
                row.get::<&str, _>(0),
                row.get::<&str, _>(1),
                row.get::<&str, _>(2),
            );
            (key, row.get::<i64, _>(3))
        })
        .collect())
}

async fn create_in(conn: &mut PgConnection, key: &Key, value_text: &str) -> Result<Written<i64>> {
    let revision = allocate_revisions(conn, 1).await?;
    if current_revision_of(conn, key).await?.is_some() {
        return Err(StoreError::AlreadyExists(key.to_string()));
    }
    upsert(conn, key, value_text, revision).await?;
    Ok(Written {
        value: revision,
        last_revision: Some(revision),
    })
}

async fn delete_in(
    conn: &mut PgConnection,
    key: &Key,
    precondition: Precondition,
) -> Result<Written<()>> {
    let revision = allocate_revisions(conn, 1).await?;
    let current = current_revision_of(conn, key).await?;
    if current.is_none() {
        return Err(StoreError::NotFound(key.to_string()));
    }
    sql::check_precondition(key, current, precondition)?;
    sqlx::query("DELETE FROM resources WHERE kind = $1 AND namespace = $2 AND name = $3")
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

/// Appends `AND name >= prefix [AND name < successor]`: the index-friendly exact prefix range
/// (bytewise, because the columns are `COLLATE "C"`).
fn push_name_prefix(query: &mut QueryBuilder<'_, Postgres>, prefix: &str) {
    query.push(" AND name >= ").push_bind(prefix.to_owned());
    if let Some(upper) = sql::prefix_upper_bound(prefix) {
        query.push(" AND name < ").push_bind(upper);
    }
}

async fn delete_prefix_in(
    conn: &mut PgConnection,
    kind: &str,
    namespace: &str,
    name_prefix: &str,
) -> Result<Written<u64>> {
    let subject = format!("{kind} in {namespace:?} with prefix {name_prefix:?}");
    // The count is unknown until the delete runs, so lock the counter first and advance it
    // by the count at the end; each deleted row gets its own revision, in name order.
    let base: i64 = sqlx::query_scalar("SELECT revision FROM store_revision FOR UPDATE")
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| sql::translate(&subject, err))?;
    let mut delete =
        QueryBuilder::<Postgres>::new("WITH deleted AS (DELETE FROM resources WHERE kind = ");
    delete
        .push_bind(kind.to_owned())
        .push(" AND namespace = ")
        .push_bind(namespace.to_owned());
    push_name_prefix(&mut delete, name_prefix);
    delete
        .push(
            " RETURNING kind, namespace, name) \
             INSERT INTO changes (revision, op, kind, namespace, name, value) SELECT ",
        )
        .push_bind(base)
        .push(" + row_number() OVER (ORDER BY name), 'delete', kind, namespace, name, NULL FROM deleted");
    let deleted = delete
        .build()
        .execute(&mut *conn)
        .await
        .map_err(|err| sql::translate(&subject, err))?
        .rows_affected();
    deletions_logged(conn, &subject, base, deleted).await
}

/// After a statement deleted `deleted` rows and logged them as revisions `base + 1…` (with the
/// counter locked since `base` was read): advances the counter past them.
async fn deletions_logged(
    conn: &mut PgConnection,
    subject: &str,
    base: i64,
    deleted: u64,
) -> Result<Written<u64>> {
    if deleted == 0 {
        return Ok(Written {
            value: 0,
            last_revision: None,
        });
    }
    let count = i64::try_from(deleted)
        .map_err(|_| StoreError::Internal(format!("{subject}: too many rows")))?;
    allocate_revisions(conn, count).await?;
    Ok(Written {
        value: deleted,
        last_revision: Some(base + count),
    })
}

/// [`Store::delete_all`] inside the write transaction: like [`delete_prefix_in`], the counter
/// is locked first and advanced by the count at the end.
async fn delete_all_in(conn: &mut PgConnection, keys: &[Key]) -> Result<Written<u64>> {
    let subject = format!("delete_all of {} keys", keys.len());
    let base: i64 = sqlx::query_scalar("SELECT revision FROM store_revision FOR UPDATE")
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| sql::translate(&subject, err))?;
    let kinds: Vec<&str> = keys.iter().map(|key| key.kind.as_str()).collect();
    let namespaces: Vec<&str> = keys.iter().map(|key| key.namespace.as_str()).collect();
    let names: Vec<&str> = keys.iter().map(|key| key.name.as_str()).collect();
    let deleted = sqlx::query(
        "WITH deleted AS (DELETE FROM resources r \
         USING (SELECT DISTINCT * FROM UNNEST($1::text[], $2::text[], $3::text[])) AS k(kind, namespace, name) \
         WHERE r.kind = k.kind AND r.namespace = k.namespace AND r.name = k.name \
         RETURNING r.kind, r.namespace, r.name) \
         INSERT INTO changes (revision, op, kind, namespace, name, value) \
         SELECT $4 + row_number() OVER (ORDER BY kind, namespace, name), 'delete', kind, namespace, name, NULL \
         FROM deleted",
    )
    .bind(&kinds)
    .bind(&namespaces)
    .bind(&names)
    .bind(base)
    .execute(&mut *conn)
    .await
    .map_err(|err| sql::translate(&subject, err))?
    .rows_affected();
    deletions_logged(conn, &subject, base, deleted).await
}

async fn put_all_in(conn: &mut PgConnection, items: &[(&Key, String)]) -> Result<Written<()>> {
    let count = i64::try_from(items.len())
        .map_err(|_| StoreError::Internal("put_all: too many items".to_owned()))?;
    let first = allocate_revisions(conn, count).await?;
    let subject = format!("put_all of {count} items");
    // Two statements whatever the batch size (rows as arrays, UNNEST), instead of two round
    // trips per item. One upsert statement may not touch a row twice, so the resources get
    // each key's last value and revision, which is what one upsert per item left behind; the
    // change feed gets every item.
    let mut last_of_key: HashMap<&Key, usize> = HashMap::with_capacity(items.len());
    for (index, (key, _)) in items.iter().enumerate() {
        last_of_key.insert(key, index);
    }
    let mut latest: Vec<usize> = last_of_key.into_values().collect();
    latest.sort_unstable();
    let rows = BatchColumns::of(items, latest.into_iter(), first);
    sqlx::query(
        "INSERT INTO resources (kind, namespace, name, value, revision) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
         ON CONFLICT (kind, namespace, name) \
         DO UPDATE SET value = EXCLUDED.value, revision = EXCLUDED.revision",
    )
    .bind(&rows.kinds)
    .bind(&rows.namespaces)
    .bind(&rows.names)
    .bind(&rows.values)
    .bind(&rows.revisions)
    .execute(&mut *conn)
    .await
    .map_err(|err| sql::translate(&subject, err))?;
    let rows = BatchColumns::of(items, 0..items.len(), first);
    sqlx::query(
        "INSERT INTO changes (revision, op, kind, namespace, name) \
         SELECT revision, 'put', kind, namespace, name \
         FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[]) \
             AS batch (revision, kind, namespace, name)",
    )
    .bind(&rows.revisions)
    .bind(&rows.kinds)
    .bind(&rows.namespaces)
    .bind(&rows.names)
    .execute(&mut *conn)
    .await
    .map_err(|err| sql::translate(&subject, err))?;
    Ok(Written {
        value: (),
        last_revision: Some(first + count - 1),
    })
}

/// Some rows of a `put_all` batch as one array per column, for `UNNEST`; item `index` has
/// revision `first + index`.
struct BatchColumns<'a> {
    kinds: Vec<&'a str>,
    namespaces: Vec<&'a str>,
    names: Vec<&'a str>,
    values: Vec<&'a str>,
    revisions: Vec<i64>,
}

impl<'a> BatchColumns<'a> {
    fn of(
        items: &'a [(&'a Key, String)],
        rows: impl ExactSizeIterator<Item = usize>,
        first: i64,
    ) -> BatchColumns<'a> {
        let mut columns = BatchColumns {
            kinds: Vec::with_capacity(rows.len()),
            namespaces: Vec::with_capacity(rows.len()),
            names: Vec::with_capacity(rows.len()),
            values: Vec::with_capacity(rows.len()),
            revisions: Vec::with_capacity(rows.len()),
        };
        for index in rows {
            let (key, value) = &items[index];
            columns.kinds.push(&key.kind);
            columns.namespaces.push(&key.namespace);
            columns.names.push(&key.name);
            columns.values.push(value);
            columns.revisions.push(first + index as i64);
        }
        columns
    }
}

fn stored_from_row(row: &PgRow) -> Result<Stored> {
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

fn raw_change_from_row(row: &PgRow) -> Result<RawChange> {
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

fn change_from_row(row: &PgRow) -> Result<Change> {
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
impl Store for PostgresStore {
    async fn get(&self, key: &Key) -> Result<Option<Stored>> {
        let row = sqlx::query(
            "SELECT kind, namespace, name, value, revision FROM resources \
             WHERE kind = $1 AND namespace = $2 AND name = $3",
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
        let mut select = QueryBuilder::<Postgres>::new(
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
        if let Some((namespace, name)) = after {
            select
                .push(" AND (namespace, name) > (")
                .push_bind(namespace)
                .push(", ")
                .push_bind(name)
                .push(")");
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
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM resources WHERE namespace = $1")
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
        read_revision(&self.readers).await
    }

    async fn changes_since(&self, after: i64, limit: usize) -> Result<Vec<Change>> {
        let rows = sqlx::query(&format!(
            "SELECT {} WHERE c.revision > $1 ORDER BY c.revision LIMIT $2",
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
        let page_size = sql::page_size(limit);
        // One statement, hence one snapshot: the head, the rows up to it and whether the
        // revision after `after` is still in the feed. Without a matching row the join still
        // yields one row (change columns NULL) carrying the head.
        let rows = sqlx::query(&format!(
            "SELECT head.revision AS head, \
                    EXISTS (SELECT 1 FROM changes WHERE revision = $1 + 1) AS next_kept, \
                    page.revision, page.op, page.kind, page.namespace, page.name, page.value \
             FROM store_revision AS head \
             LEFT JOIN LATERAL ( \
                 SELECT {} \
                 WHERE {} AND c.revision > $1 AND c.revision <= head.revision \
                     AND c.kind = ANY($2) \
                 ORDER BY c.revision LIMIT $3 \
             ) AS page ON TRUE \
             ORDER BY page.revision",
            sql::CHANGES_WITH_VALUES,
            sql::NOT_SUPERSEDED
        ))
        .bind(after)
        .bind(kinds)
        .bind(sql::sql_limit(page_size))
        .fetch_all(&self.readers)
        .await
        .map_err(|err| sql::translate(&"change feed", err))?;
        let field = |err| sql::translate(&"changes row", err);
        let Some(first) = rows.first() else {
            return Err(StoreError::Internal(
                "store_revision row is missing".to_owned(),
            ));
        };
        let head: i64 = first.try_get("head").map_err(field)?;
        if head <= after {
            return Ok(sql::nothing_after(after));
        }
        let next_kept: bool = first.try_get("next_kept").map_err(field)?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            if row
                .try_get::<Option<i64>, _>("revision")
                .map_err(field)?
                .is_some()
            {
                changes.push(raw_change_from_row(row)?);
            }
        }
        Ok(sql::kind_changes(
            after, head, page_size, changes, next_kept,
        ))
    }

    async fn prune_changes(&self, before_revision: i64) -> Result<u64> {
        // No counter lock: pruning removes old entries only and never races a writer's row.
        let result = sqlx::query("DELETE FROM changes WHERE revision < $1")
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
    use super::*;
    use crate::conformance::{Fixture, LONG_POLL_INTERVAL};
    use crate::testing::temp_postgres;

    /// A fresh store on its own database, dropped after the case.
    async fn fixture() -> Option<Fixture> {
        let (store, database) = temp_postgres().await?;
        let store = store.with_change_poll_interval(LONG_POLL_INTERVAL);
        Some(Fixture::new(Arc::new(store), async move {
            database.cleanup().await
        }))
    }

    crate::store_conformance_tests!(fixture);

    /// Two backends on one database: each sees the other's writes in its change feed, and is
    /// woken by NOTIFY — even after its listener connection was killed — well before the poll.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backends_wake_each_other_through_notify() {
        let Some((first, database)) = temp_postgres().await else {
            return;
        };
        let first = Arc::new(first.with_change_poll_interval(LONG_POLL_INTERVAL));
        // A second connect also re-runs migrations, which must be a no-op.
        let second = Arc::new(
            database
                .connect()
                .await
                .unwrap()
                .with_change_poll_interval(LONG_POLL_INTERVAL),
        );

        for round in 0..2 {
            if round == 1 {
                let killed: i64 = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name = $1",
                )
                .bind(LISTENER_APPLICATION_NAME)
                .fetch_one(&second.readers)
                .await
                .unwrap();
                assert_eq!(killed, 2, "both stores' listener connections");
            }
            let after = second.revision().await.unwrap();
            let waiter = tokio::spawn({
                let second = second.clone();
                async move { second.wait_for_change(after).await }
            });
            let key = Key::new("checks", "default", format!("web-{round}"));
            let revision = first
                .create(&key, &serde_json::json!({"round": round}))
                .await
                .unwrap();
            tokio::time::timeout(crate::conformance::WAKE_TIMEOUT, waiter)
                .await
                .expect("the other backend is woken by NOTIFY, not by its 60 s poll")
                .unwrap();
            let changes = second.changes_since(after, 0).await.unwrap();
            assert_eq!(
                changes
                    .iter()
                    .map(|change| (change.revision, &change.key))
                    .collect::<Vec<_>>(),
                [(revision, &key)]
            );
        }
        drop((first, second));
        database.cleanup().await;
    }
}
