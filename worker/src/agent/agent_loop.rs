//! The agent's one task: owns the connection to the scheduler and the table
//! of running attempts, and reacts to scheduler messages, job events, the
//! heartbeat tick and draining. Jobs run on their own tasks and only talk to
//! this loop through [`JobEvent`]s, so a slow or broken connection never
//! stalls a task's process.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval};
use tokio_stream::StreamExt as _;
use tonic::Streaming;
use tracing::{debug, info, instrument, warn};
use trainyard_core::ids::WorkerId;
use trainyard_proto::v1::{self, scheduler_message::Kind as In, worker_message::Kind as Out};

use super::ack_watch::AckWatch;
use super::artifacts::{StoreArtifacts, UnusableStore};
use super::cleanup;
use super::dial::{self, DialError, Established};
use super::fence::Fence;
use super::job::{self, AttemptKey, Job, JobEvent};
use super::schedulers::{Next, Schedulers};
use super::workdir::{ArtifactHook, LocalInputs};
use super::{AgentOptions, AgentStatus, Result};
use crate::convert::{gpu_to_proto, gpu_usage_to_proto};
use crate::exec::{StopHandle, Supervisor};

mod guard;

/// Heartbeat interval when neither the scheduler nor the options say.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Never heartbeat faster than this, whatever the scheduler asks.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);
/// Log lines kept while disconnected; older batches are dropped beyond it.
const MAX_PENDING_LOG_LINES: usize = 100_000;
/// After a drain, how long to wait for the scheduler to confirm the last results.
const CONFIRM_WAIT: Duration = Duration::from_secs(30);
/// Longest one dial (connect, Register, open the stream) may take before the
/// next URL is tried: a frozen replica accepts TCP and then says nothing.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// One attempt this worker runs.
struct Running {
    assignment_id: String,
    stop: StopHandle,
    started_at_ms: i64,
    gpus: Vec<u32>,
    /// Killed (fenced): nothing more is reported about it.
    killed: bool,
    /// Stopped by this worker's own fence (cut off from the scheduler):
    /// why, for its report.
    fenced: Option<String>,
    /// (run id, task id): with the attempt number, where its folder is; the
    /// work dir sweep never touches a running attempt's folder.
    place: (String, String),
}

/// A TaskFinished the scheduler has not confirmed yet.
struct Unconfirmed {
    key: AttemptKey,
    /// How it is listed in Hello after a reconnect (so the scheduler keeps
    /// the attempt until the report arrives).
    running: v1::RunningAttempt,
    msg: v1::TaskFinished,
    /// Sequence number of the message on the current stream; `None`: not
    /// sent on it yet.
    sent_seq: Option<u64>,
}

/// The open stream's sending side.
struct Conn {
    tx: mpsc::Sender<v1::WorkerMessage>,
    /// Messages sent on this stream so far.
    seq: u64,
    /// (heartbeat timestamp, its sequence number, when it was sent), oldest first.
    heartbeats: VecDeque<(i64, u64, Instant)>,
}

pub(super) struct AgentLoop {
    opts: AgentOptions,
    /// The scheduler URLs and which one is dialled next.
    schedulers: Schedulers,
    /// Join token and the session credential of `worker_id`.
    credentials: dial::Credentials,
    /// The hook new attempts use; running ones keep the one they started with.
    artifacts: Arc<dyn ArtifactHook>,
    /// The scheduler's store URL `artifacts` was built from; `None` while the
    /// hook comes from the options (fixed) or is the same-host fallback.
    artifacts_from_scheduler: Option<String>,
    worker_id: WorkerId,
    /// The scheduler answered a registration at least once.
    registered: bool,
    status: watch::Sender<AgentStatus>,
    tasks: HashMap<AttemptKey, Running>,
    unconfirmed: Vec<Unconfirmed>,
    /// Log batches produced while disconnected.
    pending_logs: VecDeque<v1::LogLines>,
    pending_log_lines: usize,
    conn: Option<Conn>,
    draining: bool,
    heartbeat_every: Duration,
    /// Last heartbeat timestamp, kept strictly increasing (it keys confirmations).
    last_heartbeat_ms: i64,
    /// The back-off after a whole round of URLs failed; reset once a
    /// stream proves healthy.
    delay: Duration,
    /// Wait before the next dial: zero within a round, `delay` after one.
    wait: Duration,
    /// Drops a stream whose scheduler stopped acknowledging heartbeats.
    ack_watch: AckWatch,
    connections: u64,
    usage: watch::Receiver<Vec<v1::GpuUsage>>,
    /// Keeps `usage` open when no sampler runs.
    _usage_tx: Option<watch::Sender<Vec<v1::GpuUsage>>>,
    sampler: Option<tokio::task::JoinHandle<()>>,
    events_tx: mpsc::Sender<JobEvent>,
    events_rx: Option<mpsc::Receiver<JobEvent>>,
    /// When the scheduler last provably heard from us, and what follows.
    fence: Fence,
    /// Records and guards the tasks' process groups; set when `run` starts.
    supervisor: Option<Supervisor>,
    /// A work dir sweep is running (one at a time; see `cleanup`).
    sweeping: Arc<AtomicBool>,
}

async fn maybe<F: Future + Unpin>(f: Option<&mut F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn next_message(
    s: Option<&mut Streaming<v1::SchedulerMessage>>,
) -> Option<std::result::Result<v1::SchedulerMessage, tonic::Status>> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn tick(i: Option<&mut Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn key_of(a: Option<&v1::AttemptRef>) -> Option<AttemptKey> {
    a.map(|a| (a.task_instance_id.clone(), a.attempt))
}

fn attempt_ref(key: &AttemptKey) -> v1::AttemptRef {
    v1::AttemptRef {
        task_instance_id: key.0.clone(),
        attempt: key.1,
    }
}

fn msg(kind: Out) -> v1::WorkerMessage {
    v1::WorkerMessage { kind: Some(kind) }
}

impl AgentLoop {
    pub(super) fn new(
        opts: AgentOptions,
        worker_id: WorkerId,
        status: watch::Sender<AgentStatus>,
    ) -> Self {
        // Checked in Agent::build; a fallback keeps this infallible.
        let schedulers =
            Schedulers::new(&opts.schedulers, opts.tls.as_ref()).unwrap_or_else(|_| {
                Schedulers::new(&["http://127.0.0.1:1".to_owned()], None)
                    .unwrap_or_else(|_| unreachable!("a literal URL"))
            });
        // Both checked in Agent::build.
        let credentials = dial::Credentials {
            token: dial::JoinToken::new(opts.join_token.as_deref()).unwrap_or_default(),
            session_credential: opts
                .identity
                .as_ref()
                .and_then(|i| i.session_credential())
                .unwrap_or_default(),
        };
        let artifacts = opts
            .artifacts
            .clone()
            .unwrap_or_else(|| Arc::new(LocalInputs));
        let (usage_tx, usage) = watch::channel(Vec::new());
        let every = opts.heartbeat_interval.unwrap_or(DEFAULT_HEARTBEAT);
        let (sampler, usage_tx) = match opts.usage_sampler.clone() {
            Some(s) => (Some(tokio::spawn(sample_gpus(s, every, usage_tx))), None),
            None => (None, Some(usage_tx)),
        };
        let (events_tx, events_rx) = mpsc::channel(4096);
        Self {
            heartbeat_every: every,
            opts,
            schedulers,
            credentials,
            artifacts,
            artifacts_from_scheduler: None,
            worker_id,
            registered: false,
            status,
            tasks: HashMap::new(),
            unconfirmed: Vec::new(),
            pending_logs: VecDeque::new(),
            pending_log_lines: 0,
            conn: None,
            draining: false,
            last_heartbeat_ms: 0,
            delay: Duration::ZERO,
            wait: Duration::ZERO,
            ack_watch: AckWatch::default(),
            connections: 0,
            usage,
            _usage_tx: usage_tx,
            sampler,
            events_tx,
            events_rx: Some(events_rx),
            fence: Fence::default(),
            supervisor: None,
            sweeping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts a sweep of failed attempts' folders past their keep period,
    /// off the loop (it walks the disk), unless one is still running.
    fn sweep_work_dir(&self) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let running: HashSet<(String, String, u32)> = self
            .tasks
            .iter()
            .map(|(k, t)| (t.place.0.clone(), t.place.1.clone(), k.1))
            .collect();
        let (dir, keep, busy) = (
            self.opts.work_dir.clone(),
            self.opts.keep_failed_work_dirs,
            self.sweeping.clone(),
        );
        let started = SystemTime::now();
        tokio::task::spawn_blocking(move || {
            cleanup::sweep(&dir, keep, SystemTime::now(), started, &running);
            busy.store(false, Ordering::Release);
        });
    }

    fn publish(&self) {
        self.status.send_replace(AgentStatus {
            worker_id: self.registered.then_some(self.worker_id),
            connected: self.conn.is_some(),
            draining: self.draining,
            running: self.tasks.len(),
            connections: self.connections,
        });
    }

    #[instrument(skip_all, fields(worker = %self.worker_id, schedulers = %self.schedulers.describe()), err)]
    pub(super) async fn run(
        mut self,
        mut drain_rx: watch::Receiver<bool>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(shutdown);
        let Some(mut events_rx) = self.events_rx.take() else {
            return Ok(());
        };
        let mut inbound: Option<Streaming<v1::SchedulerMessage>> = None;
        let mut ticker: Option<Interval> = None;
        let mut dialing: Option<BoxFuture<'static, std::result::Result<Established, DialError>>> =
            None;
        let mut shutdown_seen = false;
        let mut drain_deadline: Option<Instant> = None;
        let mut exit_deadline: Option<Instant> = None;
        // Before the first Register: the scheduler may hand this worker's
        // GPUs out again as soon as it registers.
        self.supervisor = Some(self.supervise().await);
        self.publish();
        // At start (what a previous instance left), then periodically.
        let mut sweep_every =
            tokio::time::interval(cleanup::sweep_interval(self.opts.keep_failed_work_dirs));
        sweep_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            // First, whatever else woke the loop (after a SIGSTOP every
            // timer is due at once).
            self.enforce_fence();
            if self.draining && self.tasks.is_empty() {
                if self.unconfirmed.is_empty() {
                    break Ok(());
                }
                if exit_deadline.is_none() {
                    exit_deadline = Some(Instant::now() + CONFIRM_WAIT);
                    // Its ack confirms every result sent before it: asking
                    // now instead of at the next tick spares a drained
                    // worker (and `standalone --run`) up to a whole
                    // heartbeat interval of waiting at exit.
                    self.heartbeat().await;
                }
            }
            if self.conn.is_none() {
                inbound = None;
                ticker = None;
                if dialing.is_none() {
                    dialing = Some(self.dial());
                }
            }
            tokio::select! {
                () = &mut shutdown, if !shutdown_seen => {
                    shutdown_seen = true;
                    self.start_drain("the worker is shutting down").await;
                    drain_deadline.get_or_insert_with(|| Instant::now() + self.opts.drain_grace);
                }
                changed = drain_rx.changed(), if !self.draining => {
                    if changed.is_ok() && *drain_rx.borrow_and_update() {
                        self.start_drain("drain requested").await;
                        drain_deadline.get_or_insert_with(|| Instant::now() + self.opts.drain_grace);
                    }
                }
                Some(ev) = events_rx.recv() => self.on_job_event(ev).await,
                // Wakes the loop; its top enforces the fence.
                () = sleep_until(self.next_fence_wake()) => {}
                () = sleep_until(self.ack_watch.deadline()) => self.drop_if_stalled(),
                _ = sweep_every.tick() => self.sweep_work_dir(),
                est = maybe(dialing.as_mut()) => {
                    dialing = None;
                    match est {
                        Ok(est) => {
                            let every = self.heartbeat_interval(est.heartbeat_interval);
                            self.fence.configure(est.lost_worker_timeout, every);
                            self.fence.heard(est.register_sent);
                            self.ack_watch.opened(Instant::now(), every, est.lost_worker_timeout);
                            self.schedulers.connected();
                            self.renew_lease();
                            let mut every = tokio::time::interval(every);
                            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                            ticker = Some(every);
                            inbound = Some(est.inbound);
                            self.use_scheduler_store(&est.artifact_store_url);
                            self.keep_identity(est.worker_id, &est.session_credential);
                            self.on_connected(est.worker_id, est.tx).await;
                        }
                        Err(e) if e.is_fatal() => break Err(e.into()),
                        Err(e) => self.dial_failed(&e),
                    }
                }
                m = next_message(inbound.as_mut()) => match m {
                    Some(Ok(m)) => self.on_message(m).await,
                    Some(Err(status)) => {
                        warn!(scheduler = %self.schedulers.url(), code = ?status.code(), message = status.message(), "stream to the scheduler ended");
                        self.stream_ended(false);
                    }
                    None => {
                        warn!(scheduler = %self.schedulers.url(), "the scheduler closed the stream");
                        self.stream_ended(false);
                    }
                },
                () = tick(ticker.as_mut()) => self.heartbeat().await,
                () = sleep_until(drain_deadline) => {
                    drain_deadline = None;
                    if !self.tasks.is_empty() {
                        warn!(running = self.tasks.len(), "drain grace over; cancelling what still runs");
                        for t in self.tasks.values() {
                            t.stop.cancel.cancel();
                        }
                    }
                }
                () = sleep_until(exit_deadline) => {
                    warn!(unconfirmed = self.unconfirmed.len(), "the scheduler did not confirm the last results; exiting anyway");
                    break Ok(());
                }
            }
        };
        if result.is_err() {
            // The scheduler refused us: nothing we run can be reported.
            for t in self.tasks.values() {
                t.stop.kill.cancel();
            }
        }
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
        self.conn = None;
        self.publish();
        info!("agent stopped");
        result
    }

    fn heartbeat_interval(&mut self, from_scheduler: Duration) -> Duration {
        let every = self
            .opts
            .heartbeat_interval
            .unwrap_or(if from_scheduler.is_zero() {
                DEFAULT_HEARTBEAT
            } else {
                from_scheduler
            });
        self.heartbeat_every = every.max(MIN_HEARTBEAT);
        self.heartbeat_every
    }

    /// A dial failed (not fatally): the next URL at once while the round
    /// lasts, else the back-off.
    fn dial_failed(&mut self, e: &DialError) {
        let url = self.schedulers.url().to_owned();
        match self.schedulers.failed(e) {
            Next::Now => {
                self.wait = Duration::ZERO;
                match e {
                    DialError::NotLeader { .. } => {
                        info!(scheduler = %url, answer = %e, next = %self.schedulers.url(), "a standby replica; trying the next scheduler URL")
                    }
                    _ => {
                        warn!(scheduler = %url, error = %e, next = %self.schedulers.url(), "scheduler not reachable; trying the next URL")
                    }
                }
            }
            Next::BackOff => {
                self.delay = self.opts.reconnect.next(self.delay);
                self.wait = self.delay;
                warn!(scheduler = %url, error = %e, retry_in = ?self.delay, schedulers = %self.schedulers.describe(),
                    "no scheduler URL leads or answers; retrying after a back-off");
            }
        }
    }

    /// The stream ended (closed, failed, or dropped as stalled): redial,
    /// after the back-off left from before it (zero once it proved healthy).
    fn stream_ended(&mut self, stalled: bool) {
        self.schedulers.stream_ended(stalled);
        self.wait = if stalled { Duration::ZERO } else { self.delay };
        self.disconnect();
    }

    /// Drops the stream when its scheduler stopped acknowledging heartbeats
    /// (`ack_watch`): a frozen scheduler never closes it by itself.
    fn drop_if_stalled(&mut self) {
        if self.conn.is_none() {
            self.ack_watch.closed();
            return;
        }
        let Some(silent) = self.ack_watch.stalled(Instant::now()) else {
            return;
        };
        warn!(scheduler = %self.schedulers.url(), silent = ?silent, running = self.tasks.len(),
            "the scheduler stopped acknowledging heartbeats; dropping the stream and trying the next URL \
             (running tasks keep running and are listed to whichever scheduler leads)");
        self.stream_ended(true);
    }

    /// One connection try after the current wait.
    fn dial(&self) -> BoxFuture<'static, std::result::Result<Established, DialError>> {
        let o = &self.opts;
        let request = v1::RegisterRequest {
            protocol_version: o.protocol_version,
            name: o.name.clone(),
            labels: o
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            queues: o.queues.clone(),
            cpus: o.cpus,
            memory_bytes: o.memory_bytes,
            slots: o.slots,
            gpus: o.gpus.iter().map(gpu_to_proto).collect(),
            worker_version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: o.hostname.clone(),
            worker_id: self.worker_id.to_string(),
            // Filled in by `establish` from the credentials.
            session_credential: String::new(),
        };
        let mut running: Vec<v1::RunningAttempt> = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.killed)
            .map(|(k, t)| v1::RunningAttempt {
                attempt: Some(attempt_ref(k)),
                assignment_id: t.assignment_id.clone(),
                started_at_unix_ms: t.started_at_ms,
                gpu_indices: t.gpus.clone(),
            })
            .collect();
        running.extend(self.unconfirmed.iter().map(|u| u.running.clone()));
        let endpoint = self.schedulers.endpoint();
        let url = self.schedulers.url().to_owned();
        let credentials = self.credentials.clone();
        let delay = self.wait;
        let max = o.max_message_bytes;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let Some(endpoint) = endpoint else {
                return Err(DialError::BadUrl {
                    url,
                    reason: "no scheduler URL configured".into(),
                });
            };
            tokio::time::timeout(
                DIAL_TIMEOUT,
                dial::establish(endpoint, credentials, request, running, max),
            )
            .await
            .unwrap_or(Err(DialError::TimedOut {
                url,
                after: DIAL_TIMEOUT,
            }))
        })
    }

    /// Adopts the artifact store the scheduler announced, unless the options
    /// fixed one. Rebuilt only when the URL changes.
    fn use_scheduler_store(&mut self, url: &str) {
        if self.opts.artifacts.is_some() {
            return;
        }
        if self.artifacts_from_scheduler.as_deref() == Some(url) {
            return;
        }
        if url.is_empty() {
            if self.artifacts_from_scheduler.take().is_some() {
                warn!("the scheduler announces no artifact store; inputs come from this host only");
                self.artifacts = Arc::new(LocalInputs);
            }
            return;
        }
        self.artifacts = match StoreArtifacts::from_url(url) {
            Ok(hook) => {
                info!(store = %hook.store().base_uri(), "artifact store from the scheduler");
                Arc::new(hook)
            }
            Err(e) => {
                let reason = format!(
                    "cannot open the scheduler's artifact store {url:?}: {e} \
                     (start the worker with --artifacts and the store's credentials)"
                );
                warn!(%reason, "attempts will fail until this is fixed");
                Arc::new(UnusableStore { reason })
            }
        };
        self.artifacts_from_scheduler = Some(url.to_owned());
    }

    /// Keeps the id and session credential the scheduler answered, in
    /// memory for the next Register and on disk for the next start.
    fn keep_identity(&mut self, worker_id: WorkerId, credential: &str) {
        self.credentials.session_credential = credential.to_owned();
        if let Some(identity) = &self.opts.identity
            && let Err(e) = identity.save(worker_id, credential)
        {
            warn!(error = %e, "cannot persist the worker identity; a restart will register as a new worker");
        }
    }

    async fn on_connected(&mut self, worker_id: WorkerId, tx: mpsc::Sender<v1::WorkerMessage>) {
        if worker_id != self.worker_id {
            info!(old = %self.worker_id, new = %worker_id, "the scheduler assigned another worker id");
            self.worker_id = worker_id;
        }
        self.registered = true;
        self.connections += 1;
        self.conn = Some(Conn {
            tx,
            seq: 1, // the Hello
            heartbeats: VecDeque::new(),
        });
        info!(
            scheduler = %self.schedulers.url(),
            connections = self.connections,
            held = self.tasks.len(),
            "connected to the scheduler"
        );
        if self.draining {
            self.send_draining("drain requested").await;
        }
        // Results first: they are what the scheduler waits on.
        for i in 0..self.unconfirmed.len() {
            let m = msg(Out::TaskFinished(self.unconfirmed[i].msg.clone()));
            let seq = self.send(m).await;
            if let Some(u) = self.unconfirmed.get_mut(i) {
                u.sent_seq = seq;
            }
        }
        while let Some(batch) = self.pending_logs.pop_front() {
            self.pending_log_lines = self.pending_log_lines.saturating_sub(batch.lines.len());
            if self.send(msg(Out::LogLines(batch))).await.is_none() {
                break;
            }
        }
        self.publish();
    }

    fn disconnect(&mut self) {
        self.conn = None;
        self.ack_watch.closed();
        for u in &mut self.unconfirmed {
            u.sent_seq = None;
        }
        self.publish();
    }

    /// Sends on the open stream; the message's sequence number, or `None`
    /// when there is no usable stream.
    async fn send(&mut self, m: v1::WorkerMessage) -> Option<u64> {
        let conn = self.conn.as_mut()?;
        if conn.tx.send(m).await.is_ok() {
            conn.seq += 1;
            return Some(conn.seq);
        }
        self.disconnect();
        None
    }

    async fn send_draining(&mut self, reason: &str) {
        let grace_ms = u64::try_from(self.opts.drain_grace.as_millis()).unwrap_or(u64::MAX);
        let m = msg(Out::Draining(v1::Draining {
            grace_ms,
            reason: reason.to_owned(),
        }));
        self.send(m).await;
    }

    async fn start_drain(&mut self, reason: &str) {
        if self.draining {
            return;
        }
        info!(reason, running = self.tasks.len(), grace = ?self.opts.drain_grace, "draining");
        self.draining = true;
        self.send_draining(reason).await;
        self.publish();
    }

    async fn heartbeat(&mut self) {
        if self.conn.is_none() {
            return;
        }
        let ts = chrono::Utc::now()
            .timestamp_millis()
            .max(self.last_heartbeat_ms + 1);
        self.last_heartbeat_ms = ts;
        let running = self
            .tasks
            .iter()
            .filter(|(_, t)| !t.killed)
            .map(|(k, _)| attempt_ref(k))
            .collect();
        let gpus = self.usage.borrow().clone();
        let m = msg(Out::Heartbeat(v1::Heartbeat {
            timestamp_unix_ms: ts,
            gpus,
            running,
        }));
        let sent = Instant::now();
        if let Some(seq) = self.send(m).await
            && let Some(conn) = self.conn.as_mut()
        {
            conn.heartbeats.push_back((ts, seq, sent));
            if conn.heartbeats.len() > 64 {
                conn.heartbeats.pop_front();
            }
        }
    }

    /// A HeartbeatAck: every report sent before that heartbeat was processed.
    fn confirm(&mut self, ts: i64) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let Some(pos) = conn.heartbeats.iter().position(|(t, _, _)| *t == ts) else {
            return;
        };
        let (_, seq, sent) = conn.heartbeats[pos];
        conn.heartbeats.drain(..=pos);
        self.fence.heard(sent);
        self.renew_lease();
        self.unconfirmed
            .retain(|u| u.sent_seq.is_none_or(|s| s >= seq));
        // The stream works: the next disconnect redials at once.
        self.delay = Duration::ZERO;
    }

    async fn ack(&mut self, a: &v1::Assign, accepted: bool, reason: String) {
        if !accepted {
            info!(assignment = %a.assignment_id, %reason, "declining an assignment");
        }
        let m = msg(Out::Ack(v1::Ack {
            assignment_id: a.assignment_id.clone(),
            attempt: a.attempt.clone(),
            accepted,
            reason,
        }));
        self.send(m).await;
    }

    async fn on_message(&mut self, m: v1::SchedulerMessage) {
        let Some(kind) = m.kind else {
            return;
        };
        match kind {
            In::Assign(a) => self.on_assign(a).await,
            In::Cancel(c) => {
                if let Some(t) = key_of(c.attempt.as_ref()).and_then(|k| self.tasks.get(&k)) {
                    info!(reason = %c.reason, "cancelling an attempt");
                    t.stop.cancel.cancel();
                }
            }
            In::Kill(k) => {
                let Some(key) = key_of(k.attempt.as_ref()) else {
                    return;
                };
                if let Some(t) = self.tasks.get_mut(&key) {
                    warn!(ti = %key.0, attempt = key.1, reason = %k.reason, "killing a fenced attempt");
                    t.killed = true;
                    t.stop.kill.cancel();
                }
                // The scheduler no longer wants to hear about it.
                self.unconfirmed.retain(|u| u.key != key);
                self.pending_logs
                    .retain(|l| key_of(l.attempt.as_ref()).as_ref() != Some(&key));
            }
            In::Ping(_) => self.heartbeat().await,
            In::HeartbeatAck(a) => {
                // Any acknowledgement shows the scheduler's engine is alive.
                self.ack_watch.acknowledged(Instant::now());
                self.confirm(a.timestamp_unix_ms);
            }
            // A re-sent report the scheduler already had: done with it.
            In::FinishRecorded(r) => {
                if let Some(key) = key_of(r.attempt.as_ref()) {
                    debug!(ti = %key.0, attempt = key.1, note = %r.note, "finish report already recorded");
                    self.unconfirmed.retain(|u| u.key != key);
                }
            }
        }
    }

    async fn on_assign(&mut self, mut a: v1::Assign) {
        // `--inherit-env` on the worker gives every task its whole environment.
        a.inherit_env |= self.opts.inherit_env;
        let Some(key) = key_of(a.attempt.as_ref()) else {
            self.ack(&a, false, "the assignment has no attempt reference".into())
                .await;
            return;
        };
        if self.draining {
            self.ack(&a, false, "the worker is draining".into()).await;
            return;
        }
        if self
            .fence
            .deadlines()
            .is_some_and(|d| Instant::now() >= d.term)
        {
            self.ack(
                &a,
                false,
                "the worker is cut off from the scheduler and fencing its tasks".into(),
            )
            .await;
            return;
        }
        if self.tasks.contains_key(&key) || self.unconfirmed.iter().any(|u| u.key == key) {
            // A repeated assignment (e.g. resent after a reconnect): already ours.
            self.ack(&a, true, String::new()).await;
            return;
        }
        let slots = usize::try_from(self.opts.slots).unwrap_or(usize::MAX);
        if self.tasks.len() >= slots {
            self.ack(&a, false, format!("all {slots} slots are busy"))
                .await;
            return;
        }
        self.ack(&a, true, String::new()).await;
        let stop = StopHandle::new();
        self.tasks.insert(
            key.clone(),
            Running {
                assignment_id: a.assignment_id.clone(),
                stop: stop.clone(),
                started_at_ms: chrono::Utc::now().timestamp_millis(),
                gpus: a.gpu_indices.clone(),
                killed: false,
                fenced: None,
                place: (a.run_id.clone(), a.task_id.clone()),
            },
        );
        debug!(ti = %key.0, attempt = key.1, task = %a.task_id, "starting an attempt");
        let job = Job {
            key,
            assign: a,
            work_dir: self.opts.work_dir.clone(),
            artifacts: self.artifacts.clone(),
            supervisor: self.supervisor.clone(),
        };
        tokio::spawn(job::run_job(job, stop, self.events_tx.clone()));
        self.publish();
    }

    fn is_killed(&self, key: &AttemptKey) -> bool {
        self.tasks.get(key).is_none_or(|t| t.killed)
    }

    async fn on_job_event(&mut self, ev: JobEvent) {
        match ev {
            JobEvent::Started(key, s) => {
                if !self.is_killed(&key) {
                    // Lost while disconnected is fine: a result implies a start.
                    self.send(msg(Out::TaskStarted(s))).await;
                }
            }
            JobEvent::Logs(key, lines) => {
                if self.is_killed(&key) {
                    return;
                }
                if self.conn.is_some() {
                    self.send(msg(Out::LogLines(lines))).await;
                } else {
                    self.pending_log_lines += lines.lines.len();
                    self.pending_logs.push_back(lines);
                    while self.pending_log_lines > MAX_PENDING_LOG_LINES {
                        let Some(old) = self.pending_logs.pop_front() else {
                            break;
                        };
                        self.pending_log_lines -= old.lines.len();
                        warn!(
                            lines = old.lines.len(),
                            "dropping log lines buffered while disconnected"
                        );
                    }
                }
            }
            JobEvent::Finished(key, mut f) => {
                let Some(t) = self.tasks.remove(&key) else {
                    return;
                };
                self.publish();
                if t.killed {
                    debug!(ti = %key.0, attempt = key.1, "killed attempt ended; not reported");
                    return;
                }
                // Killed by the fence, here or by the watchdog while this
                // process was frozen: a failure the scheduler retries (if it
                // has not declared the worker lost already).
                if let Some(reason) = t.fenced.or_else(|| self.fenced_reason(true))
                    && f.outcome != v1::TaskOutcome::Succeeded as i32
                {
                    f.outcome = v1::TaskOutcome::Failed as i32;
                    f.error = reason;
                }
                let sent_seq = self.send(msg(Out::TaskFinished(f.clone()))).await;
                self.unconfirmed.push(Unconfirmed {
                    running: v1::RunningAttempt {
                        attempt: Some(attempt_ref(&key)),
                        assignment_id: t.assignment_id,
                        started_at_unix_ms: t.started_at_ms,
                        gpu_indices: t.gpus,
                    },
                    key,
                    msg: f,
                    sent_seq,
                });
                if self.draining {
                    // Get the confirmation now rather than at the next tick.
                    self.heartbeat().await;
                }
            }
        }
    }
}

/// Samples GPU utilisation in the background so a slow `nvidia-smi` never
/// delays a heartbeat.
async fn sample_gpus(
    sampler: crate::gpu::UsageSampler,
    every: Duration,
    tx: watch::Sender<Vec<v1::GpuUsage>>,
) {
    let every = every.max(Duration::from_secs(1));
    loop {
        match tokio::time::timeout(every * 3, sampler.sample()).await {
            Ok(Ok(usage)) => {
                tx.send_replace(usage.iter().map(gpu_usage_to_proto).collect());
            }
            Ok(Err(e)) => debug!(error = %e, "GPU sampling failed"),
            Err(_) => debug!("GPU sampling timed out"),
        }
        tokio::time::sleep(every).await;
    }
}
