//! Throwaway PostgreSQL databases for tests (this crate's and other crates', behind the
//! `testsuite` feature). Every call creates a uniquely named database on the server named by
//! `KENSA_TEST_POSTGRES_URL`, so tests never share state and may run in parallel; the returned
//! guard drops the database again. Without the variable the helpers report a skip and return
//! `None`, so PostgreSQL tests pass trivially on machines without a server.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use crate::postgres::PostgresStore;
use crate::Result;

/// The environment variable naming the server (any database on it) tests may create
/// databases on, e.g. `postgres://postgres@127.0.0.1:5432/test`.
pub const POSTGRES_URL_ENV: &str = "KENSA_TEST_POSTGRES_URL";

/// A fresh, migrated [`PostgresStore`] on a database of its own, or `None` (after printing
/// `skipped: KENSA_TEST_POSTGRES_URL not set`) when no server is configured. Panics when the
/// variable is set but the database cannot be created: a misconfigured server must fail tests,
/// not skip them.
///
/// Call [`TempDatabaseGuard::cleanup`] at the end of the test; if the test panics first, the
/// guard's `Drop` removes the database on a best-effort basis.
pub async fn temp_postgres() -> Option<(PostgresStore, TempDatabaseGuard)> {
    let Ok(url) = std::env::var(POSTGRES_URL_ENV) else {
        println!("skipped: {POSTGRES_URL_ENV} not set");
        return None;
    };
    let server =
        PgConnectOptions::from_str(&url).unwrap_or_else(|err| panic!("{POSTGRES_URL_ENV}: {err}"));
    let name = unique_database_name();
    let mut admin = server
        .connect()
        .await
        .unwrap_or_else(|err| panic!("{POSTGRES_URL_ENV}: connecting: {err}"));
    // A linguistic default collation (where the server has ICU, PostgreSQL 15+) makes any
    // query that forgets the schema's `COLLATE "C"` sort differently from SQLite and fail the
    // suite, instead of passing on a server that happens to run with the C locale.
    let linguistic = format!(
        r#"CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"#
    );
    if admin.execute(linguistic.as_str()).await.is_err() {
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap_or_else(|err| panic!("creating test database {name}: {err}"));
    }
    // Closing is a courtesy to the server; the database exists either way.
    let _ = admin.close().await;
    let guard = TempDatabaseGuard {
        server,
        name,
        dropped: false,
    };
    let store = guard
        .connect()
        .await
        .unwrap_or_else(|err| panic!("connecting to test database {}: {err}", guard.name));
    Some((store, guard))
}

/// Owns one test database and drops it (`WITH (FORCE)`, so open pools do not block it).
pub struct TempDatabaseGuard {
    /// Where the database lives; also the connection used to drop it.
    server: PgConnectOptions,
    name: String,
    /// Set once [`TempDatabaseGuard::cleanup`] has run, so `Drop` does nothing more.
    dropped: bool,
}

impl TempDatabaseGuard {
    pub fn database_name(&self) -> &str {
        &self.name
    }

    /// A connection URL for the test database (the env URL with the database swapped), for
    /// code under test that connects by URL, such as a backend started with `--store-url`.
    pub fn url(&self) -> String {
        let base = std::env::var(POSTGRES_URL_ENV).unwrap_or_default();
        let (without_query, query) = match base.split_once('?') {
            Some((url, query)) => (url.to_owned(), format!("?{query}")),
            None => (base.clone(), String::new()),
        };
        let prefix = match without_query.rfind('/') {
            Some(slash) if slash > "postgres://".len() => &without_query[..slash],
            _ => without_query.as_str(),
        };
        format!("{prefix}/{}{query}", self.name)
    }

    /// Another store on the same database, as a second backend would open it.
    pub async fn connect(&self) -> Result<PostgresStore> {
        PostgresStore::connect_with_options(self.server.clone().database(&self.name)).await
    }

    /// Drops the database. Prefer this to relying on `Drop`, which must block a thread.
    pub async fn cleanup(mut self) {
        if let Err(err) = drop_database(&self.server, &self.name).await {
            eprintln!("warning: could not drop test database {}: {err}", self.name);
        }
        self.dropped = true;
    }
}

impl Drop for TempDatabaseGuard {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let server = self.server.clone();
        let name = std::mem::take(&mut self.name);
        // `Drop` cannot await, may run inside a runtime (where blocking on another runtime
        // panics) or while unwinding from a failed assertion: a thread of its own, with its own
        // small runtime, can always run the DROP.
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime
                .block_on(drop_database(&server, &name))
                .map_err(|err| format!("{name}: {err}"))
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("warning: could not drop test database {err}"),
            Err(_) => eprintln!("warning: the thread dropping a test database panicked"),
        }
    }
}

async fn drop_database(server: &PgConnectOptions, name: &str) -> Result<(), sqlx::Error> {
    let mut admin = server.connect().await?;
    admin
        .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await?;
    let _ = admin.close().await;
    Ok(())
}

/// `kensa_test_<16 hex digits>`: random per process (std's `RandomState` is seeded from the OS)
/// and distinct within it, without a dependency on a random-number crate.
fn unique_database_name() -> String {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let seed = (
        std::process::id(),
        SystemTime::now(),
        CALLS.fetch_add(1, Ordering::Relaxed),
    );
    format!("kensa_test_{:016x}", RandomState::new().hash_one(seed))
}
