//! Poison-turn isolation: when a turn's transaction is refused for good, the
//! work of that turn is committed one unit at a time so that every healthy
//! command goes through and only the one the database refuses is held back.
//!
//! A turn batches up to [`super::TURN_CAP`] commands into one transaction.
//! Retrying that transaction is right when the database was briefly
//! unreachable, and wrong when it refuses one command's writes — a check or
//! constraint violation, a value it rejects (SQLSTATE classes 22, 23, 42;
//! SQLite's constraint codes; see [`crate::store::FailureClass`]): the same
//! batch fails forever and every run and worker report behind it waits. So
//! when a turn fails deterministically, or [`super::turn::ISOLATE_AFTER`]
//! times in a row with errors that looked transient (a refusal the
//! classification does not know), the next try is an **isolation pass**
//! from the restored memory: the deferred attempt starts, what every turn
//! owes (runs to decide again, orphaned assignments), each command in
//! order, each due timer, then starting queued runs and dispatching one
//! run or one placement at a time — each planned, committed and applied
//! alone, exactly like a turn of one.
//!
//! A unit the database refuses deterministically is **poison**:
//! - its memory changes are undone (the snapshot of its own turn), nothing
//!   of it is sent or answered as done, and the other units go on;
//! - its caller gets [`EngineError::Refused`], naming the run, task and
//!   task instance and the database's message; an error-level log line says
//!   the same and `trainyard_engine_poison_commands_total` counts it;
//! - a worker's finished report that is poison is then recorded as a
//!   *failed* attempt carrying that error, without the report's data
//!   (metrics, lineage, log location: what the database likely refused), so
//!   the task follows its retry policy and the run goes on — a serious
//!   orchestrator never leaves a run silently stuck on one bad write;
//! - when even that cannot commit (or the poison came from a timer, a
//!   decision or a placement), the tasks its writes named are **held**
//!   (quarantined): they keep the state the store has, the engine stops
//!   deciding, dispatching and handing them back on its own (which would
//!   only fail again), and their wait reason in the API and UI says why.
//!   A hold ends when a write of the task commits — a person cancels or
//!   clears it once the cause is fixed — or when the scheduler restarts;
//! - the runs its writes named are re-read from the store (memory replaced
//!   only after the read succeeded), and their pending tasks decided again.
//!
//! A unit whose error looks transient is tried again at once; if it fails
//! again while another unit of the pass committed (so the database takes
//! writes), it is poison too. If nothing commits, the database is down:
//! the pass stops, and what it did not reach waits in order for the next
//! try, as a failed turn's work always does. A newer leadership term stops
//! the pass the same way.
//!
//! Nothing here runs on the happy path: a turn that commits never looks at
//! any of it beyond an emptiness check of the holds.

use std::collections::{BTreeSet, VecDeque};

use tracing::{error, info, warn};
use trainyard_core::ids::{RunId, TaskInstanceId, WorkerId};

use super::handle::Command;
use super::memory::StoreHealth;
use super::timers::TimerKind;
use super::turn::{FailedTurn, Healing};
use super::{Core, EngineError, TaskResult};
use crate::store::{FailureClass, StoreError, Write, WriteBatch};

/// The tasks, runs and workers a batch of writes names.
#[derive(Debug, Default, Clone)]
pub(super) struct Touched {
    pub(super) tasks: BTreeSet<TaskInstanceId>,
    pub(super) runs: BTreeSet<RunId>,
    pub(super) workers: BTreeSet<WorkerId>,
}

/// Tasks (and runs, for a refused start) the engine no longer decides on its
/// own because the database refuses their writes; each with why.
#[derive(Debug, Default, Clone)]
pub(super) struct Quarantine {
    pub(super) tasks: imbl::HashMap<TaskInstanceId, String>,
    pub(super) runs: imbl::HashMap<RunId, String>,
}

impl Quarantine {
    pub(super) fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.runs.is_empty()
    }

    pub(super) fn holds_task(&self, ti: TaskInstanceId) -> bool {
        !self.tasks.is_empty() && self.tasks.contains_key(&ti)
    }

    pub(super) fn holds_run(&self, run: RunId) -> bool {
        !self.runs.is_empty() && self.runs.contains_key(&run)
    }
}

/// One piece of a failed turn's work, committed on its own.
#[derive(Debug)]
enum Work {
    /// The deferred attempt starts (`task_started` reports already answered).
    Deferred,
    /// What every turn owes first (decide re-read runs, hand back orphans).
    Prologue,
    Command(Command),
    Timer(TimerKind),
    /// Start queued runs and dispatch, one run or placement per commit.
    Settle,
    /// A finished report was refused: record the attempt as failed instead,
    /// then answer the report.
    FailAttempt {
        cmd: Command,
        worker: WorkerId,
        ti: TaskInstanceId,
        attempt: i32,
        refused: String,
    },
}

#[derive(Debug)]
struct Unit {
    work: Work,
    tries: u32,
}

impl Unit {
    fn new(work: Work) -> Self {
        Self { work, tries: 0 }
    }
}

/// How one unit ended. Only built on the failure path, one at a time, and
/// moved straight into a match: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Tried {
    Committed,
    Failed(Unit, FailedTurn),
}

/// Whether a hold falls on the run (a refused start) rather than on tasks.
fn held_none(subject: Option<TaskInstanceId>, starts_a_run: bool, touched: &Touched) -> bool {
    subject.is_none() && (starts_a_run || touched.tasks.is_empty())
}

/// The database's message on one line, bounded (it goes into answers).
fn one_line(e: &StoreError) -> String {
    let text = e.to_string().replace(['\n', '\r'], " ");
    match text.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

impl Core {
    /// The tasks, runs and workers `batch` names (a task's run from memory).
    pub(super) fn touched_by(&self, batch: &WriteBatch) -> Touched {
        let mut t = Touched::default();
        for (w, _) in &batch.writes {
            match w {
                Write::StartAttempt { id, .. }
                | Write::Metrics { id, .. }
                | Write::LogLocation { id, .. } => {
                    t.tasks.insert(*id);
                }
                Write::FinishAttempt(f) => {
                    t.tasks.insert(f.id);
                }
                Write::Transitions(ts) => t.tasks.extend(ts.iter().map(|x| x.id)),
                Write::Assign(a) => t.tasks.extend(a.iter().map(|x| x.id)),
                Write::Artifacts { producer: a, .. }
                | Write::ArtifactInputs { consumer: a, .. } => {
                    t.tasks.insert(a.task_instance_id);
                    t.runs.insert(a.run_id);
                }
                Write::Run(r) => {
                    t.runs.insert(r.id);
                }
                Write::RegisterWorker(w) => {
                    t.workers.insert(w.id);
                }
                Write::Heartbeat { id }
                | Write::WorkerState { id, .. }
                | Write::WorkerLost { id, .. } => {
                    t.workers.insert(*id);
                }
                // A DAG's record of skipped catch-up slots: no task, run or
                // worker to hold if it is refused.
                Write::SkippedSlots(_) => {}
            }
        }
        for ti in &t.tasks {
            if let Some((run, _)) = self.locate(*ti) {
                t.runs.insert(run);
            }
        }
        t
    }

    /// "task `train` (instance …) of run …, …" for the tasks `touched` names.
    fn describe(&self, touched: &Touched) -> String {
        let mut parts: Vec<String> = touched
            .tasks
            .iter()
            .map(|ti| match self.locate(*ti) {
                Some((run, idx)) => format!(
                    "task `{}` (instance {ti}) of run {run}",
                    self.runs[&run].tasks[idx].task_id
                ),
                None => format!("task instance {ti}"),
            })
            .collect();
        let named: BTreeSet<RunId> = touched
            .tasks
            .iter()
            .filter_map(|ti| self.locate(*ti).map(|(r, _)| r))
            .collect();
        parts.extend(
            touched
                .runs
                .iter()
                .filter(|r| !named.contains(r))
                .map(|r| format!("run {r}")),
        );
        parts.extend(touched.workers.iter().map(|w| format!("worker {w}")));
        if parts.is_empty() {
            "nothing it names".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// A committed turn wrote these tasks or runs: the database takes their
    /// writes again, so they are no longer held.
    pub(super) fn lift_quarantine(&mut self) {
        let touched = self.touched_by(&self.turn.writes);
        for ti in &touched.tasks {
            if self.quarantine.tasks.remove(ti).is_some() {
                info!(%ti, "the database took a held task's write; it is no longer held");
            }
        }
        for run in &touched.runs {
            self.quarantine.runs.remove(run);
        }
    }

    /// One isolation pass over a failed turn's work (see the module docs).
    pub(super) async fn isolate(&mut self, cmds: Vec<Command>) {
        let mut queue: VecDeque<Unit> = VecDeque::new();
        if !self.deferred.is_empty() {
            queue.push_back(Unit::new(Work::Deferred));
        }
        if !self.redecide.is_empty() || !self.orphaned.is_empty() {
            queue.push_back(Unit::new(Work::Prologue));
        }
        queue.extend(cmds.into_iter().map(|c| Unit::new(Work::Command(c))));
        let due = self.timers.pop_due(self.clock.now());
        queue.extend(due.into_iter().map(|t| Unit::new(Work::Timer(t))));
        queue.push_back(Unit::new(Work::Settle));
        warn!(
            units = queue.len(),
            "isolating a failed turn: committing its work one command at a time"
        );
        let mut committed = 0usize;
        let mut poisoned = 0usize;
        // A unit that failed twice (transiently) before anything committed:
        // tried again after the next unit commits, which shows the database
        // takes writes (then it is poison), or kept if nothing commits.
        let mut held: Option<Unit> = None;
        while let Some(unit) = queue.pop_front() {
            let (mut unit, failed) = match self.try_unit(unit, &mut committed, &mut poisoned).await
            {
                Tried::Committed => {
                    committed += 1;
                    if let Some(h) = held.take() {
                        queue.push_front(h);
                    }
                    continue;
                }
                Tried::Failed(unit, failed) => (unit, failed),
            };
            match failed.error.failure_class() {
                FailureClass::NotLeader => {
                    let first: Vec<Unit> = held.take().into_iter().chain([unit]).collect();
                    self.stop_isolation(first, queue, failed);
                    return;
                }
                FailureClass::Deterministic => {
                    poisoned += 1;
                    self.poisoned(unit, failed, &mut queue).await;
                }
                FailureClass::Conflict | FailureClass::Transient => {
                    if unit.tries == 0 {
                        unit.tries += 1;
                        if failed.error.is_conflict() {
                            self.resync_now().await;
                        }
                        queue.push_front(unit);
                    } else if committed > 0 {
                        // Others commit, this one does not: it is the cause,
                        // whatever its error says.
                        poisoned += 1;
                        self.poisoned(unit, failed, &mut queue).await;
                    } else if held.is_none() && !queue.is_empty() {
                        held = Some(unit);
                    } else {
                        let first: Vec<Unit> = held.take().into_iter().chain([unit]).collect();
                        self.stop_isolation(first, queue, failed);
                        return;
                    }
                }
            }
        }
        if let Some(h) = held {
            // Nothing after it committed either: an outage, not a poison.
            let e = FailedTurn {
                error: StoreError::Unavailable(
                    "no write of the isolation pass committed".to_owned(),
                ),
                answered: Vec::new(),
                fired: Vec::new(),
                touched: Touched::default(),
                starts_run: false,
            };
            self.stop_isolation(vec![h], VecDeque::new(), e);
            return;
        }
        warn!(
            committed,
            poisoned, "isolation pass done; the engine goes on with whole turns"
        );
        self.healing = Healing::default();
        self.publish(StoreHealth::Ok);
    }

    /// Plans, commits and applies one unit as a turn of its own.
    async fn try_unit(&mut self, unit: Unit, committed: &mut usize, poisoned: &mut usize) -> Tried {
        let tries = unit.tries;
        let mark = self.deferred.len();
        self.begin_turn();
        // Attempt starts a unit defers commit with it, so a refused one is
        // charged to the report that made it.
        self.turn.flush = true;
        let mut aside: Option<Work> = None;
        match unit.work {
            Work::Deferred | Work::Prologue => {
                self.prologue().await;
                aside = Some(unit.work);
            }
            Work::Command(cmd) => {
                self.prologue().await;
                let answer = self.handle(&cmd).await;
                let answer = if cmd.retried_on_failure() {
                    match answer.into_store_error() {
                        Ok(e) => {
                            self.fail_turn(e);
                            None
                        }
                        Err(a) => Some(a),
                    }
                } else {
                    Some(answer)
                };
                match answer {
                    Some(a) if self.turn.failed.is_none() => {
                        if std::mem::take(&mut self.turn.direct) {
                            cmd.respond(a);
                        } else {
                            self.turn.answered.push((cmd, a));
                        }
                    }
                    _ => aside = Some(Work::Command(cmd)),
                }
            }
            Work::Timer(timer) => {
                self.prologue().await;
                self.fire(timer.clone()).await;
                self.turn.direct = false;
                aside = Some(Work::Timer(timer));
            }
            Work::Settle => return self.settle_one_by_one(committed, poisoned).await,
            Work::FailAttempt {
                cmd,
                worker,
                ti,
                attempt,
                refused,
            } => {
                self.prologue().await;
                let result = TaskResult::failed(refused.clone());
                // Fenced: a re-read found the attempt already ended; fine.
                let _ = self.task_finished(worker, ti, attempt, result).await;
                let message = format!(
                    "{refused}; the attempt was recorded as failed with this error instead"
                );
                let done = Work::FailAttempt {
                    cmd,
                    worker,
                    ti,
                    attempt,
                    refused,
                };
                match self.try_finish_turn(false).await {
                    Ok(()) => {
                        if let Work::FailAttempt { cmd, .. } = done {
                            cmd.fail(|| EngineError::Refused(message.clone()));
                        }
                        return Tried::Committed;
                    }
                    Err(f) => {
                        self.forget_deferred_since(mark);
                        return Tried::Failed(Unit { work: done, tries }, f);
                    }
                }
            }
        }
        match self.try_finish_turn(false).await {
            Ok(()) => {
                if let Some(Work::Command(cmd)) = aside {
                    // Not reached: a command set aside failed its turn. Kept
                    // for a later turn rather than dropped unanswered.
                    self.backlog.push_back(cmd);
                }
                Tried::Committed
            }
            Err(mut f) => {
                self.forget_deferred_since(mark);
                let work = match aside {
                    Some(w) => w,
                    None => match f.answered.pop() {
                        Some((cmd, _)) => Work::Command(cmd),
                        // Its direct write committed and was answered; what
                        // failed after it was the turn's own settling.
                        None => return Tried::Committed,
                    },
                };
                Tried::Failed(Unit { work, tries }, f)
            }
        }
    }

    /// A failed unit's deferred starts are undone with its memory.
    fn forget_deferred_since(&mut self, mark: usize) {
        self.deferred.writes.truncate(mark);
        if self.deferred.is_empty() {
            self.deferred_since = None;
        }
    }

    /// Starts queued runs and places ready tasks one per commit; a refused
    /// one is held (its tasks, or its run for a start) and the rest go on.
    async fn settle_one_by_one(&mut self, committed: &mut usize, poisoned: &mut usize) -> Tried {
        self.one_at_a_time = true;
        let outcome = loop {
            if self.turn.snapshot.is_none() {
                self.begin_turn();
                self.turn.flush = true;
            }
            self.prologue().await;
            self.settle().await;
            let wrote = !self.turn.writes.is_empty() || self.turn.failed.is_some();
            match self.try_finish_turn(false).await {
                Ok(()) if !wrote => break Tried::Committed,
                Ok(()) => *committed += 1,
                Err(f)
                    if f.error.is_deterministic()
                        && !(f.touched.tasks.is_empty() && f.touched.runs.is_empty()) =>
                {
                    *poisoned += 1;
                    self.hold(&f, "a start or placement", None);
                    self.resync_now().await;
                }
                Err(f) => break Tried::Failed(Unit::new(Work::Settle), f),
            }
        };
        self.one_at_a_time = false;
        outcome
    }

    /// Holds the tasks (and runs) a refused unit's writes named, logs it,
    /// counts it, and re-reads their runs.
    fn hold(&mut self, f: &FailedTurn, what: &str, subject: Option<TaskInstanceId>) -> String {
        let about = self.describe(&f.touched);
        let db = one_line(&f.error);
        let reason = format!(
            "held: the scheduler's database refuses this task's writes ({db}); fix the cause, \
             then cancel or clear the task (or restart the scheduler) to try again"
        );
        crate::metrics::global().engine_poison_commands.inc();
        error!(
            what,
            about = %about,
            error = %f.error,
            "the database refuses these writes for good; holding these tasks (the rest goes on)"
        );
        // The task the unit was about when it has one (a report, a timer):
        // the decisions its writes carried for other tasks are made again
        // once it moves. A start holds its run rather than every root task.
        let starts_a_run = subject.is_none() && f.starts_run;
        let held: Vec<TaskInstanceId> = match subject {
            Some(ti) => vec![ti],
            None if starts_a_run => Vec::new(),
            None => f.touched.tasks.iter().copied().collect(),
        };
        for ti in held {
            self.quarantine.tasks.insert(ti, reason.clone());
        }
        let run_writes_only = held_none(subject, starts_a_run, &f.touched);
        for run in &f.touched.runs {
            if run_writes_only && !self.quarantine.runs.contains_key(run) {
                self.quarantine.runs.insert(*run, reason.clone());
            }
            self.resync.insert(*run);
        }
        about
    }

    /// A poison unit: answer, record or hold, re-read (see the module docs).
    async fn poisoned(&mut self, unit: Unit, f: FailedTurn, queue: &mut VecDeque<Unit>) {
        let db = one_line(&f.error);
        let about = self.describe(&f.touched);
        match unit.work {
            Work::Command(cmd) => {
                crate::metrics::global().engine_poison_commands.inc();
                if let Command::TaskFinished(worker, ti, attempt, result, _) = &cmd
                    && self.locate(*ti).is_some()
                {
                    let (worker, ti, attempt) = (*worker, *ti, *attempt);
                    let task = self
                        .locate(ti)
                        .map(|(run, idx)| {
                            format!("task `{}` of run {run}", self.runs[&run].tasks[idx].task_id)
                        })
                        .unwrap_or_default();
                    error!(
                        %ti, attempt, %worker, outcome = ?result.outcome, writes = %about, error = %f.error,
                        "the database refuses the writes of this finished report for good; \
                         recording the attempt as failed instead"
                    );
                    let refused = format!(
                        "the scheduler's database refused the report of attempt {attempt} of \
                         {task} (task instance {ti}): {db}"
                    );
                    queue.push_front(Unit::new(Work::FailAttempt {
                        cmd,
                        worker,
                        ti,
                        attempt,
                        refused,
                    }));
                    self.resync.extend(f.touched.runs.iter().copied());
                } else {
                    error!(
                        command = ?cmd, writes = %about, error = %f.error,
                        "the database refuses the writes of this command for good; \
                         answered it with the error (the rest of its turn goes on)"
                    );
                    let message = format!(
                        "the scheduler's database refused the writes of this request for \
                         {about}: {db}; nothing of it was saved"
                    );
                    cmd.fail(|| EngineError::Refused(message.clone()));
                    self.resync.extend(f.touched.runs.iter().copied());
                }
            }
            Work::FailAttempt {
                cmd, refused, ti, ..
            } => {
                // Even the failure cannot be written: hold the task.
                self.hold(
                    &f,
                    "recording a refused report's attempt as failed",
                    Some(ti),
                );
                let message = format!(
                    "{refused}; recording the attempt as failed was refused too, so the task is \
                     held as the store has it (see its wait reason)"
                );
                cmd.fail(|| EngineError::Refused(message.clone()));
            }
            Work::Timer(timer) => {
                let subject = match &timer {
                    TimerKind::Retry { ti, .. } | TimerKind::Timeout { ti, .. } => Some(*ti),
                    _ => None,
                };
                self.hold(&f, &format!("{timer:?}"), subject);
            }
            Work::Prologue => {
                self.hold(&f, "deciding re-read runs again", None);
                if f.touched.tasks.is_empty() {
                    // Nothing to hold, so nothing would change on a retry:
                    // leave those decisions to the runs' next events.
                    self.redecide.clear();
                    self.orphaned.clear();
                }
            }
            Work::Deferred => self.split_deferred().await,
            Work::Settle => {
                self.hold(&f, "a start or placement", None);
            }
        }
        self.resync_now().await;
        // A re-read run is decided again first, on its own.
        if !self.redecide.is_empty() || !self.orphaned.is_empty() {
            queue.push_front(Unit::new(Work::Prologue));
        }
    }

    /// The deferred starts were refused together: commit each alone; a
    /// refused one holds its task and its run is re-read.
    async fn split_deferred(&mut self) {
        let writes = std::mem::take(&mut self.deferred.writes);
        self.deferred_since = None;
        let mut rest = writes.into_iter();
        while let Some((write, at)) = rest.next() {
            let batch = WriteBatch::one(write.clone(), at);
            match self.store.commit_batch(&batch, &self.opts.actor).await {
                Ok(()) => {}
                Err(e) if e.is_deterministic() => {
                    let f = FailedTurn {
                        touched: self.touched_by(&batch),
                        error: e,
                        answered: Vec::new(),
                        fired: Vec::new(),
                        starts_run: false,
                    };
                    self.hold(&f, "an attempt start", None);
                }
                Err(e) => {
                    // Not a refusal: keep this and the rest for later.
                    warn!(error = %e, "a deferred attempt start failed; kept for the next turn");
                    let now = tokio::time::Instant::now();
                    self.deferred.writes.push((write, at));
                    self.deferred.writes.extend(rest);
                    self.deferred_since.get_or_insert(now);
                    return;
                }
            }
        }
    }

    /// Re-reads the runs marked for it now; one that cannot be read stays
    /// marked for the next heal.
    async fn resync_now(&mut self) {
        let runs: Vec<_> = std::mem::take(&mut self.resync).into_iter().collect();
        for run_id in runs {
            if let Err(e) = self.resync_run(run_id).await {
                warn!(run = %run_id, error = %e, "could not re-read the run; trying again later");
                self.resync.insert(run_id);
            }
        }
    }

    /// The database is down (or the term is over): what the pass did not
    /// reach waits, in order, for the next try.
    fn stop_isolation(&mut self, first: Vec<Unit>, rest: VecDeque<Unit>, failed: FailedTurn) {
        let now = self.clock.now();
        let mut again = VecDeque::new();
        for unit in first.into_iter().chain(rest) {
            match unit.work {
                Work::Command(cmd) => again.push_back(cmd),
                Work::Timer(t) => self.timers.arm(now, t),
                Work::FailAttempt {
                    cmd,
                    worker,
                    ti,
                    attempt,
                    refused,
                } => {
                    // The report was refused for good already; its failure
                    // is recorded by a later turn's settling.
                    self.unrenderable
                        .push((worker, ti, attempt, refused.clone()));
                    let message = format!("{refused}; the attempt will be recorded as failed");
                    cmd.fail(|| EngineError::Refused(message.clone()));
                }
                Work::Deferred | Work::Prologue | Work::Settle => {}
            }
        }
        again.append(&mut self.backlog);
        self.backlog = again;
        let e = failed.error;
        self.turn_failed(&e);
        self.healing.isolate = !e.is_not_leader();
    }
}
