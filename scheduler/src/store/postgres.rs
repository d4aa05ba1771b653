//! [`PgStore`]: the production backend (PostgreSQL through sqlx).
//!
//! One pool serves reads and writes. Transactions run at READ COMMITTED:
//! compare-and-set updates re-check their `WHERE` after waiting on a row lock,
//! and claims use `FOR UPDATE SKIP LOCKED`, so several scheduler replicas can
//! share one database.

use std::str::FromStr;

use sqlx::Postgres;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgQueryResult};

use super::coordination::PG_NOTIFY;
use super::error::Result;
use super::imp::{SqlBackend, SqlStore};
use super::{Backend, ConnectOptions};

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
    if let Some(guard) = options.pg_session_guard {
        let ms = guard.as_millis().max(1).to_string();
        connect = connect.options([
            ("idle_in_transaction_session_timeout", ms.as_str()),
            ("lock_timeout", ms.as_str()),
        ]);
    }
    Ok(connect)
}

/// The production backend: [`SqlStore`] on PostgreSQL, one pool for reads
/// and writes.
pub type PgStore = SqlStore<Postgres>;

impl SqlBackend for Postgres {
    const KIND: Backend = Backend::Postgres;
    /// The pool's own `BEGIN` (READ COMMITTED).
    const BEGIN_WRITE: Option<&'static str> = None;
    const NOTIFY: Option<&'static str> = Some(PG_NOTIFY);
    /// `FOR SHARE`: a takeover's `UPDATE` of the row waits for this
    /// transaction, and this read waits for a takeover in flight and then
    /// sees its new term (READ COMMITTED re-checks the `WHERE`).
    const LEASE_FENCE: &'static str =
        "SELECT term FROM leader_lease WHERE ha_group = $1 AND term = $2 FOR SHARE";
    const MIGRATIONS_TABLE_EXISTS: &'static str =
        "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl PgStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self> {
        let connect = connect_options(url, options)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        let store = Self::from_pools(pool, None);
        if options.migrate {
            store.migrate_now().await?;
        } else {
            store.refuse_newer_schema().await?;
        }
        Ok(store)
    }
}
