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

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::error::Result;
use super::migrations::{check_not_newer, status_of};
use super::{Backend, ConnectOptions, MigrationStatus};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: writes are serialised in-process.
    writer: SqlitePool,
    /// Read-only connections (the writer itself for in-memory databases, which
    /// cannot be shared between connections).
    reader: SqlitePool,
    /// Committed write transactions (shared by clones).
    committed: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(base.clone())
            .await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(options.max_connections.clamp(1, 64))
                .acquire_timeout(options.acquire_timeout)
                .connect_with(base.read_only(true))
                .await?
        };
        let store = Self {
            writer,
            reader,
            committed: Default::default(),
        };
        if options.migrate {
            store.migrate_now().await?;
        } else {
            store.refuse_newer_schema().await?;
        }
        Ok(store)
    }

    /// The write pool (tests use it for raw checks).
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    pub(crate) fn backend_kind(&self) -> Backend {
        Backend::Sqlite
    }

    pub(crate) fn pool_usage_now(&self) -> super::PoolUsage {
        let pools = [&self.writer, &self.reader];
        super::PoolUsage {
            open: pools.iter().map(|p| p.size()).sum(),
            idle: pools
                .iter()
                .map(|p| u32::try_from(p.num_idle()).unwrap_or(u32::MAX))
                .sum(),
            max: pools
                .iter()
                .map(|p| p.options().get_max_connections())
                .sum(),
        }
    }

    pub(crate) fn read_pool(&self) -> &SqlitePool {
        &self.reader
    }

    /// Commits a write transaction and counts it (`trainyard_store_transactions_total`).
    pub(crate) async fn commit(&self, tx: Transaction<'static, Sqlite>) -> Result<()> {
        tx.commit().await?;
        self.committed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Write transactions committed since the store was opened.
    pub(crate) fn transactions_committed_now(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn applied_versions(&self) -> Result<Vec<i64>> {
        let exists: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.writer)
        .await?;
        if exists == 0 {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.writer)
        .await?)
    }

    async fn refuse_newer_schema(&self) -> Result<()> {
        check_not_newer(&MIGRATOR, &self.applied_versions().await?)
    }

    pub(crate) async fn migrate_now(&self) -> Result<()> {
        self.refuse_newer_schema().await?;
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    pub(crate) async fn migration_status_now(&self) -> Result<Vec<MigrationStatus>> {
        Ok(status_of(&MIGRATOR, &self.applied_versions().await?))
    }

    pub(crate) async fn close_now(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}
