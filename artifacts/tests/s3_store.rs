//! The artifact store against a real S3-compatible HTTP server (s3s-fs on
//! loopback, SigV4 checked): same round trip as the local store, multipart
//! included, and the URL's key prefix kept.
#![allow(clippy::unwrap_used)]

mod common;

use common::{BUCKET, S3Server};
use trainyard_artifacts::{ArtifactStore, AttemptKey};

#[tokio::test]
async fn nested_output_dir_round_trips_through_s3_with_multipart() {
    let server = S3Server::start().await;
    let url = format!("s3://{BUCKET}/team/prod");
    let store = ArtifactStore::from_url_with_options(&url, &server.options())
        .unwrap()
        .with_chunk_size(5 * 1024 * 1024);
    assert_eq!(store.base_uri(), "s3://artifacts/team/prod");

    common::assert_output_roundtrip(&store).await;

    // The URL's prefix is where the server actually put the bytes.
    let on_server = server
        .root
        .path()
        .join(BUCKET)
        .join("team/prod/runs/run-42/train/1/out/model/weights.bin");
    assert_eq!(
        std::fs::metadata(&on_server).unwrap().len(),
        6 * 1024 * 1024 + 123
    );
}

#[tokio::test]
async fn attempt_log_is_served_from_s3_and_missing_logs_are_not_found() {
    let server = S3Server::start().await;
    let store =
        ArtifactStore::from_url_with_options(&format!("s3://{BUCKET}"), &server.options()).unwrap();
    let attempt = AttemptKey::new("run-7", "deploy", 1).unwrap();

    let err = store.read_log(&attempt).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string()
            .contains("s3://artifacts/runs/run-7/deploy/1/log.txt"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.txt");
    std::fs::write(&log, "deploying\ndone\n").unwrap();
    let record = store.put_log(&attempt, &log).await.unwrap();
    assert_eq!(record.uri, "s3://artifacts/runs/run-7/deploy/1/log.txt");
    assert_eq!(store.read_log(&attempt).await.unwrap(), "deploying\ndone\n");
}

#[tokio::test]
async fn wrong_credentials_fail_with_the_uri_in_the_error() {
    let server = S3Server::start().await;
    let store = ArtifactStore::from_url_with_options(
        &format!("s3://{BUCKET}"),
        &[
            ("aws_endpoint", server.endpoint.as_str()),
            ("aws_access_key_id", common::ACCESS_KEY),
            ("aws_secret_access_key", "wrong"),
        ],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), b"x").unwrap();
    let err = store
        .upload_dir(dir.path(), "runs/r/t/1/out")
        .await
        .unwrap_err();
    assert!(!err.is_not_found());
    assert!(
        err.to_string()
            .contains("s3://artifacts/runs/r/t/1/out/a.txt"),
        "{err}"
    );
}
