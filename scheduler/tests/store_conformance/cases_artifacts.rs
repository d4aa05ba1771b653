//! Artifact lineage and archived log locations, on every backend.

use trainyard_core::ids::TaskId;
use trainyard_core::state::TaskState;
use trainyard_scheduler::store::{AttemptOf, ClaimFilter, NewArtifact, StoreError};

use crate::harness::{TestDb, seed_run, t0};

fn file(run: &str, task: &str, name: &str, size: u64) -> NewArtifact {
    let key = format!("runs/{run}/{task}/1/out/{name}");
    NewArtifact {
        uri: format!("s3://bucket/{key}"),
        key,
        size,
        sha256: "ab".repeat(32),
    }
}

pub async fn artifacts_record_producer_and_consumers_once(db: &TestDb) {
    let s = &*db.store;
    let (run, tasks) = seed_run(s, "churn", 3, TaskState::Ready).await;
    let claimed = s
        .claim_ready(&ClaimFilter::default(), 3, None, "scheduler", t0())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let of = |i: usize| AttemptOf {
        run_id: run.id,
        task_id: tasks[i].task_id.clone(),
        task_instance_id: tasks[i].id,
        attempt: 1,
    };
    let r = run.id.to_string();
    let produced = vec![
        file(&r, "t0000", "model.json", 10),
        file(&r, "t0000", "big.bin", 5 << 30),
    ];
    s.record_artifacts(&of(0), &produced, t0()).await.unwrap();
    // A report re-sent after a reconnect records nothing twice.
    s.record_artifacts(&of(0), &produced, t0()).await.unwrap();
    let keys: Vec<String> = produced.iter().map(|a| a.key.clone()).collect();
    assert_eq!(
        s.record_artifact_inputs(&of(1), &keys, t0()).await.unwrap(),
        2
    );
    assert_eq!(
        s.record_artifact_inputs(&of(1), &keys, t0()).await.unwrap(),
        0
    );
    let only_model = vec![keys[0].clone(), "runs/elsewhere/x/1/out/nope".to_owned()];
    assert_eq!(
        s.record_artifact_inputs(&of(2), &only_model, t0())
            .await
            .unwrap(),
        1
    );

    let listed = s.run_artifacts(run.id).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:#?}");
    let model = listed
        .iter()
        .find(|a| a.key.ends_with("model.json"))
        .unwrap();
    assert_eq!(
        (model.task_id.as_str(), model.attempt, model.size),
        ("t0000", 1, 10)
    );
    assert_eq!(model.uri, format!("s3://bucket/{}", model.key));
    let by: Vec<&TaskId> = model.consumers.iter().map(|c| &c.task_id).collect();
    assert_eq!(by, [&TaskId::new("t0001"), &TaskId::new("t0002")]);
    let big = listed.iter().find(|a| a.key.ends_with("big.bin")).unwrap();
    assert_eq!(big.size, 5 << 30);
    assert_eq!(big.consumers.len(), 1);
    assert!(
        s.run_artifacts(seed_run(s, "other", 1, TaskState::Pending).await.0.id)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn an_archived_log_location_is_recorded_on_its_attempt(db: &TestDb) {
    let s = &*db.store;
    let (run, tasks) = seed_run(s, "churn", 1, TaskState::Ready).await;
    s.claim_ready(&ClaimFilter::default(), 1, None, "scheduler", t0())
        .await
        .unwrap();
    s.set_attempt_log_location(tasks[0].id, 1, "s3://b/runs/x/t0000/1/log.txt")
        .await
        .unwrap();
    let attempts = s.run_attempts(run.id).await.unwrap();
    assert_eq!(
        attempts[0].log_location.as_deref(),
        Some("s3://b/runs/x/t0000/1/log.txt")
    );
    let err = s
        .set_attempt_log_location(tasks[0].id, 9, "s3://b/none")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}
