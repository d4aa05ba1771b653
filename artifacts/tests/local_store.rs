//! The artifact store on a local directory: round trip, key safety,
//! symlinks, logs and URL parsing.
#![allow(clippy::unwrap_used)]

mod common;

use trainyard_artifacts::{ArtifactStore, AttemptKey, Error};

fn local_store(dir: &std::path::Path) -> ArtifactStore {
    ArtifactStore::from_url(dir.to_str().unwrap())
        .unwrap()
        .with_chunk_size(5 * 1024 * 1024)
}

#[tokio::test]
async fn nested_output_dir_round_trips_with_identical_bytes_and_digests() {
    let root = tempfile::tempdir().unwrap();
    let store = local_store(&root.path().join("store"));
    common::assert_output_roundtrip(&store).await;
}

#[tokio::test]
async fn file_url_creates_the_directory_and_stores_under_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a/b/store");
    let url = format!("file://{}", dir.display());
    let store = ArtifactStore::from_url(&url).unwrap();
    assert!(dir.is_dir());
    assert!(store.base_uri().starts_with("file:///"));

    let src = root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("x.txt"), b"hello").unwrap();
    let records = store.upload_dir(&src, "runs/r/t/1/out").await.unwrap();
    assert_eq!(records[0].key, "runs/r/t/1/out/x.txt");
    assert_eq!(
        std::fs::read(dir.join("runs/r/t/1/out/x.txt")).unwrap(),
        b"hello"
    );
}

#[tokio::test]
async fn prefixes_with_dotdot_are_refused_before_any_io() {
    let root = tempfile::tempdir().unwrap();
    let store = local_store(&root.path().join("store"));
    let src = root.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("x.txt"), b"hello").unwrap();

    for bad in ["runs/../../etc", "../x", "/abs/key", "runs//x"] {
        let err = store.upload_dir(&src, bad).await.unwrap_err();
        assert!(matches!(err, Error::UnsafeKey { .. }), "{bad}: {err}");
        let dest = root.path().join("dest");
        let err = store.download_prefix(bad, &dest).await.unwrap_err();
        assert!(matches!(err, Error::UnsafeKey { .. }), "{bad}: {err}");
        assert!(!dest.exists(), "nothing written for {bad}");
        let err = store.read_to_string(bad).await.unwrap_err();
        assert!(matches!(err, Error::UnsafeKey { .. }), "{bad}: {err}");
    }
}

#[tokio::test]
async fn relative_keys_that_would_escape_the_download_dir_are_refused() {
    for bad in ["../evil", "a/../../evil", "/etc/passwd", "a//b", "a/./b"] {
        let err = trainyard_artifacts::relative_key_to_path(bad).unwrap_err();
        assert!(err.to_string().contains(bad), "error names the key: {err}");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn symlinks_are_uploaded_only_when_they_stay_inside_the_output_dir() {
    let root = tempfile::tempdir().unwrap();
    let store = local_store(&root.path().join("store"));
    let secret = root.path().join("secret.txt");
    std::fs::write(&secret, b"host secret").unwrap();
    let out = root.path().join("out");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("sub/real.txt"), b"real").unwrap();
    std::os::unix::fs::symlink(&secret, out.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(root.path(), out.join("parent_dir")).unwrap();
    std::os::unix::fs::symlink(out.join("sub/real.txt"), out.join("alias.txt")).unwrap();

    let records = store.upload_dir(&out, "runs/r/t/1/out").await.unwrap();
    let keys: Vec<_> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        ["runs/r/t/1/out/alias.txt", "runs/r/t/1/out/sub/real.txt"]
    );
}

#[tokio::test]
async fn attempt_log_is_stored_read_back_and_streamed() {
    let root = tempfile::tempdir().unwrap();
    let store = local_store(&root.path().join("store"));
    let attempt = AttemptKey::new("run-1", "evaluate", 3).unwrap();

    let err = store.read_log(&attempt).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("runs/run-1/evaluate/3/log.txt"));

    let log = root.path().join("attempt.log");
    std::fs::write(&log, "line 1\nline 2 ✓\n").unwrap();
    let record = store.put_log(&attempt, &log).await.unwrap();
    assert_eq!(record.key, "runs/run-1/evaluate/3/log.txt");
    assert_eq!(record.size, 18);
    std::fs::remove_file(&log).unwrap();

    assert_eq!(
        store.read_log(&attempt).await.unwrap(),
        "line 1\nline 2 ✓\n"
    );
    let opened = store.open(&attempt.log_key()).await.unwrap();
    assert_eq!(opened.size, 18);
    let mut streamed = Vec::new();
    let mut stream = opened.stream;
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        streamed.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(streamed, "line 1\nline 2 ✓\n".as_bytes());
    assert_eq!(store.size(&attempt.log_key()).await.unwrap(), 18);
}

#[test]
fn bad_settings_get_errors_that_name_them() {
    let err = ArtifactStore::from_url("ftp://host/x").unwrap_err();
    assert!(err.to_string().contains("ftp://host/x"), "{err}");
    let err = ArtifactStore::from_url("s3:///no-bucket").unwrap_err();
    assert!(err.to_string().contains("bucket"), "{err}");
    let err = ArtifactStore::from_url("").unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = ArtifactStore::from_url_with_options(
        dir.path().to_str().unwrap(),
        &[("aws_endpoint", "http://x")],
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidOption { .. }), "{err}");
    let err =
        ArtifactStore::from_url_with_options("s3://b/p", &[("no_such_option", "1")]).unwrap_err();
    assert!(err.to_string().contains("no_such_option"), "{err}");
}

#[test]
fn cloud_urls_build_without_network_and_keep_their_prefix() {
    let s3 = ArtifactStore::from_url_with_options(
        "s3://bucket/team/prod/",
        &[
            ("aws_endpoint", "http://127.0.0.1:1"),
            ("aws_access_key_id", "k"),
            ("aws_secret_access_key", "s"),
        ],
    )
    .unwrap();
    assert_eq!(s3.base_uri(), "s3://bucket/team/prod");
    assert_eq!(
        s3.uri("runs/r/t/1/log.txt"),
        "s3://bucket/team/prod/runs/r/t/1/log.txt"
    );

    let gs = ArtifactStore::from_url_with_options(
        "gs://models",
        &[(
            "google_service_account_key",
            r#"{"private_key": "", "client_email": ""}"#,
        )],
    );
    // gs may refuse a fake key at build time; either way it must not panic.
    if let Ok(gs) = gs {
        assert_eq!(gs.base_uri(), "gs://models");
    }

    let az = ArtifactStore::from_url_with_options(
        "az://container/pre",
        &[
            ("azure_storage_account_name", "acct"),
            ("azure_storage_use_emulator", "true"),
        ],
    )
    .unwrap();
    assert_eq!(az.base_uri(), "az://container/pre");

    let mem = ArtifactStore::from_url("memory://").unwrap();
    assert_eq!(mem.uri("a/b"), "memory://a/b");
}
