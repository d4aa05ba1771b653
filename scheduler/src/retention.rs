//! Retention: history, artifacts and logs of finished runs are kept for
//! `--retention` (default 30 days; `0` keeps them forever) after the run
//! ended, then pruned by a background task.
//!
//! Per pass, in small batches with a pause between runs so it never holds
//! the store (SQLite's one writer connection included) for long:
//! 1. the store's finished runs that ended before `now - retention` (read
//!    from the injected [`Clock`]), oldest first;
//! 2. each is deleted with everything recorded about it in one guarded
//!    transaction ([`RetentionStore::delete_expired_run`]: never an active or
//!    reopened run, never one whose artifacts another run consumed, never a
//!    DAG's latest successful or latest scheduled run);
//! 3. only then its objects in the artifact store (`runs/<run>/…`: outputs
//!    and archived logs) and its local log folder. Rows go first so a run
//!    that is still visible always has its files; a failed object delete is
//!    logged and leaves objects no row points to.
//!
//! Each pass also removes local log folders whose run no longer exists
//! (pruned by another replica sharing the database).
//!
//! It runs on its own task, outside the engine: the engine never waits for
//! it, and it writes only through [`RetentionStore`], whose doc says why
//! that cannot race with the engine. What it removed is logged and counted
//! (`trainyard_retention_pruned_total{kind}`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use trainyard_artifacts::ArtifactStore;
use trainyard_core::ids::RunId;

use crate::clock::Clock;
use crate::logs::LogStore;
use crate::store::{RetentionStore, StoreError};

/// Default `--retention`: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How the retention task runs; [`RetentionOptions::new`] fills in defaults.
#[derive(Debug, Clone)]
pub struct RetentionOptions {
    /// How long a finished run is kept after it ended; zero keeps forever.
    pub retention: Duration,
    /// Time between passes.
    pub every: Duration,
    /// Runs read per batch.
    pub batch: u32,
    /// Pause after each deleted run, so the engine's transactions are never
    /// queued behind a long run of deletes.
    pub pause: Duration,
}

impl RetentionOptions {
    pub fn new(retention: Duration) -> Self {
        Self {
            retention,
            every: Duration::from_secs(600),
            batch: 100,
            pause: Duration::from_millis(20),
        }
    }
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub runs: u64,
    /// Objects in the artifact store (outputs and archived logs).
    pub artifacts: u64,
    /// Local log folders (one per run).
    pub local_logs: u64,
}

/// The pruner; see the module docs.
#[derive(Debug, Clone)]
pub struct Retention {
    store: Arc<dyn RetentionStore>,
    artifacts: ArtifactStore,
    logs: LogStore,
    clock: Arc<dyn Clock>,
    opts: RetentionOptions,
}

impl Retention {
    pub fn new(
        store: Arc<dyn RetentionStore>,
        artifacts: ArtifactStore,
        logs: LogStore,
        clock: Arc<dyn Clock>,
        opts: RetentionOptions,
    ) -> Self {
        Self {
            store,
            artifacts,
            logs,
            clock,
            opts,
        }
    }

    /// Passes every `opts.every` (the first right away) until `stop`; does
    /// nothing when the retention is zero (keep forever).
    pub async fn run(self, stop: CancellationToken) {
        if self.opts.retention.is_zero() {
            info!("retention is 0: runs, artifacts and logs are kept forever");
            return;
        }
        loop {
            let pass = tokio::select! {
                () = stop.cancelled() => return,
                r = self.prune_once() => r,
            };
            if let Err(e) = pass {
                warn!(error = %e, "retention pass failed; trying again at the next one");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.opts.every) => {}
            }
        }
    }

    /// One pass: everything past the retention at the clock's `now`.
    pub async fn prune_once(&self) -> Result<Pruned, StoreError> {
        let mut pruned = Pruned::default();
        if self.opts.retention.is_zero() {
            return Ok(pruned);
        }
        let retention =
            chrono::Duration::from_std(self.opts.retention).unwrap_or(chrono::Duration::MAX);
        let Some(cutoff) = self.clock.now().checked_sub_signed(retention) else {
            return Ok(pruned);
        };
        // Runs a guard keeps stay first in the store's order (deleted ones
        // vanish, and no run newer than the cutoff can enter it), so each
        // batch skips as many as were kept so far.
        let mut kept: u32 = 0;
        loop {
            let batch = self
                .store
                .expired_runs(cutoff, kept, self.opts.batch)
                .await?;
            for &run in &batch {
                if self.store.delete_expired_run(run, cutoff).await? {
                    pruned.runs += 1;
                    pruned.artifacts += self.remove_objects(run).await;
                    if self.remove_local_logs(run).await {
                        pruned.local_logs += 1;
                    }
                } else {
                    debug!(%run, "kept past the retention: still needed");
                    kept += 1;
                }
                tokio::time::sleep(self.opts.pause).await;
            }
            if batch.len() < self.opts.batch as usize {
                break;
            }
        }
        pruned.local_logs += self.remove_orphan_logs().await;
        let m = &crate::metrics::global().retention_pruned;
        m.with_label_values(&["runs"]).inc_by(pruned.runs);
        m.with_label_values(&["artifacts"]).inc_by(pruned.artifacts);
        m.with_label_values(&["local_logs"])
            .inc_by(pruned.local_logs);
        if pruned != Pruned::default() {
            info!(
                runs = pruned.runs,
                artifacts = pruned.artifacts,
                local_logs = pruned.local_logs,
                %cutoff,
                "pruned finished runs past the retention"
            );
        }
        Ok(pruned)
    }

    /// The run's objects (`runs/<run>/…`); how many went.
    async fn remove_objects(&self, run: RunId) -> u64 {
        let prefix = format!("runs/{run}");
        match self.artifacts.delete_prefix(&prefix).await {
            Ok(n) => n,
            Err(e) => {
                warn!(%run, error = %e, "could not delete a pruned run's artifacts and archived logs; they stay in the store unreferenced");
                0
            }
        }
    }

    async fn remove_local_logs(&self, run: RunId) -> bool {
        let existed = self.logs.root().join(run.to_string()).exists();
        match self.logs.remove_run(run).await {
            Ok(()) => existed,
            Err(e) => {
                warn!(%run, error = %e, "could not remove a pruned run's local logs");
                false
            }
        }
    }

    /// Local log folders of runs the store no longer has.
    async fn remove_orphan_logs(&self) -> u64 {
        let runs = match self.logs.local_runs().await {
            Ok(runs) => runs,
            Err(e) => {
                warn!(error = %e, "cannot list the local log folder");
                return 0;
            }
        };
        let mut removed = 0;
        for run in runs {
            match self.store.run_exists(run).await {
                Ok(false) => {
                    if self.remove_local_logs(run).await {
                        removed += 1;
                    }
                }
                Ok(true) => {}
                Err(e) => {
                    warn!(error = %e, "cannot check local log folders against the store");
                    break;
                }
            }
        }
        removed
    }
}
