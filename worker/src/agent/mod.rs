//! The worker agent: connects out to the scheduler over gRPC, registers this
//! host's resources, and runs the attempts it is assigned until it is told to
//! drain.
//!
//! Shape: [`AgentOptions`] → [`Agent::build`] → [`Agent::run`] with a
//! shutdown future, plus a cheap [`AgentHandle`] (drain, status).
//!
//! Module map: `dial` (dial + Register + Connect/Hello, one try),
//! `schedulers` (the configured scheduler URLs and which one is dialled
//! next: standbys' "not the leader" and the leader hint), `ack_watch` (a
//! scheduler that stops acknowledging heartbeats is dropped), `job` (one
//! attempt: directories, inputs, exec, log batches, metrics, outputs),
//! `mask` (secret values and their encoded forms in log lines),
//! `workdir` (per-attempt directories, the [`ArtifactHook`] and its same-host
//! fallback [`LocalInputs`]), `cleanup` (which attempt folders go when:
//! successful ones once uploaded, failed ones after a keep period), `artifacts` ([`StoreArtifacts`], the hook on
//! object storage) and `agent_loop` (the one task that owns the connection
//! and the table of running attempts).
//!
//! Which artifact hook runs: [`AgentOptions::artifacts`] if set (tests);
//! else the worker's own [`AgentOptions::artifact_url`]; else the store URL
//! the scheduler answers at registration; [`LocalInputs`] only when none of
//! them names a store.
//!
//! Guarantees:
//! - Tasks outlive a short break in the connection: a broken stream or a
//!   restarted scheduler does not touch running processes as long as a
//!   heartbeat is acknowledged again within half the lost-worker timeout
//!   (after that the fence below stops them). The agent reconnects —
//!   trying each of its scheduler URLs in turn, backing off (capped) only
//!   after a whole round found no leader — registers again under the same
//!   worker id and session credential (one installation, whichever replica
//!   leads) and lists its running attempts in Hello.
//! - A frozen scheduler is left: a stream with no HeartbeatAck for a few
//!   heartbeat intervals (`ack_watch`) is dropped and the next URL tried,
//!   well before the fence stops running tasks.
//! - A finished attempt's report is kept until the scheduler confirmed it (a
//!   HeartbeatAck for a heartbeat sent after the report), and re-sent after a
//!   reconnect, so results that finish while disconnected are not lost.
//! - Kill (fenced) kills the process group at once and nothing more is
//!   reported about that attempt.
//! - No task outlives its worker or runs on beside its retry: before the
//!   first Register the agent kills the task process groups a previous
//!   instance under the same identity left running (their records are in
//!   `<work dir>/.identity/<name>.groups/`); while it runs, a watchdog
//!   process ([`AgentOptions::watchdog`]) kills them if the worker dies or
//!   freezes; and a worker the scheduler has not acknowledged for most of
//!   the lost-worker timeout stops its tasks itself (`fence`), reporting
//!   them failed when it gets through again.
//! - Draining (handle or shutdown): Draining is sent, new assignments are
//!   declined (the scheduler hands them back), running tasks get
//!   `drain_grace` to finish and are cancelled after it; then `run` returns.

mod ack_watch;
mod agent_loop;
mod artifacts;
pub mod cleanup;
mod code;
mod dial;
mod error;
mod fence;
mod identity;
mod job;
mod mask;
mod schedulers;
mod workdir;

pub use error::AttemptError;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use trainyard_core::ids::WorkerId;

pub use artifacts::StoreArtifacts;
pub use dial::DialError;
pub use identity::{IdentityError, IdentityFile};
pub use job::{LOG_BATCH_LINES, LOG_FLUSH_INTERVAL};
pub use workdir::{ArtifactHook, AttemptPaths, LocalInputs, Transfer, UpstreamOutput};

use crate::exec::WatchdogCommand;
use crate::gpu::{GpuInfo, UsageSampler};

/// Capped exponential back-off between connection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait after `current`: doubled, at most `max`.
    pub fn next(&self, current: Duration) -> Duration {
        (current * 2).clamp(self.initial, self.max.max(self.initial))
    }
}

/// Everything the agent needs; [`AgentOptions::new`] fills in defaults.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The scheduler replicas, in the order they are tried: each
    /// `http(s)://host:port` (a bare `host:port` is accepted). One URL for a
    /// single scheduler or a load balancer; several to follow a failover
    /// without one (see `schedulers`).
    pub schedulers: Vec<String>,
    /// Shown in the UI; unique per scheduler. Defaults to the hostname.
    pub name: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// Pools/queues served; empty means the default queue.
    pub queues: Vec<String>,
    /// Attempts run at once (default 8).
    pub slots: u32,
    /// The inventory, already discovered (or declared) by the caller.
    pub gpus: Vec<GpuInfo>,
    /// Samples utilisation for heartbeats; `None` for declared or no GPUs.
    pub usage_sampler: Option<UsageSampler>,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Root of the per-attempt directories (`<run>/<task>/<attempt>/`).
    pub work_dir: PathBuf,
    /// Overrides the interval the scheduler asks for.
    pub heartbeat_interval: Option<Duration>,
    /// How long running tasks may take to finish once draining starts.
    pub drain_grace: Duration,
    /// How long a failed attempt's folder is kept for debugging before the
    /// periodic sweep removes it (`--keep-failed-work-dirs`, default 24 h);
    /// a successful one goes once its outputs are uploaded (see `cleanup`).
    pub keep_failed_work_dirs: Duration,
    pub reconnect: Backoff,
    /// Kept across reconnects; `None` picks a new one at build.
    pub worker_id: Option<WorkerId>,
    /// Inputs before start, outputs after exit. `None`: a [`StoreArtifacts`]
    /// on `artifact_url` or on the scheduler's store, else [`LocalInputs`]
    /// (same-host fallback, see `workdir`).
    pub artifacts: Option<Arc<dyn ArtifactHook>>,
    /// The worker's own artifact store (`--artifacts`), overriding the URL
    /// the scheduler announces: a worker on another machine may need its
    /// own endpoint or credentials (those come from its `AWS_*`/`GOOGLE_*`/
    /// `AZURE_*` env).
    pub artifact_url: Option<String>,
    /// Run every task with the worker's whole environment (`--inherit-env`)
    /// instead of the clean one; a task's `inherit_env = true` does the same
    /// for that task alone. Default false.
    pub inherit_env: bool,
    /// Largest gRPC message sent or accepted.
    pub max_message_bytes: usize,
    /// Speaks this protocol version at Register (tests set another to
    /// check the scheduler's refusal); default `PROTOCOL_VERSION`.
    pub protocol_version: u32,
    /// The scheduler's join token (`--token`), sent on every call.
    pub join_token: Option<String>,
    /// TLS towards an `https://` scheduler: its CA (`--ca-cert`) and, for
    /// mTLS, this worker's certificate and key (`--cert`, `--key`).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Where the worker id and session credential persist across restarts
    /// (locked for this process); `None` keeps them in memory only. The
    /// task process group records live beside them, so a restart can clean
    /// up after a killed worker; without it there are none.
    pub identity: Option<Arc<IdentityFile>>,
    /// The watchdog process that kills this worker's tasks when it dies or
    /// freezes (`exec::watchdog`); the `trainyard` binary passes
    /// [`WatchdogCommand::this_binary`]. `None`: task main processes die
    /// with the worker (`PR_SET_PDEATHSIG`, at the cost of a full fork per
    /// task), their children may not, and nothing fences a frozen worker.
    pub watchdog: Option<WatchdogCommand>,
}

impl AgentOptions {
    /// `scheduler`: one URL, or several comma-separated (an empty entry
    /// is refused by [`Agent::build`]).
    pub fn new(scheduler: impl Into<String>, work_dir: impl Into<PathBuf>) -> Self {
        let hostname = hostname();
        let scheduler = scheduler.into();
        Self {
            schedulers: scheduler.split(',').map(|u| u.trim().to_owned()).collect(),
            name: hostname.clone(),
            hostname,
            labels: BTreeMap::new(),
            queues: Vec::new(),
            slots: 8,
            gpus: Vec::new(),
            usage_sampler: None,
            cpus: 1,
            memory_bytes: 0,
            work_dir: work_dir.into(),
            heartbeat_interval: None,
            drain_grace: Duration::from_secs(300),
            keep_failed_work_dirs: cleanup::DEFAULT_KEEP_FAILED,
            reconnect: Backoff::default(),
            worker_id: None,
            artifacts: None,
            artifact_url: None,
            inherit_env: false,
            max_message_bytes: 16 * 1024 * 1024,
            protocol_version: trainyard_proto::v1::PROTOCOL_VERSION,
            join_token: None,
            tls: None,
            identity: None,
            watchdog: None,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".to_owned())
}

/// Why the agent stopped with an error (a drained agent returns `Ok`).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid agent options: {0}")]
    Options(String),
    #[error("work dir {path} is not usable: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The scheduler refused this worker (protocol version, bad registration).
    #[error(transparent)]
    Dial(#[from] DialError),
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

/// What the agent is doing, for the CLI, health checks and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// The id the scheduler knows this worker by.
    pub worker_id: Option<WorkerId>,
    /// Registered and the stream is open.
    pub connected: bool,
    pub draining: bool,
    /// Attempts running now.
    pub running: usize,
    /// Connections established so far (1 after the first).
    pub connections: u64,
}

/// A cheap, cloneable way to talk to a running [`Agent`].
#[derive(Debug, Clone)]
pub struct AgentHandle {
    drain: Arc<watch::Sender<bool>>,
    status: watch::Receiver<AgentStatus>,
}

impl AgentHandle {
    /// Starts draining: no new work, running tasks get `drain_grace`.
    pub fn drain(&self) {
        self.drain.send_replace(true);
    }

    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// Changes of [`AgentStatus`].
    pub fn watch(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Waits until `f` holds for the status (or the agent stopped).
    pub async fn wait_for(&self, f: impl FnMut(&AgentStatus) -> bool) -> Option<AgentStatus> {
        let mut rx = self.status.clone();
        rx.wait_for(f).await.ok().map(|s| s.clone())
    }
}

/// The worker agent; see the module docs.
#[derive(Debug)]
pub struct Agent {
    opts: AgentOptions,
    worker_id: WorkerId,
    handle: AgentHandle,
    drain_rx: watch::Receiver<bool>,
    status_tx: watch::Sender<AgentStatus>,
}

impl Agent {
    /// Checks the options and prepares the work dir; connects nothing yet.
    pub fn build(mut opts: AgentOptions) -> Result<Agent> {
        schedulers::Schedulers::new(&opts.schedulers, opts.tls.as_ref())?;
        dial::JoinToken::new(opts.join_token.as_deref())?;
        if opts.slots == 0 {
            return Err(AgentError::Options("slots must be at least 1".into()));
        }
        if opts.name.trim().is_empty() {
            return Err(AgentError::Options(
                "the worker name must not be empty".into(),
            ));
        }
        std::fs::create_dir_all(&opts.work_dir).map_err(|source| AgentError::WorkDir {
            path: opts.work_dir.clone(),
            source,
        })?;
        if opts.artifacts.is_none()
            && let Some(url) = opts.artifact_url.as_deref()
        {
            let hook = StoreArtifacts::from_url(url)
                .map_err(|e| AgentError::Options(format!("artifact store {url:?}: {e}")))?;
            opts.artifacts = Some(Arc::new(hook));
        }
        let worker_id = opts
            .worker_id
            .or_else(|| opts.identity.as_ref().map(|i| i.worker_id()))
            .unwrap_or_default();
        let (drain_tx, drain_rx) = watch::channel(false);
        let (status_tx, status_rx) = watch::channel(AgentStatus::default());
        let handle = AgentHandle {
            drain: Arc::new(drain_tx),
            status: status_rx,
        };
        Ok(Agent {
            opts,
            worker_id,
            handle,
            drain_rx,
            status_tx,
        })
    }

    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// The id this worker registers with (the scheduler may answer another).
    pub fn worker_id(&self) -> WorkerId {
        self.worker_id
    }

    /// Runs until drained (by the handle or `shutdown`) and every task has
    /// ended; `Err` only when the scheduler refuses this worker.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        // Keep a handle alive so the drain channel never reports "closed".
        let _keep = self.handle.clone();
        agent_loop::AgentLoop::new(self.opts, self.worker_id, self.status_tx)
            .run(self.drain_rx, shutdown)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        };
        assert_eq!(
            b.next(Duration::from_millis(100)),
            Duration::from_millis(200)
        );
        assert_eq!(
            b.next(Duration::from_millis(400)),
            Duration::from_millis(500)
        );
        assert_eq!(b.next(Duration::ZERO), Duration::from_millis(100));
    }

    #[test]
    fn build_refuses_a_bad_url_and_zero_slots() {
        let tmp = std::env::temp_dir();
        assert!(Agent::build(AgentOptions::new("http://[::1", &tmp)).is_err());
        // Several URLs: each is checked, and the error names the bad one.
        match Agent::build(AgentOptions::new("127.0.0.1:1, http://[::1", &tmp)) {
            Err(AgentError::Dial(DialError::BadUrl { url, .. })) => assert_eq!(url, "http://[::1"),
            other => panic!("{other:?}"),
        }
        assert!(Agent::build(AgentOptions::new("127.0.0.1:1,,127.0.0.1:2", &tmp)).is_err());
        assert!(Agent::build(AgentOptions::new("127.0.0.1:1, 127.0.0.1:2", &tmp)).is_ok());
        let mut o = AgentOptions::new("127.0.0.1:1", &tmp);
        o.slots = 0;
        assert!(matches!(Agent::build(o), Err(AgentError::Options(_))));
    }
}
