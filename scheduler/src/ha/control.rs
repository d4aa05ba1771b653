//! [`HaControl`]: the API's commands on a replica that may or may not lead.
//!
//! While leading, every command goes to the engine. On standby there is no
//! engine here, so a trigger is validated against the DAG spec the way the
//! engine does it and written through the store as a `queued` run with its
//! task instances, with a wake-up in the same transaction that makes the
//! leader adopt and start it at once; pause/resume are written the same way.
//! Commands that act on the engine's live state (cancel, clear, backfill)
//! are refused as unavailable: a load balancer reading `/readyz` sends them
//! to the leader.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use trainyard_core::dag::DagSpec;
use trainyard_core::ids::{DagId, RunId};
use trainyard_core::state::TriggerKind;

use super::Role;
use crate::clock::Clock;
use crate::engine::{EngineError, EngineHandle, checked_logical_date, manual_params, new_run};
use crate::http::{ControlError, RunControl, TriggerRequest};
use crate::store::{Coordination, RunCreation, StoreError};

/// Actor written to the event log for runs a standby created.
const STANDBY_ACTOR: &str = "api:standby";

/// Routes API commands by the replica's current role.
#[derive(Debug, Clone)]
pub struct HaControl {
    role: watch::Receiver<Role>,
    /// The app's engine handle; it reaches an engine only while leading.
    engine: EngineHandle,
    store: Arc<dyn Coordination>,
    clock: Arc<dyn Clock>,
}

impl HaControl {
    pub fn new(
        role: watch::Receiver<Role>,
        engine: EngineHandle,
        store: Arc<dyn Coordination>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            role,
            engine,
            store,
            clock,
        }
    }

    fn leading(&self) -> bool {
        *self.role.borrow() == Role::Leader
    }

    /// A manual run written by a standby: same checks, same rows as the
    /// engine's trigger, and a wake-up for the leader.
    pub async fn trigger_on_standby(
        &self,
        dag: &DagId,
        request: TriggerRequest,
    ) -> Result<RunId, ControlError> {
        let row = self
            .store
            .get_dag(dag)
            .await
            .map_err(|e| dag_error(dag, e))?;
        let version = match (row.active, row.current_version_id) {
            (true, Some(v)) => v,
            _ => return Err(EngineError::DagInactive(dag.clone()).into()),
        };
        let version_row = self
            .store
            .get_dag_version(version)
            .await
            .map_err(store_error)?;
        let spec: DagSpec = version_row
            .spec
            .decode()
            .map_err(|e| EngineError::BadSpec {
                version,
                message: e.to_string(),
            })?;
        let params = manual_params(dag, &spec, &request.params)?;
        let now = self.clock.now();
        let logical_date = checked_logical_date(request.logical_date.unwrap_or(now))?;
        let run = new_run(
            dag,
            &spec,
            version,
            TriggerKind::Manual,
            Some(logical_date),
            params,
            request.idempotency_key,
        );
        match self
            .store
            .create_run_and_wake(run, STANDBY_ACTOR, now)
            .await
            .map_err(store_error)?
        {
            RunCreation::Created { run, .. } => {
                tracing::info!(dag = %dag, run = %run.id, "run created on standby; leader woken");
                Ok(run.id)
            }
            RunCreation::AlreadyExists(run) => Ok(run.id),
        }
    }

    fn refuse(what: &str) -> ControlError {
        ControlError::unavailable(format!(
            "this scheduler replica is on standby; send {what} to the leader"
        ))
    }
}

fn dag_error(dag: &DagId, e: StoreError) -> ControlError {
    if e.is_not_found() {
        EngineError::DagNotFound(dag.clone()).into()
    } else {
        store_error(e)
    }
}

fn store_error(e: StoreError) -> ControlError {
    EngineError::Store(e).into()
}

#[async_trait]
impl RunControl for HaControl {
    async fn trigger(&self, dag: &DagId, request: TriggerRequest) -> Result<RunId, ControlError> {
        if self.leading() {
            RunControl::trigger(&self.engine, dag, request).await
        } else {
            self.trigger_on_standby(dag, request).await
        }
    }

    async fn backfill(
        &self,
        dag: &DagId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RunId>, ControlError> {
        if !self.leading() {
            return Err(Self::refuse("backfills"));
        }
        RunControl::backfill(&self.engine, dag, from, to).await
    }

    async fn cancel_run(&self, run: RunId) -> Result<(), ControlError> {
        if !self.leading() {
            return Err(Self::refuse("cancellations"));
        }
        RunControl::cancel_run(&self.engine, run).await
    }

    async fn cancel_task(&self, run: RunId, task: &str) -> Result<(), ControlError> {
        if !self.leading() {
            return Err(Self::refuse("cancellations"));
        }
        RunControl::cancel_task(&self.engine, run, task).await
    }

    async fn clear_task(
        &self,
        run: RunId,
        task: &str,
        downstream: bool,
    ) -> Result<(), ControlError> {
        if !self.leading() {
            return Err(Self::refuse("clears"));
        }
        RunControl::clear_task(&self.engine, run, task, downstream).await
    }

    async fn set_paused(&self, dag: &DagId, paused: bool) -> Result<(), ControlError> {
        if self.leading() {
            return RunControl::set_paused(&self.engine, dag, paused).await;
        }
        self.store
            .set_dag_paused_and_wake(dag, paused, self.clock.now())
            .await
            .map_err(|e| dag_error(dag, e))
    }

    async fn wait_reasons(&self, run: RunId) -> Vec<(String, String)> {
        if !self.leading() {
            return Vec::new();
        }
        RunControl::wait_reasons(&self.engine, run).await
    }

    async fn run_wait_reason(&self, run: RunId) -> Option<String> {
        if !self.leading() {
            return None;
        }
        RunControl::run_wait_reason(&self.engine, run).await
    }

    async fn trigger_warnings(&self, dag: &DagId) -> Vec<String> {
        if !self.leading() {
            return Vec::new();
        }
        RunControl::trigger_warnings(&self.engine, dag).await
    }

    fn ends(&self) -> Option<tokio::sync::broadcast::Receiver<crate::engine::Ended>> {
        // A standby's engine handle hears no ends: its listeners re-read the store.
        if !self.leading() {
            return None;
        }
        RunControl::ends(&self.engine)
    }

    fn is_standby(&self) -> bool {
        !self.leading()
    }

    fn store_problem(&self) -> Option<String> {
        if !self.leading() {
            return None;
        }
        RunControl::store_problem(&self.engine)
    }

    async fn gpu_usage(
        &self,
    ) -> std::collections::BTreeMap<trainyard_core::ids::WorkerId, Vec<(u32, f64, u64)>> {
        if !self.leading() {
            return Default::default();
        }
        RunControl::gpu_usage(&self.engine).await
    }
}
