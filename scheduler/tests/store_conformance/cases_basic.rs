//! Conformance cases: schema, DAGs, runs, transitions, claims, attempts,
//! workers and metrics — the behaviour every backend must share.

use chrono::{TimeZone, Utc};
use serde_json::json;
use trainyard_core::ids::{DagId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::{AttemptOutcome, RunState, TaskState, TriggerKind, WorkerState};
use trainyard_scheduler::store::{
    Assignment, Backend, ConnectOptions, EventEntity, FinishAttempt, NewDagVersion, NewWorker,
    RunCreation, RunFilter, RunTransition, StoreError, TaskTransition, Write, connect_with,
};

use crate::harness::*;

pub async fn migrations_are_reported_and_a_newer_schema_is_refused(db: &TestDb) {
    let status = db.store.migration_status().await.unwrap();
    assert!(!status.is_empty());
    assert!(status.iter().all(|m| m.applied), "{status:?}");
    let known = status.iter().map(|m| m.version).max().unwrap();
    // Migrating twice is a no-op.
    db.store.migrate().await.unwrap();

    let checksum = match db.backend {
        Backend::Postgres => "'\\x00'::bytea",
        Backend::Sqlite => "x'00'",
    };
    db.exec(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (29990101000000, 'from the future', TRUE, {checksum}, 0)"
    ))
    .await;
    let err = connect_with(
        &db.url,
        ConnectOptions {
            migrate: true,
            ..db.options.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "database schema version 29990101000000 is newer than this trainyard binary (knows up to {known}); upgrade trainyard"
        )
    );
}

pub async fn dag_versions_register_once_per_content_hash(db: &TestDb) {
    let s = &*db.store;
    let dag = DagId::new("churn");
    let v = |hash: &str| NewDagVersion {
        dag_id: dag.clone(),
        content_hash: hash.to_owned(),
        source: format!("# {hash}"),
        spec: json!({"hash": hash}).into(),
        file_path: Some("dags/churn.toml".to_owned()),
    };
    let a = s.upsert_dag_version(v("a"), t0()).await.unwrap();
    assert!(a.created);
    let again = s.upsert_dag_version(v("a"), t0()).await.unwrap();
    assert_eq!(again.version_id, a.version_id);
    assert!(!again.created);
    let b = s.upsert_dag_version(v("b"), t0()).await.unwrap();
    assert!(b.created && b.version_id != a.version_id);
    assert_eq!(
        s.get_dag(&dag).await.unwrap().current_version_id,
        Some(b.version_id)
    );
    assert_eq!(
        s.get_dag_version(a.version_id)
            .await
            .unwrap()
            .spec
            .to_value()
            .unwrap(),
        json!({"hash": "a"})
    );

    // A parse error is recorded; the last good version stays current.
    s.record_parse_error(&dag, None, "line 3: unknown key", t0())
        .await
        .unwrap();
    let d = s.get_dag(&dag).await.unwrap();
    assert_eq!(d.parse_error.as_deref(), Some("line 3: unknown key"));
    assert_eq!(d.current_version_id, Some(b.version_id));
    // A file that never parsed still shows up, with no version.
    s.record_parse_error(&DagId::new("broken"), Some("dags/broken.toml"), "bad", t0())
        .await
        .unwrap();
    assert_eq!(
        s.get_dag(&DagId::new("broken"))
            .await
            .unwrap()
            .current_version_id,
        None
    );

    s.set_dag_paused(&dag, true, t0()).await.unwrap();
    s.deactivate_dag(&dag, t0()).await.unwrap();
    let d = s.get_dag(&dag).await.unwrap();
    assert!(d.paused && !d.active);
    // Re-registering reactivates and clears the error but keeps the pause.
    s.upsert_dag_version(v("a"), t0()).await.unwrap();
    let d = s.get_dag(&dag).await.unwrap();
    assert!(d.paused && d.active && d.parse_error.is_none());
    assert_eq!(d.current_version_id, Some(a.version_id));
    assert_eq!(s.list_dags().await.unwrap().len(), 2);
    assert!(
        s.set_dag_paused(&DagId::new("nope"), true, t0())
            .await
            .unwrap_err()
            .is_not_found()
    );
}

pub async fn runs_are_created_atomically_and_a_schedule_slot_exists_once(db: &TestDb) {
    let s = &*db.store;
    let version = seed_dag(s, "nightly").await;
    let slot = Utc.with_ymd_and_hms(2025, 3, 30, 3, 0, 0).unwrap();
    let scheduled = |tasks| {
        let mut r = manual_run("nightly", version, tasks);
        r.trigger = TriggerKind::Schedule;
        r.logical_date = Some(slot);
        r.state = RunState::Queued;
        r
    };
    let first = match s
        .create_run(
            scheduled(vec![
                task("a", TaskState::Ready),
                task("b", TaskState::Pending),
            ]),
            "cron",
            t0(),
        )
        .await
        .unwrap()
    {
        RunCreation::Created { run, tasks } => {
            assert_eq!(tasks.len(), 2);
            assert_eq!(tasks[0].state, TaskState::Ready);
            assert_eq!(tasks[0].ready_at, Some(t0()));
            assert_eq!(tasks[1].attempt, 0);
            run
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(s.get_run(first.id).await.unwrap(), first);
    // Same slot again (a second replica's cron tick): the first run comes back.
    match s
        .create_run(scheduled(vec![task("a", TaskState::Ready)]), "cron", t0())
        .await
        .unwrap()
    {
        RunCreation::AlreadyExists(r) => assert_eq!(r.id, first.id),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.task_instances(first.id).await.unwrap().len(), 2);
    assert_eq!(
        s.last_scheduled_logical_date(&DagId::new("nightly"))
            .await
            .unwrap(),
        Some(slot)
    );

    // Idempotency key for manual triggers.
    let mut m = manual_run("nightly", version, vec![task("a", TaskState::Ready)]);
    m.idempotency_key = Some("req-1".to_owned());
    let m_id = m.id;
    assert!(matches!(
        s.create_run(m.clone(), "api", t0()).await.unwrap(),
        RunCreation::Created { .. }
    ));
    m.id = RunId::new();
    match s.create_run(m, "api", t0()).await.unwrap() {
        RunCreation::AlreadyExists(r) => assert_eq!(r.id, m_id),
        other => panic!("{other:?}"),
    }
    // Bad input is refused before anything is written.
    let mut bad = scheduled(vec![task("a", TaskState::Ready)]);
    bad.logical_date = None;
    assert!(matches!(
        s.create_run(bad, "cron", t0()).await,
        Err(StoreError::InvalidArgument(_))
    ));
    let dup = manual_run(
        "nightly",
        version,
        vec![task("a", TaskState::Ready), task("a", TaskState::Ready)],
    );
    let dup_id = dup.id;
    assert!(matches!(
        s.create_run(dup, "api", t0()).await,
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(s.get_run(dup_id).await.unwrap_err().is_not_found());

    let events = s.run_events(first.id, None, 10_000).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].entity,
            events[0].from_state.as_deref(),
            events[0].to_state.as_str()
        ),
        (EventEntity::Run, None, "queued")
    );
}

pub async fn run_listing_pages_newest_first(db: &TestDb) {
    let s = &*db.store;
    let version = seed_dag(s, "d").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = manual_run("d", version, vec![task("a", TaskState::Pending)]);
        ids.push(r.id);
        s.create_run(r, "api", t0()).await.unwrap();
    }
    let page = s
        .list_runs(RunFilter {
            dag_id: Some(DagId::new("d")),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page.runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let page2 = s
        .list_runs(RunFilter {
            before: page.next_cursor,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page2.runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    let page3 = s
        .list_runs(RunFilter {
            before: page2.next_cursor,
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page3.runs.len(), 1);
    assert_eq!(page3.next_cursor, None);
    let running = s
        .list_runs(RunFilter {
            states: vec![RunState::Running],
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(running.runs.len(), 5);
    assert_eq!(s.active_runs().await.unwrap().len(), 5);
    assert!(
        s.last_successful_run(&DagId::new("d"))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn run_transitions_are_compare_and_set(db: &TestDb) {
    let s = &*db.store;
    let (run, _) = seed_run(s, "d", 1, TaskState::Ready).await;
    let tr = |from, to| RunTransition {
        id: run.id,
        from,
        to,
        reason: None,
    };
    let done = s
        .transition_run(
            tr(RunState::Running, RunState::Success),
            "scheduler",
            t0() + secs(5),
        )
        .await
        .unwrap();
    assert_eq!(done.state, RunState::Success);
    assert_eq!(done.ended_at, Some(t0() + secs(5)));
    let err = s
        .transition_run(tr(RunState::Running, RunState::Failed), "scheduler", t0())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("run {}: expected state running, found success", run.id)
    );
    let err = s
        .transition_run(tr(RunState::Success, RunState::Failed), "scheduler", t0())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ForbiddenRunTransition { .. }),
        "{err}"
    );
    assert_eq!(
        s.last_successful_run(&DagId::new("d"))
            .await
            .unwrap()
            .map(|r| r.id),
        Some(run.id)
    );
    let reopened = s
        .transition_run(tr(RunState::Success, RunState::Queued), "api", t0())
        .await
        .unwrap();
    assert_eq!(reopened.ended_at, None);
}

pub async fn forbidden_task_transitions_are_refused_by_the_store(db: &TestDb) {
    let s = &*db.store;
    let (_, tasks) = seed_run(s, "d", 1, TaskState::Pending).await;
    let id = tasks[0].id;
    let err = s
        .transition_task(
            TaskTransition::new(id, TaskState::Pending, TaskState::Success, 0),
            "x",
            t0(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("task instance {id}: transition pending -> success is not allowed")
    );
    // Claims and starts have their own calls (they create and fence attempts).
    let err = s
        .transition_task(
            TaskTransition::new(id, TaskState::Ready, TaskState::Assigned, 0),
            "x",
            t0(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    // A CAS on the wrong state says what it found.
    let err = s
        .transition_task(
            TaskTransition::new(id, TaskState::Ready, TaskState::Skipped, 0),
            "x",
            t0(),
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict());
    assert!(
        err.to_string()
            .contains("expected state ready attempt 0, found pending attempt 0"),
        "{err}"
    );
    assert_eq!(
        s.get_task_instance(id).await.unwrap().state,
        TaskState::Pending
    );
    let missing = TaskInstanceId::new(987_654);
    let err = s
        .transition_task(
            TaskTransition::new(missing, TaskState::Pending, TaskState::Ready, 0),
            "x",
            t0(),
        )
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

pub async fn batch_transitions_are_all_or_nothing(db: &TestDb) {
    let s = &*db.store;
    let (run, tasks) = seed_run(s, "d", 100, TaskState::Pending).await;
    // One task moved away first: the batch that expects it pending fails whole.
    s.transition_task(
        TaskTransition::new(tasks[50].id, TaskState::Pending, TaskState::Cancelled, 0),
        "x",
        t0(),
    )
    .await
    .unwrap();
    let batch: Vec<_> = tasks
        .iter()
        .map(|t| TaskTransition::new(t.id, TaskState::Pending, TaskState::Ready, 0))
        .collect();
    let err = s
        .transition_tasks(&batch, "scheduler", t0())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("found cancelled attempt 0"),
        "{err}"
    );
    let now = s.task_instances(run.id).await.unwrap();
    assert_eq!(
        now.iter().filter(|t| t.state == TaskState::Ready).count(),
        0
    );

    let batch: Vec<_> = batch.into_iter().filter(|t| t.id != tasks[50].id).collect();
    s.transition_tasks(&batch, "scheduler", t0() + secs(1))
        .await
        .unwrap();
    let now = s.task_instances(run.id).await.unwrap();
    assert_eq!(
        now.iter().filter(|t| t.state == TaskState::Ready).count(),
        99
    );
    assert!(
        now.iter()
            .filter(|t| t.state == TaskState::Ready)
            .all(|t| t.ready_at == Some(t0() + secs(1)))
    );
    let events = s.run_events(run.id, None, 10_000).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.to_state == "ready").count(), 99);
}

pub async fn assignments_place_on_gpus_and_a_taken_task_fails_the_batch(db: &TestDb) {
    let s = &*db.store;
    let (run, tasks) = seed_run(s, "d", 3, TaskState::Ready).await;
    let worker = WorkerId::new();
    let assign = |i: usize, gpus: Vec<u32>| Assignment {
        id: tasks[i].id,
        attempt: 0,
        worker_id: Some(worker),
        gpus,
    };
    // Another replica takes task 1 first.
    s.commit_one(Write::Assign(vec![assign(1, vec![3])]), "replica-b", t0())
        .await
        .unwrap();
    // This replica's view is stale: its whole batch fails and writes nothing.
    let all = vec![assign(0, vec![0, 1]), assign(1, vec![2]), assign(2, vec![])];
    let err = s
        .commit_one(Write::Assign(all), "replica-a", t0())
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(err.conflict_task(), Some(tasks[1].id), "{err}");
    for i in [0, 2] {
        let t = s.get_task_instance(tasks[i].id).await.unwrap();
        assert_eq!((t.state, t.attempt), (TaskState::Ready, 0));
        assert!(s.attempts(tasks[i].id).await.unwrap().is_empty());
    }
    assert_eq!(s.run_attempts(run.id).await.unwrap().len(), 1);

    // Without the taken task it goes through: attempt 1, one attempt row on
    // the worker's GPUs, an `assigned` event each.
    let rest = vec![assign(0, vec![0, 1]), assign(2, vec![])];
    s.commit_one(Write::Assign(rest), "replica-a", t0())
        .await
        .unwrap();
    let t = s.get_task_instance(tasks[0].id).await.unwrap();
    assert_eq!((t.state, t.attempt), (TaskState::Assigned, 1));
    let attempts = s.attempts(tasks[0].id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (
            attempts[0].attempt,
            attempts[0].worker_id,
            &attempts[0].gpus
        ),
        (1, Some(worker), &vec![0, 1])
    );
    assert_eq!(s.attempts(tasks[1].id).await.unwrap()[0].gpus, vec![3]);
    let held = s.attempts_held_by_worker(worker).await.unwrap();
    assert_eq!(held.len(), 3);
    let events = s.run_events(run.id, None, 10_000).await.unwrap();
    assert_eq!(
        events.iter().filter(|e| e.to_state == "assigned").count(),
        3
    );
    // The same assignment again (attempt 0 is gone): refused, nothing written.
    let err = s
        .commit_one(Write::Assign(vec![assign(0, vec![0])]), "replica-a", t0())
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(s.attempts(tasks[0].id).await.unwrap().len(), 1);
}

pub async fn retry_flow_and_stale_report_is_fenced_off(db: &TestDb) {
    let s = &*db.store;
    let (run, tasks) = seed_run(s, "d", 1, TaskState::Ready).await;
    let id = tasks[0].id;
    s.assign(&[&tasks[0]], None, "scheduler", t0())
        .await
        .unwrap();
    assert_eq!(s.get_task_instance(id).await.unwrap().attempt, 1);
    s.start_attempt(id, 1, "worker", t0() + secs(1))
        .await
        .unwrap();
    let fail = FinishAttempt {
        id,
        attempt: 1,
        from: TaskState::Running,
        to: TaskState::UpForRetry,
        outcome: AttemptOutcome::Failed,
        exit_code: Some(1),
        error: Some("exit status 1".to_owned()),
        log_location: Some("logs/1".to_owned()),
        next_retry_at: Some(t0() + secs(60)),
    };
    s.finish_attempt(fail, "worker", t0() + secs(2))
        .await
        .unwrap();
    let waiting = s.get_task_instance(id).await.unwrap();
    assert_eq!(
        (waiting.state, waiting.next_retry_at),
        (TaskState::UpForRetry, Some(t0() + secs(60)))
    );
    s.transition_task(
        TaskTransition::new(id, TaskState::UpForRetry, TaskState::Ready, 1),
        "scheduler",
        t0() + secs(60),
    )
    .await
    .unwrap();
    let retry = s.get_task_instance(id).await.unwrap();
    assert_eq!(retry.next_retry_at, None);
    s.assign(&[&retry], None, "scheduler", t0() + secs(61))
        .await
        .unwrap();
    assert_eq!(s.get_task_instance(id).await.unwrap().attempt, 2);
    s.start_attempt(id, 2, "worker", t0() + secs(62))
        .await
        .unwrap();

    // The first attempt's late success report: fenced off, nothing changes.
    let before = s.get_task_instance(id).await.unwrap();
    let events_before = s.run_events(run.id, None, 10_000).await.unwrap().len();
    let stale = FinishAttempt {
        id,
        attempt: 1,
        from: TaskState::Running,
        to: TaskState::Success,
        outcome: AttemptOutcome::Success,
        exit_code: Some(0),
        error: None,
        log_location: None,
        next_retry_at: None,
    };
    let err = s
        .finish_attempt(stale.clone(), "worker", t0() + secs(63))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "task instance {id} of run {}: expected state running attempt 1, found running attempt 2",
            run.id
        )
    );
    assert_eq!(s.get_task_instance(id).await.unwrap(), before);
    assert_eq!(
        s.run_events(run.id, None, 10_000).await.unwrap().len(),
        events_before
    );
    let attempts = s.attempts(id).await.unwrap();
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::Failed));
    assert_eq!(attempts[0].exit_code, Some(1));
    assert_eq!(attempts[1].outcome, None);

    // The current attempt's report is applied.
    s.finish_attempt(
        FinishAttempt {
            attempt: 2,
            ..stale
        },
        "worker",
        t0() + secs(64),
    )
    .await
    .unwrap();
    let done = s.get_task_instance(id).await.unwrap();
    assert_eq!(
        (done.state, done.attempt, done.ended_at),
        (TaskState::Success, 2, Some(t0() + secs(64)))
    );
    assert_eq!(
        s.run_attempts(run.id).await.unwrap()[1].outcome,
        Some(AttemptOutcome::Success)
    );

    // Clear: back to pending, attempt counter kept.
    s.transition_task(
        TaskTransition::new(id, TaskState::Success, TaskState::Pending, 2),
        "api",
        t0() + secs(70),
    )
    .await
    .unwrap();
    let cleared = s.get_task_instance(id).await.unwrap();
    assert_eq!(
        (cleared.state, cleared.attempt, cleared.ended_at),
        (TaskState::Pending, 2, None)
    );
}

pub async fn lost_worker_attempts_become_lost(db: &TestDb) {
    let s = &*db.store;
    let (_, tasks) = seed_run(s, "d", 3, TaskState::Ready).await;
    let w = NewWorker {
        id: WorkerId::new(),
        name: "gpu-box-1".to_owned(),
        resources: json!({"cpus": 16}),
        gpus: json!([{"index": 0, "model": "A100"}]),
        labels: json!({}),
        credential_sha256: Some("ab".repeat(32)),
    };
    let worker = s.register_worker(w.clone(), t0()).await.unwrap();
    assert_eq!(worker.state, WorkerState::Active);
    // The credential's digest survives for the next leader's engine.
    assert_eq!(worker.credential_sha256, w.credential_sha256);
    let claimed = [&tasks[0], &tasks[1]];
    s.assign(&claimed, Some(w.id), "scheduler", t0())
        .await
        .unwrap();
    s.start_attempt(claimed[0].id, 1, "worker", t0())
        .await
        .unwrap();
    assert_eq!(
        s.heartbeat_worker(w.id, t0() + secs(5)).await.unwrap(),
        WorkerState::Active
    );
    assert_eq!(
        s.worker(w.id).await.unwrap().last_heartbeat_at,
        t0() + secs(5)
    );
    assert_eq!(s.attempts_held_by_worker(w.id).await.unwrap().len(), 2);

    let lost = Write::WorkerLost {
        id: w.id,
        reason: "no heartbeat for 30s".to_owned(),
    };
    s.commit_one(lost, "scheduler", t0() + secs(40))
        .await
        .unwrap();
    for c in claimed {
        let t = s.get_task_instance(c.id).await.unwrap();
        assert_eq!(t.state, TaskState::Lost);
        assert_eq!(
            s.attempts(c.id).await.unwrap()[0].outcome,
            Some(AttemptOutcome::Lost)
        );
    }
    assert_eq!(
        s.get_task_instance(tasks[2].id).await.unwrap().state,
        TaskState::Ready
    );
    assert!(s.attempts_held_by_worker(w.id).await.unwrap().is_empty());
    assert_eq!(
        s.task_instances_in_state(TaskState::Lost, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.heartbeat_worker(w.id, t0() + secs(41)).await.unwrap(),
        WorkerState::Lost
    );
    // Re-registering brings it back.
    assert_eq!(
        s.register_worker(w, t0() + secs(50)).await.unwrap().state,
        WorkerState::Active
    );
    assert!(
        s.heartbeat_worker(WorkerId::new(), t0())
            .await
            .unwrap_err()
            .is_not_found()
    );
}

pub async fn metrics_are_stored_per_attempt_and_charted_across_runs(db: &TestDb) {
    let s = &*db.store;
    let mut runs = Vec::new();
    for (i, auc) in [0.81, 0.86, 0.9].iter().enumerate() {
        let (run, tasks) = seed_run(s, "churn", 1, TaskState::Ready).await;
        let id = tasks[0].id;
        s.assign(&[&tasks[0]], None, "scheduler", t0())
            .await
            .unwrap();
        let metrics = Write::Metrics {
            id,
            attempt: 1,
            metrics: vec![
                ("auc".to_owned(), *auc),
                ("loss".to_owned(), 0.1 * i as f64),
            ],
        };
        s.commit_one(metrics, "worker", t0()).await.unwrap();
        runs.push(run.id);
    }
    let m = s.run_metrics(runs[1]).await.unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!((m[0].name.as_str(), m[0].value), ("auc", 0.86));
    let series = s
        .metric_series(&DagId::new("churn"), &TaskId::new("t0000"), "auc", 2)
        .await
        .unwrap();
    assert_eq!(
        series
            .iter()
            .map(|p| (p.run_id, p.value))
            .collect::<Vec<_>>(),
        vec![(runs[1], 0.86), (runs[2], 0.9)]
    );
    let tasks = s.task_instances(runs[0]).await.unwrap();
    let too_new = Write::Metrics {
        id: tasks[0].id,
        attempt: 5,
        metrics: vec![("auc".to_owned(), 1.0)],
    };
    let err = s.commit_one(too_new, "worker", t0()).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
}
