//! One worker's Connect stream after its Hello: engine commands go out as
//! [`v1::SchedulerMessage`]s, the worker's reports go into the engine and
//! the log store, and the end of the stream tells the engine the worker is
//! disconnected (only if this stream is still the worker's newest).
//!
//! Declined assignments (a draining worker answers `Ack { accepted: false }`)
//! are handed back by re-syncing the worker with the engine: the session
//! re-opens the engine's command channel listing only the attempts the worker
//! really holds, and the engine returns every other assigned attempt to
//! `ready` — the same path a reconnect takes for an assignment lost in
//! transit, so no attempt is counted.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, info, instrument, warn};
use trainyard_core::ids::{RunId, TaskInstanceId, WorkerId};
use trainyard_proto::v1::{self, worker_message::Kind};

use super::artifacts::{self, ArtifactContext, SecretCache};
use super::convert;
use super::error::status_of;
use crate::engine::{EngineError, EngineHandle, WorkerCommand, WorkerLink};
use crate::logs::LogStore;

type Attempt = (TaskInstanceId, i32);
type Out = mpsc::Sender<Result<v1::SchedulerMessage, Status>>;

/// Which Connect stream is the newest for each worker.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    next: AtomicU64,
    current: Mutex<HashMap<WorkerId, u64>>,
}

impl Sessions {
    /// A new stream for `worker`; it supersedes any older one.
    pub(super) fn begin(&self, worker: WorkerId) -> u64 {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.current.lock() {
            map.insert(worker, generation);
        }
        generation
    }

    /// Ends `generation`'s claim; true if it was still the newest stream.
    pub(super) fn end(&self, worker: WorkerId, generation: u64) -> bool {
        let Ok(mut map) = self.current.lock() else {
            return false;
        };
        if map.get(&worker) == Some(&generation) {
            map.remove(&worker);
            true
        } else {
            false
        }
    }
}

/// The state of one stream; driven by [`Session::run`].
pub(super) struct Session {
    engine: EngineHandle,
    logs: LogStore,
    worker: WorkerId,
    generation: u64,
    sessions: std::sync::Arc<Sessions>,
    /// Towards the worker (the response stream).
    out: Out,
    /// The engine's commands for this worker.
    commands: mpsc::Receiver<WorkerCommand>,
    /// Attempts the worker holds as far as this stream knows: those its Hello
    /// reported plus those assigned since, minus finished, declined and killed
    /// ones. Listed to the engine when a declined assignment is handed back.
    held: HashSet<Attempt>,
    /// Run and task of each attempt that is this worker's own: assigned on
    /// this stream, or reported in its Hello and confirmed by the engine.
    /// A report or log line about any other attempt is refused.
    places: HashMap<Attempt, (RunId, String)>,
    /// Attempts already warned about (a refused report is logged once).
    refused: HashSet<Attempt>,
    /// Artifact store and lineage (see `grpc::artifacts`).
    artifacts: Option<ArtifactContext>,
    /// Secret values per (run, task), masked in log lines before storing.
    secrets: SecretCache,
    /// Finished reports in flight: each archives its log and waits for the
    /// engine's commit on its own task, so one worker's reports pipeline into
    /// the engine's next turn instead of one transaction each; the answers
    /// come back here, in any order.
    finished_tx: mpsc::UnboundedSender<(TaskInstanceId, i32, crate::engine::Result<()>)>,
    finished_rx: mpsc::UnboundedReceiver<(TaskInstanceId, i32, crate::engine::Result<()>)>,
    in_flight: usize,
}

/// Why a session ended; decides the status the worker gets.
enum End {
    /// The worker closed its side or the connection broke.
    Closed,
    /// Tell the worker why, then close.
    Status(Status),
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        engine: EngineHandle,
        logs: LogStore,
        worker: WorkerId,
        generation: u64,
        sessions: std::sync::Arc<Sessions>,
        link: WorkerLink,
        out: Out,
        artifacts: Option<ArtifactContext>,
    ) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        Self {
            engine,
            logs,
            worker,
            generation,
            sessions,
            out,
            commands: link.commands,
            held: link.held.iter().map(|(k, _)| *k).collect(),
            places: link
                .held
                .into_iter()
                .map(|(k, (run, task))| (k, (run, task.as_str().to_owned())))
                .collect(),
            refused: HashSet::new(),
            artifacts,
            secrets: SecretCache::default(),
            finished_tx,
            finished_rx,
            in_flight: 0,
        }
    }

    /// Pumps both directions until the stream ends, the engine closes the
    /// worker's channel, or the server stops.
    #[instrument(skip_all, fields(worker = %self.worker, generation = self.generation))]
    pub(super) async fn run(
        mut self,
        mut inbound: Streaming<v1::WorkerMessage>,
        stop: CancellationToken,
    ) {
        let end = loop {
            tokio::select! {
                () = stop.cancelled() => {
                    break End::Status(Status::unavailable("the scheduler is shutting down; reconnect"));
                }
                Some((ti, attempt, r)) = self.finished_rx.recv() => {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    if let Err(end) = self.report(r, ti, attempt, true) {
                        break end;
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => {
                        if let Err(end) = self.forward(cmd).await {
                            break end;
                        }
                    }
                    // The engine dropped this worker's channel (a newer stream, or it
                    // counted the stream as broken): make the worker reconnect.
                    None => break End::Status(Status::unavailable(
                        "the scheduler closed this stream; reconnect",
                    )),
                },
                msg = inbound.next() => match msg {
                    Some(Ok(msg)) => {
                        if let Err(end) = self.handle(msg).await {
                            break end;
                        }
                    }
                    Some(Err(status)) => {
                        debug!(%status, "worker stream broke");
                        break End::Closed;
                    }
                    None => break End::Closed,
                },
                () = self.out.closed() => break End::Closed,
            }
        };
        if let End::Status(status) = end {
            info!(code = ?status.code(), message = status.message(), "ending worker stream");
            let _ = self.out.send(Err(status)).await;
        }
        if self.sessions.end(self.worker, self.generation) {
            match self.engine.worker_disconnected(self.worker).await {
                Ok(()) | Err(EngineError::Stopped) => {}
                Err(e) => warn!(error = %e, "could not record the disconnect"),
            }
        }
        info!("worker stream closed");
    }

    async fn send(&self, msg: v1::SchedulerMessage) -> Result<(), End> {
        self.out.send(Ok(msg)).await.map_err(|_| End::Closed)
    }

    /// One engine command to the worker.
    async fn forward(&mut self, cmd: WorkerCommand) -> Result<(), End> {
        let mut msg = convert::command_to_proto(&cmd);
        match &cmd {
            WorkerCommand::Assign(a) => {
                let key = (a.task_instance_id, a.attempt);
                self.held.insert(key);
                self.places
                    .insert(key, (a.run_id, a.task_id.as_str().to_owned()));
                self.secrets
                    .insert(a.run_id, a.task_id.as_str(), artifacts::secrets_of(a));
                if let (Some(_), Some(v1::scheduler_message::Kind::Assign(wire))) =
                    (&self.artifacts, msg.kind.as_mut())
                {
                    artifacts::fill_upstream_outputs(a, wire);
                }
            }
            WorkerCommand::Kill { ti, attempt, .. } => {
                self.held.remove(&(*ti, *attempt));
            }
            WorkerCommand::Cancel { .. } => {}
        }
        self.send(msg).await
    }

    /// One message from the worker.
    async fn handle(&mut self, msg: v1::WorkerMessage) -> Result<(), End> {
        let Some(kind) = msg.kind else {
            return Err(End::Status(Status::invalid_argument(
                "an empty WorkerMessage",
            )));
        };
        match kind {
            Kind::Hello(_) => {
                warn!("a second Hello on one stream; ignored");
                Ok(())
            }
            Kind::Heartbeat(hb) => {
                // Its ack tells the worker every report sent before it was
                // processed (a draining worker exits on it): the finished
                // reports in flight must be committed first.
                self.settle_finishes().await?;
                let usage = convert::usage_from_proto(&hb.gpus).map_err(bad)?;
                // Per-GPU utilisation and memory for /metrics, labelled by worker id.
                crate::metrics::global().observe_gpu_usage(&self.worker.to_string(), &usage);
                self.engine
                    .heartbeat(self.worker, usage)
                    .await
                    .map_err(|e| End::Status(status_of(&e)))?;
                let now = chrono::Utc::now().timestamp_millis();
                self.send(v1::SchedulerMessage {
                    kind: Some(v1::scheduler_message::Kind::HeartbeatAck(
                        v1::HeartbeatAck {
                            timestamp_unix_ms: hb.timestamp_unix_ms,
                            server_time_unix_ms: now,
                        },
                    )),
                })
                .await
            }
            Kind::Ack(ack) => {
                let key = convert::attempt_from_proto(ack.attempt.as_ref()).map_err(bad)?;
                if ack.accepted {
                    return Ok(());
                }
                info!(ti = %key.0, attempt = key.1, reason = %ack.reason, "worker declined an assignment; handing it back");
                self.held.remove(&key);
                self.places.remove(&key);
                self.hand_back().await
            }
            Kind::TaskStarted(s) => {
                let (ti, attempt) = convert::attempt_from_proto(s.attempt.as_ref()).map_err(bad)?;
                // On Fenced the engine has already sent the Kill itself.
                self.report(
                    self.engine.task_started(self.worker, ti, attempt).await,
                    ti,
                    attempt,
                    false,
                )
            }
            Kind::LogLines(l) => {
                let key = convert::attempt_from_proto(l.attempt.as_ref()).map_err(bad)?;
                let mut lines = convert::log_lines_from_proto(&l).map_err(bad)?;
                // Where the lines go is what the engine assigned, never what
                // the batch claims: a worker writes only its own attempts' logs.
                let Some((run, task)) = self.places.get(&key).cloned() else {
                    self.refuse_lines(key);
                    return Ok(());
                };
                let store = self.artifacts.as_ref().map(|a| a.store.as_ref());
                let secrets = self.secrets.get(store, run, &task).await;
                artifacts::mask_lines(&mut lines, &secrets);
                if let Err(e) = self.logs.append(run, &task, key.1, &lines).await {
                    warn!(%run, %task, attempt = key.1, error = %e, "could not store log lines");
                }
                Ok(())
            }
            Kind::TaskFinished(f) => {
                let (ti, attempt) = convert::attempt_from_proto(f.attempt.as_ref()).map_err(bad)?;
                // Not one of this worker's current attempts: the engine
                // fences it before writing anything (not even metrics) and
                // `report` answers Kill; no log is archived for it.
                let mut result = convert::result_from_proto(&f).map_err(bad)?;
                self.held.remove(&(ti, attempt));
                let place = self.places.remove(&(ti, attempt));
                let (engine, logs, ctx) = (
                    self.engine.clone(),
                    self.logs.clone(),
                    self.artifacts.clone(),
                );
                let (worker, answers) = (self.worker, self.finished_tx.clone());
                self.in_flight += 1;
                tokio::spawn(async move {
                    // The log is archived first so its URI is committed with the end.
                    if ctx.is_some()
                        && let Some((run, task)) = place
                    {
                        result.lineage.log_location =
                            artifacts::archive_log(&logs, run, &task, attempt).await;
                    }
                    let r = engine.task_finished(worker, ti, attempt, result).await;
                    let _ = answers.send((ti, attempt, r));
                });
                Ok(())
            }
            Kind::Draining(d) => {
                info!(grace_ms = d.grace_ms, reason = %d.reason, "worker draining");
                self.engine
                    .worker_draining(self.worker)
                    .await
                    .map_err(|e| End::Status(status_of(&e)))
            }
        }
    }

    /// Logs once at WARN that lines about `key`, which is not one of this
    /// worker's attempts, were refused (and nothing was written).
    fn refuse_lines(&mut self, key: Attempt) {
        // Bounded: a hostile worker cannot grow this past a few thousand.
        if self.refused.len() < 4096 && self.refused.insert(key) {
            warn!(ti = %key.0, attempt = key.1, "refused log lines about an attempt that is not assigned to this worker");
        }
    }

    /// The engine's answer to a task report: a fenced report is answered with
    /// Kill (when `kill_on_fence`), other client errors are logged, engine
    /// trouble ends the stream so the worker retries later.
    fn report(
        &mut self,
        r: crate::engine::Result<()>,
        ti: TaskInstanceId,
        attempt: i32,
        kill_on_fence: bool,
    ) -> Result<(), End> {
        match r {
            Ok(()) => Ok(()),
            // A re-sent finish whose first copy was recorded: tell the
            // worker it is done; not a refusal, nothing to kill.
            Err(EngineError::AlreadyRecorded { .. }) => {
                debug!(%ti, attempt, "duplicate finish report, already recorded");
                self.held.remove(&(ti, attempt));
                let answer = v1::SchedulerMessage {
                    kind: Some(v1::scheduler_message::Kind::FinishRecorded(
                        v1::FinishRecorded {
                            attempt: Some(convert::attempt_to_proto(ti, attempt)),
                            note: "duplicate: the end of this attempt is already recorded"
                                .to_owned(),
                        },
                    )),
                };
                // As with Kill: a worker that does not read loses nothing
                // (the next HeartbeatAck confirms the report too).
                let _ = self.out.try_send(Ok(answer));
                Ok(())
            }
            Err(EngineError::Fenced { .. }) => {
                if self.refused.len() < 4096 && self.refused.insert((ti, attempt)) {
                    warn!(%ti, attempt, "refused a report about an attempt that is not current on this worker (stale, or not assigned to this worker); telling it to kill the attempt");
                }
                self.held.remove(&(ti, attempt));
                if kill_on_fence {
                    let kill = convert::kill_to_proto(
                        ti,
                        attempt,
                        "stale report: this attempt is no longer current on this worker",
                    );
                    // try_send: a full buffer means the worker is not reading; the
                    // Kill would be moot and waiting here could stall the session.
                    if self.out.try_send(Ok(kill)).is_err() {
                        warn!(%ti, attempt, "could not queue the Kill for a fenced attempt");
                    }
                }
                Ok(())
            }
            Err(e) if e.is_client_error() => {
                warn!(%ti, attempt, error = %e, "worker report refused");
                Ok(())
            }
            Err(e) => Err(End::Status(status_of(&e))),
        }
    }

    /// Waits until every finished report in flight is committed (or refused).
    async fn settle_finishes(&mut self) -> Result<(), End> {
        while self.in_flight > 0 {
            let Some((ti, attempt, r)) = self.finished_rx.recv().await else {
                break;
            };
            self.in_flight -= 1;
            self.report(r, ti, attempt, true)?;
        }
        Ok(())
    }

    /// Re-opens the engine's channel listing what the worker holds, so the
    /// engine hands back every assignment the worker declined.
    async fn hand_back(&mut self) -> Result<(), End> {
        // Finished reports still on their way must reach the engine first, or
        // it would take their attempts for vanished ones.
        self.settle_finishes().await?;
        let reported: Vec<Attempt> = self.held.iter().copied().collect();
        let fresh = self
            .engine
            .connect_worker(self.worker, reported)
            .await
            .map_err(|e| End::Status(status_of(&e)))?;
        // What the engine kept is all this worker may still report about.
        let kept: HashSet<Attempt> = fresh.held.iter().map(|(k, _)| *k).collect();
        self.places.retain(|k, _| kept.contains(k));
        self.held.retain(|k| kept.contains(k));
        let mut old = std::mem::replace(&mut self.commands, fresh.commands);
        // What the engine queued before the swap: assignments in it were not
        // listed, so the engine handed them back too; cancels and kills still count.
        while let Ok(cmd) = old.try_recv() {
            match cmd {
                WorkerCommand::Assign(a) => {
                    debug!(ti = %a.task_instance_id, "dropping an assignment handed back on re-sync");
                }
                other => self.forward(other).await?,
            }
        }
        Ok(())
    }
}

fn bad(e: convert::ConvertError) -> End {
    End::Status(e.into())
}
