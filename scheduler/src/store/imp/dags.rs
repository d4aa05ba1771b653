//! DAGs and their versions: registration by content hash, parse errors,
//! pause/resume and deactivation.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};
use trainyard_core::ids::{DagId, DagVersionId};
use uuid::Uuid;

use super::{SqlBackend, SqlStore};
use crate::store::Wakeup;
use crate::store::error::{Result, StoreError};
use crate::store::rows::{DAG_COLS, Rows};
use crate::store::types::*;

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
    pub(crate) async fn sql_upsert_dag_version(
        &self,
        v: NewDagVersion,
        now: DateTime<Utc>,
    ) -> Result<UpsertedVersion> {
        let mut tx = self.begin_write().await?;
        sqlx::query(include_str!("../sql/upsert_dag.sql"))
            .bind(v.dag_id.as_str())
            .bind(v.file_path.as_deref())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO dag_versions (dag_id, content_hash, source, spec, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (dag_id, content_hash) DO NOTHING \
             RETURNING id",
        )
        .bind(v.dag_id.as_str())
        .bind(&v.content_hash)
        .bind(&v.source)
        .bind(Json(&v.spec))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let (version_id, created) = match inserted {
            Some(id) => (id, true),
            None => (
                sqlx::query_scalar(
                    "SELECT id FROM dag_versions WHERE dag_id = $1 AND content_hash = $2",
                )
                .bind(v.dag_id.as_str())
                .bind(&v.content_hash)
                .fetch_one(&mut *tx)
                .await?,
                false,
            ),
        };
        sqlx::query(
            "UPDATE dags SET current_version_id = $1, parse_error = NULL, parse_error_at = NULL, \
             updated_at = $2 WHERE id = $3",
        )
        .bind(version_id)
        .bind(now)
        .bind(v.dag_id.as_str())
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(UpsertedVersion {
            version_id: DagVersionId::new(version_id),
            created,
        })
    }

    pub(crate) async fn sql_record_parse_error(
        &self,
        dag_id: &DagId,
        file_path: Option<&str>,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(include_str!("../sql/upsert_dag.sql"))
            .bind(dag_id.as_str())
            .bind(file_path)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE dags SET parse_error = $1, parse_error_at = $2, updated_at = $2 WHERE id = $3",
        )
        .bind(error)
        .bind(now)
        .bind(dag_id.as_str())
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// Sets one boolean column of a DAG (`sql` binds the value, the
    /// time and the id). With `wake`, the leader's engine is told in
    /// the same transaction (Postgres `NOTIFY`, delivered at commit).
    /// With `fenced`, it is an engine write under the store's term fence
    /// ([`Self::begin_engine_write`]).
    async fn update_dag_flag(
        &self,
        sql: &'static str,
        dag_id: &DagId,
        value: bool,
        now: DateTime<Utc>,
        wake: bool,
        fenced: bool,
    ) -> Result<()> {
        let mut tx = if fenced {
            self.begin_engine_write().await?
        } else {
            self.begin_write().await?
        };
        let done = sqlx::query(sql)
            .bind(value)
            .bind(now)
            .bind(dag_id.as_str())
            .execute(&mut *tx)
            .await?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::not_found("dag", dag_id));
        }
        if wake {
            Self::wake_in(&mut tx, &Wakeup::DagChanged(dag_id.clone())).await?;
        }
        self.commit(tx).await?;
        Ok(())
    }

    /// Pauses or resumes a DAG; `wake` as in [`Self::update_dag_flag`].
    pub(crate) async fn sql_set_dag_paused(
        &self,
        dag_id: &DagId,
        paused: bool,
        now: DateTime<Utc>,
        wake: bool,
    ) -> Result<()> {
        self.update_dag_flag(
            "UPDATE dags SET paused = $1, updated_at = $2 WHERE id = $3",
            dag_id,
            paused,
            now,
            wake,
            // The engine's pause (no wake-up) carries its term.
            !wake,
        )
        .await
    }

    pub(crate) async fn sql_deactivate_dag(
        &self,
        dag_id: &DagId,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.update_dag_flag(
            "UPDATE dags SET active = $1, updated_at = $2 WHERE id = $3",
            dag_id,
            false,
            now,
            false,
            false,
        )
        .await
    }

    pub(crate) async fn sql_get_dag(&self, dag_id: &DagId) -> Result<Dag> {
        let sql = format!("SELECT {DAG_COLS} FROM dags WHERE id = $1");
        match sqlx::query(&sql)
            .bind(dag_id.as_str())
            .fetch_optional(self.read_pool())
            .await?
        {
            Some(r) => Rows::<DB>::dag(&r),
            None => Err(StoreError::not_found("dag", dag_id)),
        }
    }

    pub(crate) async fn sql_list_dags(&self) -> Result<Vec<Dag>> {
        let sql = format!("SELECT {DAG_COLS} FROM dags ORDER BY id");
        let rows = sqlx::query(&sql).fetch_all(self.read_pool()).await?;
        rows.iter().map(Rows::<DB>::dag).collect()
    }

    pub(crate) async fn sql_get_dag_version(&self, id: DagVersionId) -> Result<DagVersion> {
        let row = sqlx::query(
            "SELECT id, dag_id, content_hash, source, spec, created_at FROM dag_versions \
             WHERE id = $1",
        )
        .bind(id.get())
        .fetch_optional(self.read_pool())
        .await?;
        match row {
            Some(r) => Rows::<DB>::dag_version(&r),
            None => Err(StoreError::not_found("dag version", id)),
        }
    }
}
