//! [`PgStore`]: the production backend (PostgreSQL through sqlx).
//!
//! One pool serves reads and writes. Transactions run at READ COMMITTED:
//! compare-and-set updates re-check their `WHERE` after waiting on a row lock,
//! and claims use `FOR UPDATE SKIP LOCKED`, so several scheduler replicas can
//! share one database.

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::error::Result;
use super::migrations::{check_not_newer, status_of};
use super::{Backend, ConnectOptions, MigrationStatus};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// How to open one connection: the URL plus the schema and application name
/// of `options` (the store's pool, the leader lock and the wake-up listener
/// all connect the same way).
pub(crate) fn connect_options(url: &str, options: &ConnectOptions) -> Result<PgConnectOptions> {
    let mut connect = PgConnectOptions::from_str(url)?;
    if let Some(schema) = &options.pg_schema {
        connect = connect.options([("search_path", schema.as_str())]);
    }
    if let Some(name) = &options.application_name {
        connect = connect.application_name(name);
    }
    Ok(connect)
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Committed write transactions (shared by clones).
    committed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl PgStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self> {
        let connect = connect_options(url, options)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        let store = Self {
            pool,
            committed: Default::default(),
        };
        if options.migrate {
            store.migrate_now().await?;
        } else {
            store.refuse_newer_schema().await?;
        }
        Ok(store)
    }

    /// The underlying pool (tests and the benchmark use it for raw checks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn backend_kind(&self) -> Backend {
        Backend::Postgres
    }

    pub(crate) fn pool_usage_now(&self) -> super::PoolUsage {
        super::PoolUsage {
            open: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        }
    }

    pub(crate) fn read_pool(&self) -> &PgPool {
        &self.pool
    }

    /// Commits a write transaction and counts it (`trainyard_store_transactions_total`).
    pub(crate) async fn commit(&self, tx: Transaction<'static, Postgres>) -> Result<()> {
        tx.commit().await?;
        self.committed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Write transactions committed since the store was opened.
    pub(crate) fn transactions_committed_now(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    async fn applied_versions(&self) -> Result<Vec<i64>> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn refuse_newer_schema(&self) -> Result<()> {
        check_not_newer(&MIGRATOR, &self.applied_versions().await?)
    }

    pub(crate) async fn migrate_now(&self) -> Result<()> {
        self.refuse_newer_schema().await?;
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn migration_status_now(&self) -> Result<Vec<MigrationStatus>> {
        Ok(status_of(&MIGRATOR, &self.applied_versions().await?))
    }

    pub(crate) async fn close_now(&self) {
        self.pool.close().await;
    }
}
