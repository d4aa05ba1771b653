//! Artifact lineage and archived log locations, on every backend.

use trainyard_core::ids::TaskId;
use trainyard_core::state::TaskState;
use trainyard_scheduler::store::{AttemptOf, NewArtifact, StoreError, Write};

use crate::harness::{TestDb, Writes, seed_run, t0};

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
    s.assign(&tasks.iter().collect::<Vec<_>>(), None, "scheduler", t0())
        .await
        .unwrap();
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
    let outputs = |i| Write::Artifacts {
        producer: of(i),
        artifacts: produced.clone(),
    };
    s.commit_one(outputs(0), "worker", t0()).await.unwrap();
    // A report re-sent after a reconnect records nothing twice.
    s.commit_one(outputs(0), "worker", t0()).await.unwrap();
    let keys: Vec<String> = produced.iter().map(|a| a.key.clone()).collect();
    let inputs = |i, keys: &[String]| Write::ArtifactInputs {
        consumer: of(i),
        keys: keys.to_vec(),
    };
    s.commit_one(inputs(1, &keys), "worker", t0())
        .await
        .unwrap();
    s.commit_one(inputs(1, &keys), "worker", t0())
        .await
        .unwrap();
    // A key no artifact has links nothing (and fails nothing).
    let only_model = vec![keys[0].clone(), "runs/elsewhere/x/1/out/nope".to_owned()];
    s.commit_one(inputs(2, &only_model), "worker", t0())
        .await
        .unwrap();

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
    s.assign(&[&tasks[0]], None, "scheduler", t0())
        .await
        .unwrap();
    let location = |attempt, location: &str| Write::LogLocation {
        id: tasks[0].id,
        attempt,
        location: location.to_owned(),
    };
    s.commit_one(location(1, "s3://b/runs/x/t0000/1/log.txt"), "worker", t0())
        .await
        .unwrap();
    let attempts = s.run_attempts(run.id).await.unwrap();
    assert_eq!(
        attempts[0].log_location.as_deref(),
        Some("s3://b/runs/x/t0000/1/log.txt")
    );
    let err = s
        .commit_one(location(9, "s3://b/none"), "worker", t0())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}
