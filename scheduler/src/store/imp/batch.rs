//! An engine turn's writes in one transaction: every [`Write`] of the batch,
//! in order, through the same per-area SQL the single calls use, then one
//! commit. Any failure (a compare-and-set that missed, a lost connection)
//! rolls the whole batch back, so the engine can keep its memory as it was
//! and try the turn again.

macro_rules! batch_impl {
    ($Store:ty, $Db:ty) => {
        impl $Store {
            pub(crate) async fn sql_commit_batch(
                &self,
                batch: &WriteBatch,
                actor: &str,
            ) -> Result<()> {
                if batch.is_empty() {
                    return Ok(());
                }
                let backend = self.backend_kind();
                let mut tx = self.begin_write().await?;
                for (write, at) in &batch.writes {
                    let now = *at;
                    match write {
                        Write::StartAttempt { id, attempt } => {
                            Self::tx_start_attempt(&mut tx, *id, *attempt, actor, now).await?;
                        }
                        Write::FinishAttempt(report) => {
                            Self::tx_finish_attempt(&mut tx, report, actor, now).await?;
                        }
                        Write::Metrics {
                            id,
                            attempt,
                            metrics,
                        } => {
                            Self::tx_record_metrics(&mut tx, *id, *attempt, metrics, now).await?;
                        }
                        Write::Transitions(ts) => {
                            common::validate(ts, false)?;
                            Self::apply_transitions(&mut tx, ts, OnConflict::Fail, actor, now)
                                .await?;
                        }
                        Write::Run(t) => {
                            Self::tx_transition_run(&mut tx, t, actor, now).await?;
                        }
                        Write::Assign(list) => {
                            Self::tx_assign_exactly(&mut tx, backend, list, actor, now).await?;
                        }
                        Write::RegisterWorker(w) => {
                            Self::tx_register_worker(&mut tx, w, now).await?;
                        }
                        Write::Heartbeat { id } => {
                            Self::tx_heartbeat_worker(&mut tx, *id, now).await?;
                        }
                        Write::WorkerState { id, state } => {
                            Self::tx_set_worker_state(&mut tx, *id, *state, now).await?;
                        }
                        Write::WorkerLost { id, reason } => {
                            Self::tx_mark_worker_lost(&mut tx, *id, reason, now).await?;
                        }
                        Write::Artifacts {
                            producer,
                            artifacts,
                        } => {
                            Self::tx_record_artifacts(&mut tx, producer, artifacts, now).await?;
                        }
                        Write::ArtifactInputs { consumer, keys } => {
                            Self::tx_record_artifact_inputs(&mut tx, consumer, keys, now).await?;
                        }
                        Write::LogLocation {
                            id,
                            attempt,
                            location,
                        } => {
                            Self::tx_set_attempt_log_location(&mut tx, *id, *attempt, location)
                                .await?;
                        }
                    }
                }
                self.commit(tx).await
            }
        }
    };
}

use super::common::{self, OnConflict};
use crate::store::error::Result;
use crate::store::types::{Write, WriteBatch};

batch_impl!(crate::store::PgStore, sqlx::Postgres);
batch_impl!(crate::store::SqliteStore, sqlx::Sqlite);
