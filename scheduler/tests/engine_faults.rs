//! Persistence fault injection (in the spirit of Temporal's): a store
//! wrapper fails the N-th write — before it reaches the database, or after it
//! committed with the answer lost — for every N across a whole run of a DAG
//! with a retry, a fan-in, an open and a closed `when` gate and an
//! `all_done` join. Every such run must end exactly as the run without a
//! fault: the same state for every task, one successful attempt per
//! succeeded task, and no restart of anything.
//!
//! Poison turns: the wrapper refuses, deterministically, every batch that
//! carries a write for one chosen task instance while other batches commit.
//! The report that leads to it shares its turn with healthy reports of
//! other runs; the engine must isolate it — the others commit and their
//! runs finish, the poisoned report's caller gets the error, nothing waits
//! for a restart, and the poisoned run stays exactly what the store says.
#![allow(clippy::unwrap_used)]

mod engine_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use engine_support::faulty::{Fault, FaultyStore, PoisonScope, Refusal};
use engine_support::*;
use trainyard_core::ids::{DagId, RunId};
use trainyard_core::state::{AttemptOutcome, RunState, TaskState};
use trainyard_scheduler::clock::ManualClock;
use trainyard_scheduler::engine::{Assignment, EngineError, TaskResult, WorkerCommand};
use trainyard_scheduler::store::TaskInstance;
use trainyard_scheduler::store::{EngineStore, ReadStore};

const DAG: &str = r#"
id = "faults"

[defaults]
retry_delay = "1s"

[tasks.ingest]
command = ["true"]

[tasks.train_a]
depends_on = ["ingest"]
command = ["true"]
retries = 2

[tasks.train_b]
depends_on = ["ingest"]
command = ["true"]

[tasks.evaluate]
depends_on = ["train_a", "train_b"]
command = ["true"]

[tasks.deploy]
depends_on = ["evaluate"]
when = "metrics.evaluate.auc >= 0.85"
command = ["true"]

[tasks.rollback]
depends_on = ["evaluate"]
when = "metrics.evaluate.auc < 0.5"
command = ["true"]

[tasks.report]
depends_on = ["deploy", "rollback"]
trigger_rule = "all_done"
command = ["true"]
"#;

/// What a run ended as: its state, and per task (state, successful attempts).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    run: RunState,
    tasks: BTreeMap<String, (TaskState, usize)>,
}

/// The worker's script: `train_a` fails its first attempt, `evaluate` reports auc 0.9.
fn result_for(task: &str, attempt: i32) -> TaskResult {
    match (task, attempt) {
        ("train_a", 1) => TaskResult::failed("exit 1 (scripted)"),
        ("evaluate", _) => TaskResult::succeeded().with_metrics([("auc".to_owned(), 0.9)]),
        _ => TaskResult::succeeded(),
    }
}

/// A report the engine fenced (its attempt ended in a retried turn), or
/// answered as already recorded (its commit's answer was lost), is fine.
fn tolerate(r: Result<(), EngineError>) {
    match r {
        Ok(()) | Err(EngineError::Fenced { .. } | EngineError::AlreadyRecorded { .. }) => {}
        Err(e) => panic!("worker report failed: {e}"),
    }
}

/// The fake worker runs one assignment by the script: started, then its result.
async fn run_assignment(h: &Harness, w: &FakeWorker, a: &Assignment) {
    tolerate(
        h.handle
            .task_started(w.id, a.task_instance_id, a.attempt)
            .await,
    );
    let result = result_for(a.task_id.as_str(), a.attempt);
    tolerate(
        h.handle
            .task_finished(w.id, a.task_instance_id, a.attempt, result)
            .await,
    );
}

async fn run_once(db: TestDb, fault: Option<(u64, Fault)>) -> (Outcome, u64, u64) {
    let faulty = FaultyStore::new(db.store.clone());
    let store: Arc<dyn EngineStore> = faulty.clone();
    let clock = ManualClock::new(utc(2026, 6, 1, 0, 0));
    let h = Harness::start_on(db, store, clock, |o| {
        o.heal_backoff = Duration::from_millis(1);
        o.heal_max_backoff = Duration::from_millis(5);
    })
    .await;
    let dag: DagId = h.add_dag(DAG).await;
    let mut w = FakeWorker::join(&h.handle, registration("w1", 4, &[])).await;
    let base = faulty.writes();
    if let Some((n, f)) = fault {
        faulty.fail_write(base + n, f);
    }
    // A user retries a trigger that failed; the idempotency key keeps it one run.
    let run: RunId = loop {
        match h
            .handle
            .trigger(dag.clone(), Default::default(), Some("once".into()), None)
            .await
        {
            Ok(run) => break run,
            Err(EngineError::Store(e)) if e.is_retryable() => continue,
            Err(e) => panic!("trigger failed: {e}"),
        }
    };
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 500, "the run did not finish (fault {fault:?})");
        // Everything sent so far is handled and committed.
        h.handle.barrier().await.unwrap();
        match w.rx.try_recv() {
            Ok(WorkerCommand::Assign(a)) => {
                run_assignment(&h, &w, &a).await;
                continue;
            }
            Ok(_) => continue, // a Kill for a fenced attempt
            Err(_) => {}
        }
        let state = h.db.store.get_run(run).await.unwrap().state;
        if state.is_terminal() {
            break;
        }
        // Nothing to run and not done: a retry waits on the clock.
        let waiting =
            h.db.store
                .task_instances(run)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|t| t.next_retry_at.filter(|_| t.state == TaskState::UpForRetry))
                .min();
        match waiting {
            Some(at) => {
                h.clock.set(at.max(h.clock.now_utc()));
                h.settle().await;
            }
            None => {
                // An assignment may still be on its way after a healed turn.
                let cmd = tokio::time::timeout(WAIT, w.rx.recv())
                    .await
                    .unwrap_or_else(|_| panic!("stuck with nothing to run (fault {fault:?})"));
                if let Some(WorkerCommand::Assign(a)) = cmd {
                    run_assignment(&h, &w, &a).await;
                }
            }
        }
    }
    let outcome = outcome_of(h.db.store.as_ref(), run).await;
    // Exactly one run for the DAG: retried triggers did not duplicate it.
    assert_eq!(h.runs_of(&dag).await.len(), 1, "fault {fault:?}");
    let writes = faulty.writes() - base;
    let injected = faulty.injected();
    let (db, _) = h.crash().await;
    db.cleanup().await;
    (outcome, writes, injected)
}

async fn outcome_of(store: &dyn ReadStore, run: RunId) -> Outcome {
    let attempts = store.run_attempts(run).await.unwrap();
    let mut tasks = BTreeMap::new();
    for t in store.task_instances(run).await.unwrap() {
        let wins = attempts
            .iter()
            .filter(|a| a.task_instance_id == t.id && a.outcome == Some(AttemptOutcome::Success))
            .count();
        tasks.insert(t.task_id.to_string(), (t.state, wins));
    }
    Outcome {
        run: store.get_run(run).await.unwrap().state,
        tasks,
    }
}

fn expected() -> Outcome {
    let mut tasks = BTreeMap::new();
    for t in [
        "ingest", "train_a", "train_b", "evaluate", "deploy", "report",
    ] {
        tasks.insert(t.to_owned(), (TaskState::Success, 1));
    }
    tasks.insert("rollback".to_owned(), (TaskState::Skipped, 0));
    Outcome {
        run: RunState::Success,
        tasks,
    }
}

async fn every_write_fails_once(postgres: bool, fault: Fault) {
    let db = || async move {
        if postgres {
            TestDb::postgres().await
        } else {
            TestDb::sqlite().await
        }
    };
    let (clean, total, _) = run_once(db().await, None).await;
    assert_eq!(clean, expected(), "the run without faults");
    assert!(total >= 5, "a whole run takes several writes, saw {total}");
    println!("{fault:?}: failing each of the run's {total} writes once");
    for n in 1..=total {
        let (outcome, _, injected) = run_once(db().await, Some((n, fault))).await;
        assert_eq!(injected, 1, "write #{n} of {total} was hit");
        assert_eq!(outcome, clean, "write #{n} of {total} failed {fault:?}");
    }
}

#[tokio::test]
async fn every_write_refused_once_on_sqlite_ends_like_the_clean_run() {
    every_write_fails_once(false, Fault::Before).await;
}

#[tokio::test]
async fn every_write_refused_once_on_postgres_ends_like_the_clean_run() {
    every_write_fails_once(true, Fault::Before).await;
}

#[tokio::test]
async fn every_write_committed_with_its_answer_lost_on_sqlite_ends_like_the_clean_run() {
    every_write_fails_once(false, Fault::After).await;
}

#[tokio::test]
async fn every_write_committed_with_its_answer_lost_on_postgres_ends_like_the_clean_run() {
    every_write_fails_once(true, Fault::After).await;
}

const CHAIN: &str = r#"
id = "poison"
max_active_runs = 3

[tasks.train]
command = ["true"]

[tasks.publish]
depends_on = ["train"]
command = ["true"]
"#;

/// How the poisoned report's run must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The report's metrics were refused; the attempt is recorded as failed.
    RecordedFailed,
    /// Every write of the task is refused; it is held as the store has it.
    Held,
}

async fn task_of(store: &dyn ReadStore, run: RunId, task: &str) -> TaskInstance {
    store
        .task_instances(run)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.task_id.as_str() == task)
        .unwrap()
}

/// Three runs of `train → publish`; the three `train` reports arrive in
/// one turn and run 2's is poisoned (`scope`, `refusal`).
async fn poisoned_report_is_isolated(
    db: TestDb,
    scope: PoisonScope,
    refusal: Refusal,
    expect: Expect,
) {
    let faulty = FaultyStore::new(db.store.clone());
    let store: Arc<dyn EngineStore> = faulty.clone();
    let clock = ManualClock::new(utc(2026, 6, 1, 0, 0));
    let mut h = Harness::start_on(db, store, clock, |o| {
        o.heal_backoff = Duration::from_millis(1);
        o.heal_max_backoff = Duration::from_millis(5);
    })
    .await;
    let poison_counter = trainyard_scheduler::metrics::global()
        .engine_poison_commands
        .get();
    let dag = h.add_dag(CHAIN).await;
    let mut w = FakeWorker::join(&h.handle, registration("w1", 8, &[])).await;
    let runs = [
        h.trigger(&dag).await,
        h.trigger(&dag).await,
        h.trigger(&dag).await,
    ];
    let mut trains: BTreeMap<RunId, Assignment> = BTreeMap::new();
    while trains.len() < 3 {
        let a = w.next_assign().await;
        w.start(&a).await;
        trains.insert(a.run_id, a);
    }
    // The starts are committed before the database turns on the task.
    h.handle.barrier().await.unwrap();
    let bad = trains[&runs[1]].clone();
    faulty.poison(bad.task_instance_id, scope, refusal);
    let report = |run: RunId| {
        let a = trains[&run].clone();
        let handle = h.handle.clone();
        let worker = w.id;
        async move {
            let result = TaskResult::succeeded().with_metrics([("loss".to_owned(), 0.25)]);
            handle
                .task_finished(worker, a.task_instance_id, a.attempt, result)
                .await
        }
    };
    // Sent together: they reach the engine before it runs again, so they
    // share one turn (one transaction) until it is isolated.
    let (r0, r1, r2) = tokio::join!(report(runs[0]), report(runs[1]), report(runs[2]));
    r0.unwrap();
    r2.unwrap();
    let refused = match r1 {
        Err(EngineError::Refused(msg)) => msg,
        other => panic!("the poisoned report must be refused with the reason, got {other:?}"),
    };
    assert!(
        refused.contains(&bad.task_instance_id.to_string())
            && refused.contains(&bad.run_id.to_string())
            && refused.contains("`train`")
            && refused.contains("injected"),
        "the error names the task, its run and the database's reason: {refused}"
    );
    assert!(
        faulty.refused_shared() >= 1,
        "the poisoned write shared a transaction with healthy reports before isolation"
    );
    // The healthy runs go on without any restart.
    for _ in [runs[0], runs[2]] {
        let a = w.next_assign().await;
        assert_eq!(a.task_id.as_str(), "publish");
        assert_ne!(
            a.run_id, runs[1],
            "nothing of the poisoned run is dispatched"
        );
        w.succeed(&a).await;
    }
    for run in [runs[0], runs[2]] {
        h.wait_run(run, RunState::Success).await;
        let metrics = h.db.store.run_metrics(run).await.unwrap();
        assert_eq!(metrics.len(), 1, "healthy reports keep their metrics");
    }
    assert!(
        h.handle.store_health().is_ok(),
        "{}",
        h.handle.store_health()
    );
    assert!(
        trainyard_scheduler::metrics::global()
            .engine_poison_commands
            .get()
            > poison_counter,
        "trainyard_engine_poison_commands_total counts the poison"
    );
    // Nothing of the refused report reached the store.
    assert!(h.db.store.run_metrics(runs[1]).await.unwrap().is_empty());
    match expect {
        Expect::RecordedFailed => {
            // The attempt is recorded as failed with the refusal; the run
            // follows its rules (no retries: publish upstream_failed).
            h.wait_run(runs[1], RunState::Failed).await;
            let train = task_of(h.db.store.as_ref(), runs[1], "train").await;
            assert_eq!(train.state, TaskState::Failed);
            let attempts = h.db.store.attempts(train.id).await.unwrap();
            let error = attempts[0].error.clone().unwrap_or_default();
            assert!(error.contains("refused"), "the attempt says why: {error}");
            let publish = task_of(h.db.store.as_ref(), runs[1], "publish").await;
            assert_eq!(publish.state, TaskState::UpstreamFailed);
            assert!(w.idle(), "no assignment for the poisoned run");
        }
        Expect::Held => {
            // Held as the store has it (running), with a visible reason.
            let train = task_of(h.db.store.as_ref(), runs[1], "train").await;
            assert_eq!(train.state, TaskState::Running);
            let reasons = h.handle.task_wait_reasons(runs[1]).await.unwrap();
            let why = reasons.get(&bad.task_id).cloned().unwrap_or_default();
            assert!(
                why.starts_with("held:") && why.contains("injected"),
                "{reasons:?}"
            );
            // Memory was not half-applied: once the database takes the
            // writes again, the same report is current and commits.
            faulty.cure();
            let result = TaskResult::succeeded().with_metrics([("loss".to_owned(), 0.25)]);
            h.handle
                .task_finished(w.id, bad.task_instance_id, bad.attempt, result)
                .await
                .unwrap();
            let a = w.next_assign().await;
            assert_eq!((a.run_id, a.task_id.as_str()), (runs[1], "publish"));
            w.succeed(&a).await;
            h.wait_run(runs[1], RunState::Success).await;
            let reasons = h.handle.task_wait_reasons(runs[1]).await.unwrap();
            assert!(
                reasons.is_empty(),
                "the hold ended with the commit: {reasons:?}"
            );
        }
    }
    let (db, _) = h.crash().await;
    db.cleanup().await;
}

#[tokio::test]
async fn a_report_whose_metrics_the_database_refuses_is_recorded_failed_on_sqlite() {
    let db = TestDb::sqlite().await;
    let (scope, refusal) = (PoisonScope::ReportMetrics, Refusal::CheckViolation);
    poisoned_report_is_isolated(db, scope, refusal, Expect::RecordedFailed).await;
}

#[tokio::test]
async fn a_report_whose_metrics_the_database_refuses_is_recorded_failed_on_postgres() {
    let db = TestDb::postgres().await;
    let (scope, refusal) = (PoisonScope::ReportMetrics, Refusal::CheckViolation);
    poisoned_report_is_isolated(db, scope, refusal, Expect::RecordedFailed).await;
}

#[tokio::test]
async fn a_task_whose_every_write_is_refused_is_held_and_the_rest_finishes_on_sqlite() {
    let db = TestDb::sqlite().await;
    let (scope, refusal) = (PoisonScope::AnyWrite, Refusal::CheckViolation);
    poisoned_report_is_isolated(db, scope, refusal, Expect::Held).await;
}

#[tokio::test]
async fn a_task_whose_every_write_is_refused_is_held_and_the_rest_finishes_on_postgres() {
    let db = TestDb::postgres().await;
    let (scope, refusal) = (PoisonScope::AnyWrite, Refusal::CheckViolation);
    poisoned_report_is_isolated(db, scope, refusal, Expect::Held).await;
}

/// A refusal the classification takes for an outage is isolated too, once
/// the turn has failed a few times while other writes commit.
#[tokio::test]
async fn a_refusal_that_looks_transient_is_isolated_after_repeated_failures_on_sqlite() {
    let db = TestDb::sqlite().await;
    let (scope, refusal) = (PoisonScope::ReportMetrics, Refusal::LooksTransient);
    poisoned_report_is_isolated(db, scope, refusal, Expect::RecordedFailed).await;
}
