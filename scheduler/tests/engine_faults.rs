//! Persistence fault injection (in the spirit of Temporal's): a store
//! wrapper fails the N-th write — before it reaches the database, or after it
//! committed with the answer lost — for every N across a whole run of a DAG
//! with a retry, a fan-in, an open and a closed `when` gate and an
//! `all_done` join. Every such run must end exactly as the run without a
//! fault: the same state for every task, one successful attempt per
//! succeeded task, and no restart of anything.
#![allow(clippy::unwrap_used)]

mod engine_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use engine_support::faulty::{Fault, FaultyStore};
use engine_support::*;
use trainyard_core::ids::{DagId, RunId};
use trainyard_core::state::{AttemptOutcome, RunState, TaskState};
use trainyard_scheduler::clock::ManualClock;
use trainyard_scheduler::engine::{Assignment, EngineError, TaskResult, WorkerCommand};
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
