//! Concurrency and crash-safety cases: claimers and reporters racing, and a
//! transaction that dies half-way.

use std::collections::HashSet;
use std::sync::Arc;

use trainyard_core::ids::RunId;
use trainyard_core::state::{AttemptOutcome, TaskState};
use trainyard_scheduler::store::{Assignment, FinishAttempt, RunCreation, StoreError, Write};

use crate::harness::*;

pub async fn concurrent_claimers_claim_each_task_exactly_once(db: &TestDb) {
    const TASKS: usize = 1_000;
    const CHUNK: usize = 7;
    let (run, tasks) = seed_run(&*db.store, "wide", TASKS, TaskState::Ready).await;
    let chunks: Arc<Vec<Vec<Assignment>>> = Arc::new(
        tasks
            .chunks(CHUNK)
            .map(|c| {
                c.iter()
                    .map(|t| Assignment {
                        id: t.id,
                        attempt: 0,
                        worker_id: None,
                        gpus: Vec::new(),
                    })
                    .collect()
            })
            .collect(),
    );
    // Eight independent stores (as eight scheduler replicas would be), each
    // assigning every chunk of the same tasks (half of them walking the list
    // backwards, so they collide) through `Write::Assign`, the engine's claim.
    // A chunk another replica took (or holds locked) fails whole; a replica
    // then looks whether it was taken and tries again later if not.
    let mut claimers = Vec::new();
    for i in 0..8 {
        let store = db.replica().await;
        let chunks = chunks.clone();
        claimers.push(tokio::spawn(async move {
            let mut order: Vec<usize> = (0..chunks.len()).collect();
            if i % 2 == 1 {
                order.reverse();
            }
            order.rotate_left(i * chunks.len() / 8);
            let mut mine = Vec::new();
            while !order.is_empty() {
                let mut left = Vec::new();
                for c in order {
                    let write = Write::Assign(chunks[c].clone());
                    match store.commit_one(write, &format!("replica-{i}"), t0()).await {
                        Ok(()) => mine.extend(chunks[c].iter().map(|a| a.id)),
                        Err(e) if e.is_conflict() => {
                            let first = store.get_task_instance(chunks[c][0].id).await.unwrap();
                            if first.state == TaskState::Ready {
                                left.push(c);
                            }
                        }
                        Err(e) => panic!("replica-{i}: {e}"),
                    }
                }
                order = left;
            }
            store.close().await;
            mine
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(
        all.len(),
        TASKS,
        "claimed {} times for {TASKS} tasks",
        all.len()
    );
    assert_eq!(unique.len(), TASKS);
    let s = &*db.store;
    assert!(
        s.task_instances(run.id)
            .await
            .unwrap()
            .iter()
            .all(|t| t.attempt == 1)
    );
    assert_eq!(s.run_attempts(run.id).await.unwrap().len(), TASKS);
    let events = s.run_events(run.id, None, 10_000).await.unwrap();
    assert_eq!(
        events.iter().filter(|e| e.to_state == "assigned").count(),
        TASKS
    );
    assert!(
        s.task_instances(run.id)
            .await
            .unwrap()
            .iter()
            .all(|t| t.state == TaskState::Assigned)
    );
}

pub async fn concurrent_reporters_exactly_one_wins(db: &TestDb) {
    let (run, tasks) = seed_run(&*db.store, "d", 1, TaskState::Ready).await;
    let id = tasks[0].id;
    db.store
        .assign(&[&tasks[0]], None, "scheduler", t0())
        .await
        .unwrap();
    db.store.start_attempt(id, 1, "worker", t0()).await.unwrap();
    // Eight retried RPCs of the same report, half saying success, half failure.
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut reporters = Vec::new();
    for i in 0..8 {
        let store = db.store.clone();
        let barrier = barrier.clone();
        reporters.push(tokio::spawn(async move {
            let (to, outcome) = if i % 2 == 0 {
                (TaskState::Success, AttemptOutcome::Success)
            } else {
                (TaskState::Failed, AttemptOutcome::Failed)
            };
            let report = FinishAttempt {
                id,
                attempt: 1,
                from: TaskState::Running,
                to,
                outcome,
                exit_code: Some(i),
                error: None,
                log_location: None,
                next_retry_at: None,
            };
            barrier.wait().await;
            store
                .finish_attempt(report, &format!("reporter-{i}"), t0() + secs(1))
                .await
        }));
    }
    let mut wins = 0;
    for r in reporters {
        match r.await.unwrap() {
            Ok(()) => wins += 1,
            Err(e @ StoreError::TaskConflict { .. }) => {
                assert!(
                    e.to_string()
                        .contains("expected state running attempt 1, found"),
                    "{e}"
                )
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(wins, 1);
    let events = db.store.run_events(run.id, None, 10_000).await.unwrap();
    let finishes: Vec<_> = events
        .iter()
        .filter(|e| e.from_state.as_deref() == Some("running"))
        .collect();
    assert_eq!(finishes.len(), 1, "{events:?}");
    let t = db.store.get_task_instance(id).await.unwrap();
    assert_eq!(t.state.as_str(), finishes[0].to_state);
    let attempt = &db.store.attempts(id).await.unwrap()[0];
    // The winner's exit code, consistent with the state it set.
    let code = attempt.exit_code.unwrap();
    assert_eq!(code % 2 == 0, t.state == TaskState::Success);
}

/// A run whose task insert fails half-way leaves nothing: not the run row,
/// not the first chunk of task rows, not its event.
pub async fn failed_insert_mid_run_leaves_no_run(db: &TestDb) {
    let s = &*db.store;
    let version = seed_dag(s, "d").await;
    let tasks = |n| {
        (0..n)
            .map(|i| task(&format!("t{i}"), TaskState::Pending))
            .collect()
    };
    let first = manual_run("d", version, tasks(1000));
    assert!(matches!(
        s.create_run(first, "api", t0()).await.unwrap(),
        RunCreation::Created { .. }
    ));
    // A trap the store's validation cannot see: only one `t700` of DAG `d` may
    // exist, so the second run's insert dies in its second chunk of rows,
    // after the run row and 500 task rows were written in its transaction.
    db.exec("CREATE UNIQUE INDEX trap ON task_instances (task_id) WHERE task_id = 't700' AND dag_id = 'd'")
        .await;
    let second = manual_run("d", version, tasks(1000));
    let id = second.id;
    let err = s.create_run(second, "api", t0()).await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err}");
    assert!(s.get_run(id).await.unwrap_err().is_not_found());
    assert!(s.task_instances(id).await.unwrap().is_empty());
    assert!(s.run_events(id, None, 10_000).await.unwrap().is_empty());
    // The store keeps working.
    assert_eq!(seed_run(s, "e", 3, TaskState::Ready).await.1.len(), 3);
}

/// Postgres: the backend running a big create-run transaction is terminated
/// (as if the scheduler's connection dropped mid-write). The run is either
/// entirely there or not at all — never half-written.
pub async fn killed_transaction_leaves_no_half_written_run(db: &TestDb) {
    const TASKS: usize = 20_000;
    let s = db.store.clone();
    let version = seed_dag(&*s, "big").await;
    let tasks = (0..TASKS)
        .map(|i| task(&format!("t{i:05}"), TaskState::Pending))
        .collect();
    let run = manual_run("big", version, tasks);
    let id: RunId = run.id;
    let creating = tokio::spawn({
        let s = s.clone();
        async move { s.create_run(run, "api", t0()).await }
    });

    // Wait until the insert is in flight (its transaction has written the run
    // row), then kill that backend.
    let admin = db.pg_pool().await;
    let app = db.schema.clone().unwrap();
    let mut killed = false;
    for _ in 0..20_000 {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
             AND xact_start IS NOT NULL AND query ILIKE '%INSERT INTO task_instances%' LIMIT 1",
        )
        .bind(&app)
        .fetch_optional(&admin)
        .await
        .unwrap();
        if let Some(pid) = pid {
            killed = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&admin)
                .await
                .unwrap();
            break;
        }
        if creating.is_finished() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let result = creating.await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM task_instances WHERE run_id = $1")
        .bind(id.as_uuid())
        .fetch_one(&admin)
        .await
        .unwrap();
    let run_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE id = $1")
        .bind(id.as_uuid())
        .fetch_one(&admin)
        .await
        .unwrap();
    admin.close().await;
    assert!(
        killed,
        "the create-run transaction was never observed in flight"
    );
    assert!(
        result.is_err(),
        "create_run should fail when its connection dies"
    );
    assert_eq!(
        (run_rows, rows),
        (0, 0),
        "a killed transaction left a half-written run"
    );
    // The store keeps working after losing a connection.
    let (_, tasks) = seed_run(&*s, "after", 2, TaskState::Ready).await;
    assert_eq!(tasks.len(), 2);
}
