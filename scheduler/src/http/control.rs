//! [`RunControl`] for the real engine: forwards API commands to the
//! [`EngineHandle`] and maps engine errors to the API's taxonomy.

use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use trainyard_core::ids::{DagId, RunId, TaskId, WorkerId};

use super::{ControlError, RunControl, TriggerRequest};
use crate::engine::EngineHandle;

fn task_id(raw: &str) -> Result<TaskId, ControlError> {
    TaskId::from_str(raw)
        .map_err(|e| ControlError::bad_request(format!("bad task id {raw:?}: {e}")))
}

#[async_trait]
impl RunControl for EngineHandle {
    async fn trigger(&self, dag: &DagId, request: TriggerRequest) -> Result<RunId, ControlError> {
        Ok(EngineHandle::trigger(
            self,
            dag.clone(),
            request.params,
            request.idempotency_key,
            request.logical_date,
        )
        .await?)
    }

    async fn backfill(
        &self,
        dag: &DagId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RunId>, ControlError> {
        Ok(EngineHandle::backfill(self, dag.clone(), from, to).await?)
    }

    async fn cancel_run(&self, run: RunId) -> Result<(), ControlError> {
        Ok(EngineHandle::cancel_run(self, run).await?)
    }

    async fn cancel_task(&self, run: RunId, task: &str) -> Result<(), ControlError> {
        Ok(EngineHandle::cancel_task(self, run, task_id(task)?).await?)
    }

    async fn clear_task(
        &self,
        run: RunId,
        task: &str,
        downstream: bool,
    ) -> Result<(), ControlError> {
        Ok(EngineHandle::clear_task(self, run, task_id(task)?, downstream).await?)
    }

    async fn set_paused(&self, dag: &DagId, paused: bool) -> Result<(), ControlError> {
        if paused {
            Ok(EngineHandle::pause(self, dag.clone()).await?)
        } else {
            Ok(EngineHandle::resume(self, dag.clone()).await?)
        }
    }

    fn store_problem(&self) -> Option<String> {
        let health = self.store_health();
        (!health.is_ok()).then(|| health.to_string())
    }

    async fn gpu_usage(&self) -> std::collections::BTreeMap<WorkerId, Vec<(u32, f64, u64)>> {
        match EngineHandle::gpu_usage(self).await {
            Ok(usage) => usage
                .into_iter()
                .map(|(worker, gpus)| {
                    let gpus = gpus
                        .into_iter()
                        .map(|g| (g.index, g.utilization_percent, g.memory_used_bytes))
                        .collect();
                    (worker, gpus)
                })
                .collect(),
            Err(err) => {
                tracing::debug!(error = %err, "no gpu usage");
                Default::default()
            }
        }
    }

    async fn run_wait_reason(&self, run: RunId) -> Option<String> {
        self.run_wait_reason(run)
    }

    async fn trigger_warnings(&self, dag: &DagId) -> Vec<String> {
        self.unschedulable_tasks(dag)
    }

    fn ends(&self) -> Option<tokio::sync::broadcast::Receiver<crate::engine::Ended>> {
        Some(self.subscribe_ends())
    }

    async fn wait_reasons(&self, run: RunId) -> Vec<(String, String)> {
        match self.task_wait_reasons(run).await {
            Ok(reasons) => reasons
                .into_iter()
                .map(|(task, reason)| (task.to_string(), reason))
                .collect(),
            Err(err) => {
                tracing::debug!(%run, error = %err, "no wait reasons");
                Vec::new()
            }
        }
    }
}
