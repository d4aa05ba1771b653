//! [`SqliteStore`]: the embedded backend (one SQLite file, WAL mode).
//!
//! SQLite allows one writer at a time. Rather than letting concurrent writers
//! collide on `SQLITE_BUSY`, every write goes through a pool of exactly one
//! connection and starts with `BEGIN IMMEDIATE` (taking the write lock up
//! front, which also serialises against other processes through
//! `busy_timeout`). That single writer is the "claim lock": a claim is one
//! `UPDATE … RETURNING` over a subquery, and nobody else can write in between.
//! Reads use a separate pool and see the last committed state (WAL).

use std::str::FromStr;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};

use super::error::Result;
use super::imp::{SqlBackend, SqlStore};
use super::{Backend, ConnectOptions};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// The embedded backend: [`SqlStore`] on SQLite, a one-connection write
/// pool and a read pool.
pub type SqliteStore = SqlStore<Sqlite>;

impl SqlBackend for Sqlite {
    const KIND: Backend = Backend::Sqlite;
    /// Takes the write lock up front (see the module doc).
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");
    /// One process: nobody to wake.
    const NOTIFY: Option<&'static str> = None;
    /// No row locks: `BEGIN IMMEDIATE` already excludes every other writer.
    const LEASE_FENCE: &'static str =
        "SELECT term FROM leader_lease WHERE ha_group = $1 AND term = $2";
    /// A count, read as a `bool` (SQLite integers decode as booleans).
    const MIGRATIONS_TABLE_EXISTS: &'static str =
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl SqliteStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self> {
        let base = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // Exactly one connection: writes are serialised in-process.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.clone())
            .await?;
        // Read-only connections (the writer itself for in-memory databases,
        // which cannot be shared between connections).
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(options.max_connections.clamp(1, 64))
                .acquire_timeout(options.acquire_timeout)
                .connect_with(base.read_only(true))
                .await?
        };
        let store = Self::from_pools(writer, Some(reader));
        if options.migrate {
            store.migrate_now().await?;
        } else {
            store.refuse_newer_schema().await?;
        }
        Ok(store)
    }
}
