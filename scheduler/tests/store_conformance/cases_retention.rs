//! Retention on every backend: with the injected clock past the retention,
//! an old finished run goes with its rows, its objects in the artifact
//! store and its local log; an active old run, a recent finished one and a
//! DAG's latest successful run stay.

use std::sync::Arc;

use trainyard_artifacts::ArtifactStore;
use trainyard_core::ids::RunId;
use trainyard_core::state::AttemptOutcome;
use trainyard_core::state::{RunState, TaskState};
use trainyard_scheduler::clock::ManualClock;
use trainyard_scheduler::logs::{LogStore, LogStream};
use trainyard_scheduler::retention::{Pruned, Retention, RetentionOptions};
use trainyard_scheduler::store::{
    AttemptOf, FinishAttempt, NewArtifact, RetentionStore, RunTransition, Write,
};

use crate::harness::{TestDb, Writes, secs, seed_run, t0};

const DAY: i64 = 24 * 3600;

/// A run of one task that ran once, produced `model.bin` and ended in
/// `end` at `at` (or is still running when `end` is `None`); its output and
/// archived log are in `objects`, its local log in `logs`.
async fn run_with_files(
    db: &TestDb,
    dag: &str,
    end: Option<RunState>,
    at: chrono::DateTime<chrono::Utc>,
    objects: &ArtifactStore,
    logs: &LogStore,
) -> RunId {
    let s = &*db.store;
    let (run, tasks) = seed_run(s, dag, 1, TaskState::Ready).await;
    let t = &tasks[0];
    s.assign(&[t], None, "test", at).await.unwrap();
    s.start_attempt(t.id, 1, "test", at).await.unwrap();
    let key = format!("runs/{}/t0000/1/out/model.bin", run.id);
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), b"weights").unwrap();
    let record = objects.upload_file(src.path(), &key).await.unwrap();
    logs.append(run.id, "t0000", 1, &[(LogStream::Stdout, "epoch 1".into())])
        .await
        .unwrap();
    let producer = AttemptOf {
        run_id: run.id,
        task_id: t.task_id.clone(),
        task_instance_id: t.id,
        attempt: 1,
    };
    s.commit_one(
        Write::Artifacts {
            producer,
            artifacts: vec![NewArtifact {
                key: record.key,
                uri: record.uri,
                size: record.size,
                sha256: record.sha256,
            }],
        },
        "test",
        at,
    )
    .await
    .unwrap();
    if let Some(end) = end {
        // The archive, as the worker session makes it when the attempt ends;
        // one local copy is kept back to prove the pruner removes it too.
        let archive =
            LogStore::new(logs.root().join("..").join("archiving")).with_archive(objects.clone());
        archive
            .append(run.id, "t0000", 1, &[(LogStream::Stdout, "epoch 1".into())])
            .await
            .unwrap();
        archive.archive(run.id, "t0000", 1).await.unwrap();
        let (to, outcome) = match end {
            RunState::Success => (TaskState::Success, AttemptOutcome::Success),
            _ => (TaskState::Failed, AttemptOutcome::Failed),
        };
        s.finish_attempt(
            FinishAttempt {
                id: t.id,
                attempt: 1,
                from: TaskState::Running,
                to,
                outcome,
                exit_code: Some(0),
                error: None,
                log_location: None,
                next_retry_at: None,
            },
            "test",
            at,
        )
        .await
        .unwrap();
        s.transition_run(
            RunTransition {
                id: run.id,
                from: RunState::Running,
                to: end,
                reason: None,
            },
            "test",
            at,
        )
        .await
        .unwrap();
    }
    run.id
}

pub async fn retention_prunes_old_finished_runs_and_keeps_active_and_recent_ones(db: &TestDb) {
    let s = &*db.store;
    let dir = tempfile::tempdir().unwrap();
    let objects = ArtifactStore::from_url(&dir.path().join("store").display().to_string()).unwrap();
    let logs = LogStore::new(dir.path().join("logs"));
    let old = t0();
    let old_failed = run_with_files(db, "d", Some(RunState::Failed), old, &objects, &logs).await;
    let old_success = run_with_files(db, "d", Some(RunState::Success), old, &objects, &logs).await;
    let old_active = run_with_files(db, "d", None, old, &objects, &logs).await;
    let recent = run_with_files(
        db,
        "d",
        Some(RunState::Failed),
        old + secs(29 * DAY),
        &objects,
        &logs,
    )
    .await;
    // Another DAG whose only success is old: the `when` baseline stays.
    let baseline = run_with_files(db, "e", Some(RunState::Success), old, &objects, &logs).await;

    let clock = Arc::new(ManualClock::new(old + secs(31 * DAY)));
    let store: Arc<dyn RetentionStore> = db.store.clone();
    let retention = Retention::new(
        store,
        objects.clone(),
        logs.clone(),
        clock.clone(),
        RetentionOptions::new(std::time::Duration::from_secs(30 * 24 * 3600)),
    );

    // Not yet: 31 days after, but `old_success` is still d's latest success.
    let first = retention.prune_once().await.unwrap();
    assert_eq!(
        first,
        Pruned {
            runs: 1,
            artifacts: 2,
            local_logs: 1
        },
        "only the old failed run goes"
    );
    gone(db, &objects, &logs, old_failed).await;
    for kept in [old_success, old_active, recent, baseline] {
        assert!(s.get_run(kept).await.is_ok(), "{kept} was pruned");
        assert!(!s.run_events(kept, None, 100).await.unwrap().is_empty());
        assert_eq!(s.run_artifacts(kept).await.unwrap().len(), 1);
        assert!(
            !objects
                .list(&format!("runs/{kept}/t0000/1/out"))
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert!(
        objects
            .list(&format!("runs/{old_success}/t0000/1"))
            .await
            .unwrap()
            .iter()
            .any(|o| o.key.ends_with("/log.txt")),
        "the archived log of a kept run stays"
    );
    assert!(
        logs.root().join(old_active.to_string()).exists(),
        "an active run's local log stays"
    );

    // A newer success of d makes the old one prunable; the active run stays
    // however old it is, and so does the run ended 29 days before the first pass.
    let newer = run_with_files(
        db,
        "d",
        Some(RunState::Success),
        old + secs(30 * DAY),
        &objects,
        &logs,
    )
    .await;
    let second = retention.prune_once().await.unwrap();
    assert_eq!(second.runs, 1);
    gone(db, &objects, &logs, old_success).await;
    for kept in [old_active, recent, baseline, newer] {
        assert!(s.get_run(kept).await.is_ok(), "{kept} was pruned");
    }

    // A run reopened (a clear moves it back to queued) is not finished:
    // the guarded delete matches nothing even past its old end.
    clock.advance(secs(60 * DAY));
    s.transition_run(
        RunTransition {
            id: recent,
            from: RunState::Failed,
            to: RunState::Queued,
            reason: Some("cleared".into()),
        },
        "test",
        old + secs(29 * DAY),
    )
    .await
    .unwrap();
    let cutoff = clock_now(&clock) - secs(30 * DAY);
    assert!(!s.delete_expired_run(recent, cutoff).await.unwrap());
    assert!(!s.delete_expired_run(old_active, cutoff).await.unwrap());
    assert!(s.get_run(recent).await.is_ok());

    // Retention 0 keeps everything.
    let forever = Retention::new(
        db.store.clone(),
        objects.clone(),
        logs.clone(),
        clock,
        RetentionOptions::new(std::time::Duration::ZERO),
    );
    assert_eq!(forever.prune_once().await.unwrap(), Pruned::default());
}

/// Nothing of `run` is left: rows, objects, local log.
async fn gone(db: &TestDb, objects: &ArtifactStore, logs: &LogStore, run: RunId) {
    let s = &*db.store;
    assert!(s.get_run(run).await.unwrap_err().is_not_found());
    assert!(s.run_events(run, None, 100).await.unwrap().is_empty());
    assert!(s.run_attempts(run).await.unwrap().is_empty());
    assert!(s.task_instances(run).await.unwrap().is_empty());
    assert!(s.run_artifacts(run).await.unwrap().is_empty());
    assert!(
        objects
            .list(&format!("runs/{run}"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!logs.root().join(run.to_string()).exists());
}

fn clock_now(c: &ManualClock) -> chrono::DateTime<chrono::Utc> {
    use trainyard_scheduler::clock::Clock;
    c.now()
}
