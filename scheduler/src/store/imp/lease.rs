//! The leader lease through the store's pool: reading the row (operators'
//! surfaces) and SQLite's one process taking it. PostgreSQL replicas take
//! and renew it on a dedicated connection (`store/coordination.rs`); the
//! fence every engine write runs is `SqlStore::begin_engine_write`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Type};
use uuid::Uuid;

use super::{SqlBackend, SqlStore};
use crate::store::error::Result;
use crate::store::{Backend, Lease, Replica};

/// The lease columns every backend has, in [`lease_of`]'s order.
const COLS: &str = "ha_group, holder, holder_host, holder_pid, term, acquired_at, renewed_at, \
     expires_at, grpc_url";

impl<DB> SqlStore<DB>
where
    DB: SqlBackend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<&'q Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q crate::store::SpecJson>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<crate::store::SpecJson>: Decode<'q, DB> + Type<DB>,
    for<'q> Json<Vec<u32>>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
{
    fn lease_of(row: &DB::Row, expired: bool) -> Result<Lease> {
        Ok(Lease {
            group: row.try_get(0)?,
            holder: row.try_get(1)?,
            holder_host: row.try_get(2)?,
            holder_pid: row.try_get(3)?,
            term: row.try_get(4)?,
            acquired_at: row.try_get(5)?,
            renewed_at: row.try_get(6)?,
            expires_at: row.try_get(7)?,
            grpc_url: row.try_get(8)?,
            expired,
        })
    }

    pub(crate) async fn sql_lease(&self, group: &str) -> Result<Option<Lease>> {
        // Expiry by the database's clock where there is one; SQLite's row
        // is never renewed (one process), so it never counts as expired.
        let expired = match DB::KIND {
            Backend::Postgres => "expires_at <= clock_timestamp()",
            Backend::Sqlite => "0",
        };
        let sql = format!("SELECT {COLS}, {expired} FROM leader_lease WHERE ha_group = $1");
        let row = sqlx::query(&sql)
            .bind(group)
            .fetch_optional(self.read_pool())
            .await?;
        match row {
            Some(row) => {
                let expired: bool = row.try_get(9)?;
                Ok(Some(Self::lease_of(&row, expired)?))
            }
            None => Ok(None),
        }
    }

    pub(crate) async fn sql_take_lease_alone(
        &self,
        group: &str,
        me: &Replica,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Lease> {
        let expires = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let sql = format!(
            "INSERT INTO leader_lease (ha_group, holder, holder_host, holder_pid, term, \
             acquired_at, renewed_at, expires_at, grpc_url) \
             VALUES ($1, $2, $3, $4, 1, $5, $5, $6, NULL) \
             ON CONFLICT (ha_group) DO UPDATE SET holder = excluded.holder, \
             holder_host = excluded.holder_host, holder_pid = excluded.holder_pid, \
             term = leader_lease.term + 1, acquired_at = excluded.acquired_at, \
             renewed_at = excluded.renewed_at, expires_at = excluded.expires_at, grpc_url = NULL \
             RETURNING {COLS}"
        );
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&sql)
            .bind(group)
            .bind(me.id.as_str())
            .bind(me.host.as_str())
            .bind(me.pid)
            .bind(now)
            .bind(expires)
            .fetch_one(&mut *tx)
            .await?;
        let taken = Self::lease_of(&row, false)?;
        self.commit(tx).await?;
        Ok(taken)
    }
}
