//! Placement, pools, priorities, lost workers and restarts, through the
//! engine handle with in-process fake workers (SQLite, plus the restart and
//! lost-worker cases on Postgres).
#![allow(clippy::unwrap_used)]

mod engine_support;

use std::collections::HashSet;

use chrono::Duration;
use engine_support::*;
use trainyard_core::ids::TaskId;
use trainyard_core::state::{AttemptOutcome, RunState, TaskState};
use trainyard_scheduler::clock::ManualClock;
use trainyard_scheduler::engine::{EngineError, TaskResult, WorkerCommand};

fn t0() -> chrono::DateTime<chrono::Utc> {
    utc(2026, 6, 1, 12, 0)
}

#[tokio::test]
async fn best_fit_keeps_the_big_machine_whole_and_never_fits_says_why() {
    let h = Harness::sqlite(t0()).await;
    let dag = h
        .add_dag(
            r#"
id = "gpus"
[tasks.small]
command = ["true"]
resources = { gpus = 2, gpu_model = "A100" }
[tasks.huge]
command = ["true"]
resources = { gpus = 4, gpu_model = "H100" }
"#,
        )
        .await;
    let mut big = FakeWorker::join(&h.handle, registration("big", 8, &[("A100", 80); 8])).await;
    let mut two = FakeWorker::join(&h.handle, registration("two", 8, &[("A100", 80); 2])).await;
    let run = h.trigger(&dag).await;
    let a = two.next_assign().await;
    assert_eq!(
        (a.task_id.as_str(), a.gpu_indices.clone()),
        ("small", vec![0, 1])
    );
    h.settle().await;
    assert!(big.idle());
    let reasons = h.handle.task_wait_reasons(run).await.unwrap();
    assert_eq!(
        reasons.get(&TaskId::new("huge")).map(String::as_str),
        Some(
            "needs 4 GPUs of model H100; no registered worker has an H100; \
             the largest worker has 8 GPUs"
        )
    );
    assert_eq!(ti(&*h.store, run, "huge").await.state, TaskState::Ready);
}

#[tokio::test]
async fn two_gpu_tasks_share_a_four_gpu_worker_disjointly_and_a_four_gpu_task_waits() {
    let mut h = Harness::sqlite(t0()).await;
    let dag = h
        .add_dag(
            r#"
id = "pack"
[tasks.x]
command = ["true"]
priority = 10
resources = { gpus = 2 }
[tasks.y]
command = ["true"]
priority = 10
resources = { gpus = 2 }
[tasks.z]
command = ["true"]
resources = { gpus = 4 }
"#,
        )
        .await;
    let mut w = FakeWorker::join(&h.handle, registration("w", 8, &[("A100", 80); 4])).await;
    let run = h.trigger(&dag).await;
    let x = w.next_assign().await;
    let y = w.next_assign().await;
    let gx: HashSet<u32> = x.gpu_indices.iter().copied().collect();
    assert!(
        y.gpu_indices.iter().all(|g| !gx.contains(g)),
        "{:?} vs {:?}",
        x.gpu_indices,
        y.gpu_indices
    );
    h.settle().await;
    assert!(w.idle(), "z needs all four GPUs");
    assert!(
        h.handle.task_wait_reasons(run).await.unwrap()[&TaskId::new("z")]
            .starts_with("waiting for resources")
    );
    w.succeed(&x).await;
    h.settle().await;
    assert!(w.idle(), "two GPUs free are not four");
    w.succeed(&y).await;
    let z = w.next_assign().await;
    assert_eq!(z.gpu_indices, vec![0, 1, 2, 3]);
    w.succeed(&z).await;
    h.wait_run(run, RunState::Success).await;
}

#[tokio::test]
async fn pool_limits_and_priorities_order_dispatch() {
    let db = TestDb::sqlite().await;
    let mut h = Harness::start(db, ManualClock::new(t0()), |o| {
        o.pools.insert("etl".into(), 1);
    })
    .await;
    let dag = h
        .add_dag(
            r#"
id = "pools"
[tasks.low]
command = ["true"]
priority = 1
[tasks.high]
command = ["true"]
priority = 5
[tasks.etl1]
command = ["true"]
pool = "etl"
priority = 3
[tasks.etl2]
command = ["true"]
pool = "etl"
priority = 3
"#,
        )
        .await;
    let mut reg = registration("w", 1, &[]);
    reg.queues = vec!["default".into(), "etl".into()];
    let mut w = FakeWorker::join(&h.handle, reg).await;
    let run = h.trigger(&dag).await;
    let mut order = Vec::new();
    let first = w.next_assign().await;
    order.push(first.task_id.to_string());
    let reasons = h.handle.task_wait_reasons(run).await.unwrap();
    assert!(reasons.contains_key(&TaskId::new("low")));
    w.succeed(&first).await;
    for _ in 0..3 {
        let a = w.next_assign().await;
        order.push(a.task_id.to_string());
        w.succeed(&a).await;
    }
    assert_eq!(order, vec!["high", "etl1", "etl2", "low"]);
    h.wait_run(run, RunState::Success).await;

    // With room for three, the pool still admits one etl task at a time.
    let mut reg = registration("wide", 3, &[]);
    reg.queues = vec!["default".into(), "etl".into()];
    let mut wide = FakeWorker::join(&h.handle, reg).await;
    h.handle.worker_draining(w.id).await.unwrap();
    let run = h.trigger(&dag).await;
    let got: Vec<String> = [
        wide.next_assign().await,
        wide.next_assign().await,
        wide.next_assign().await,
    ]
    .iter()
    .map(|a| a.task_id.to_string())
    .collect();
    assert_eq!(got, vec!["high", "etl1", "low"]);
    let reasons = h.handle.task_wait_reasons(run).await.unwrap();
    assert_eq!(
        reasons[&TaskId::new("etl2")],
        "pool `etl` is full (1 of 1 slots in use)"
    );
}

async fn lost_worker_is_retried_elsewhere(mut h: Harness) {
    let dag = h
        .add_dag(
            "id = \"lost\"\n[tasks.a]\ncommand = [\"true\"]\nretries = 1\nretry_delay = \"1h\"\n",
        )
        .await;
    let mut w1 = FakeWorker::join(&h.handle, registration("w1", 1, &[])).await;
    let run = h.trigger(&dag).await;
    let a = w1.next_assign().await;
    w1.start(&a).await;
    let mut w2 = FakeWorker::join(&h.handle, registration("w2", 1, &[])).await;
    // w2 heartbeats, w1 is silent past the 30s timeout.
    for _ in 0..4 {
        h.advance(Duration::seconds(10)).await;
        h.handle.heartbeat(w2.id, vec![]).await.unwrap();
    }
    let b = w2.next_assign().await;
    assert_eq!(b.attempt, 2, "a lost attempt counts as an attempt");
    assert!(matches!(
        w1.next().await,
        WorkerCommand::Kill { attempt: 1, .. }
    ));
    let attempts = h.store.attempts(a.task_instance_id).await.unwrap();
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Lost));
    let late = h
        .handle
        .task_finished(w1.id, a.task_instance_id, 1, TaskResult::succeeded())
        .await;
    assert!(matches!(late, Err(EngineError::Fenced { .. })), "{late:?}");
    w2.succeed(&b).await;
    h.wait_run(run, RunState::Success).await;
    // w1 comes back still running the old attempt: it is told to kill it.
    let mut reg = registration("w1", 1, &[]);
    reg.id = Some(w1.id);
    h.handle.register_worker(reg).await.unwrap();
    let mut rx = h
        .handle
        .connect_worker(w1.id, vec![(a.task_instance_id, 1)])
        .await
        .unwrap()
        .commands;
    assert!(matches!(
        rx.recv().await,
        Some(WorkerCommand::Kill { attempt: 1, .. })
    ));
}

#[tokio::test]
async fn lost_worker_attempt_is_lost_retried_on_another_worker_and_the_late_report_fenced() {
    let db = TestDb::sqlite().await;
    let h = Harness::start(db, ManualClock::new(t0()), |o| {
        o.lost_worker_timeout = std::time::Duration::from_secs(30)
    })
    .await;
    lost_worker_is_retried_elsewhere(h).await;
}

#[tokio::test]
async fn lost_worker_on_postgres() {
    let db = TestDb::postgres().await;
    let h = Harness::start(db, ManualClock::new(t0()), |o| {
        o.lost_worker_timeout = std::time::Duration::from_secs(30)
    })
    .await;
    lost_worker_is_retried_elsewhere(h).await;
}

async fn restart_mid_run(db: TestDb) {
    let clock = ManualClock::new(utc(2026, 6, 1, 0, 30));
    let h = Harness::start(db, clock, |_| {}).await;
    let dag = h
        .add_dag("id = \"rs\"\nschedule = \"0 * * * *\"\n[tasks.a]\ncommand = [\"true\"]\n[tasks.b]\ndepends_on = [\"a\"]\ncommand = [\"true\"]\n[tasks.c]\ndepends_on = [\"b\"]\ncommand = [\"true\"]\n")
        .await;
    let mut reg = registration("w", 2, &[]);
    let mut w = FakeWorker::join(&h.handle, reg.clone()).await;
    reg.id = Some(w.id);
    h.advance(Duration::hours(1)).await;
    let run = h.runs_of(&dag).await[0].id;
    let a = w.next_assign().await;
    w.succeed(&a).await;
    let b = w.next_assign().await;
    w.start(&b).await;
    // The scheduler dies while b runs.
    let (db, clock) = h.crash().await;
    let mut h = Harness::start(db, clock, |_| {}).await;
    h.settle().await;
    // The worker reconnects, still running b, and reports it.
    h.handle.register_worker(reg).await.unwrap();
    let rx = h
        .handle
        .connect_worker(w.id, vec![(b.task_instance_id, b.attempt)])
        .await
        .unwrap()
        .commands;
    w.rx = rx;
    w.handle = h.handle.clone();
    w.finish(&b, TaskResult::succeeded()).await;
    let c = w.next_assign().await;
    w.succeed(&c).await;
    h.wait_run(run, RunState::Success).await;
    let runs = h.runs_of(&dag).await;
    assert_eq!(runs.len(), 1, "no slot created twice");
    for t in ["a", "b", "c"] {
        let id = ti(&*h.store, run, t).await.id;
        assert_eq!(
            h.store.attempts(id).await.unwrap().len(),
            1,
            "task {t} ran once"
        );
    }
}

#[tokio::test]
async fn restart_mid_run_finishes_the_run_with_nothing_twice_sqlite() {
    restart_mid_run(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn restart_mid_run_finishes_the_run_with_nothing_twice_postgres() {
    restart_mid_run(TestDb::postgres().await).await;
}

/// A one-GPU worker loses its attempt (silent past the timeout), comes back
/// under its id and connects: what its `Hello` reports decides when the
/// lost attempt's GPU may be given out again.
async fn lost_gpu_worker_comes_back(still_running: bool) {
    let mut h = Harness::start(TestDb::sqlite().await, ManualClock::new(t0()), |o| {
        o.lost_worker_timeout = std::time::Duration::from_secs(30)
    })
    .await;
    let dag = h
        .add_dag(
            "id = \"gpu\"\n[tasks.a]\ncommand = [\"true\"]\nretries = 1\nretry_delay = \"1s\"\nresources = { gpus = 1 }\n",
        )
        .await;
    let reg = registration("box", 4, &[("A100", 80)]);
    let mut w = FakeWorker::join(&h.handle, reg.clone()).await;
    let run = h.trigger(&dag).await;
    let a = w.next_assign().await;
    w.start(&a).await;
    h.advance(Duration::seconds(40)).await;
    assert!(matches!(
        w.next().await,
        WorkerCommand::Kill { attempt: 1, .. }
    ));
    // Lost, and retried (waiting for its delay or ready again by now).
    let attempts = h.store.attempts(a.task_instance_id).await.unwrap();
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Lost));
    assert!(matches!(
        ti(&*h.store, run, "a").await.state,
        TaskState::UpForRetry | TaskState::Ready
    ));
    h.advance(Duration::seconds(5)).await;

    // Back under the same id (a partitioned worker, or a restart).
    let mut again = reg;
    again.id = Some(w.id);
    h.handle.register_worker(again).await.unwrap();
    let reported = if still_running {
        vec![(a.task_instance_id, 1)]
    } else {
        vec![]
    };
    w.rx = h
        .handle
        .connect_worker(w.id, reported)
        .await
        .unwrap()
        .commands;
    if still_running {
        assert!(matches!(
            w.next().await,
            WorkerCommand::Kill { attempt: 1, .. }
        ));
        h.settle().await;
        assert!(
            w.idle(),
            "the retry must not get the GPU the lost attempt's process still holds"
        );
        let reason = h.handle.task_wait_reasons(run).await.unwrap()[&TaskId::new("a")].clone();
        assert!(reason.starts_with("waiting for resources"), "{reason}");
        // The kill's confirmation: the old attempt's end (fenced, no effect
        // on the run) frees the GPU.
        let late = h
            .handle
            .task_finished(w.id, a.task_instance_id, 1, TaskResult::failed("killed"))
            .await;
        assert!(matches!(late, Err(EngineError::Fenced { .. })), "{late:?}");
    }
    let b = w.next_assign().await;
    assert_eq!((b.attempt, b.gpu_indices.clone()), (2, vec![0]));
    w.succeed(&b).await;
    h.wait_run(run, RunState::Success).await;
}

#[tokio::test]
async fn a_lost_attempts_gpu_stays_held_until_the_returning_worker_reports_it_ended() {
    lost_gpu_worker_comes_back(true).await;
}

#[tokio::test]
async fn a_restarted_worker_that_reports_nothing_running_gets_the_lost_attempts_gpu_back() {
    lost_gpu_worker_comes_back(false).await;
}
