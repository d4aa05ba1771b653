//! Helpers shared by the artifact integration tests: a real S3-compatible
//! HTTP server (s3s-fs) on loopback, directory trees to upload, and
//! streamed hashing to compare them.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ACCESS_KEY: &str = "trainyard-test";
pub const SECRET_KEY: &str = "trainyard-test-secret";
pub const BUCKET: &str = "artifacts";

/// An s3s-fs server on 127.0.0.1:<free port>, storing under a temp dir.
/// It checks SigV4 signatures against ACCESS_KEY/SECRET_KEY.
pub struct S3Server {
    pub endpoint: String,
    /// The server's data root: `<root>/<bucket>/<key>` is an object.
    pub root: TempDir,
    accept_loop: JoinHandle<()>,
}

impl S3Server {
    pub async fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        // s3s-fs serves each top-level directory as a bucket.
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            root,
            accept_loop,
        }
    }

    /// Options that point the store at this server, passed explicitly so
    /// the test never touches the process environment.
    pub fn options(&self) -> Vec<(&str, &str)> {
        vec![
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_access_key_id", ACCESS_KEY),
            ("aws_secret_access_key", SECRET_KEY),
            ("aws_region", "us-east-1"),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// sha256 of a file, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// relative path ('/'-separated) → (size, sha256) for every file under `dir`.
pub fn tree_digest(dir: &Path) -> BTreeMap<String, (u64, String)> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap();
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap();
        let key = rel
            .components()
            .map(|c| c.as_os_str().to_str().unwrap())
            .collect::<Vec<_>>()
            .join("/");
        let size = entry.metadata().unwrap().len();
        out.insert(key, (size, sha256_file(entry.path())));
    }
    out
}

/// Writes `len` bytes of deterministic, incompressible-looking data in
/// 1 MiB chunks (never holding the file in memory); returns its sha256.
pub fn write_pattern_file(path: &Path, len: u64, seed: u64) -> String {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let mut state = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            // xorshift64: cheap, and every chunk differs.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        file.write_all(&buf[..n]).unwrap();
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    file.flush().unwrap();
    hex(&hasher.finalize())
}

/// A nested output dir like a training task leaves: several files at
/// several depths, an empty file, a name with a space, and one file big
/// enough (6 MiB) to need a multipart upload at the 5 MiB chunk size.
pub fn make_output_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("model/checkpoints")).unwrap();
    std::fs::create_dir_all(dir.join("reports")).unwrap();
    std::fs::write(dir.join("metrics.json"), br#"{"auc": 0.91}"#).unwrap();
    std::fs::write(dir.join("empty.txt"), b"").unwrap();
    std::fs::write(dir.join("reports/eval summary.md"), b"# eval\nall good\n").unwrap();
    std::fs::write(dir.join("model/config.toml"), b"layers = 4\n").unwrap();
    write_pattern_file(&dir.join("model/checkpoints/epoch-1.bin"), 100_000, 7);
    write_pattern_file(&dir.join("model/weights.bin"), 6 * 1024 * 1024 + 123, 42);
}

/// The scenario both backends must pass: upload a nested output dir, check
/// the records, download it elsewhere and compare byte for byte.
pub async fn assert_output_roundtrip(store: &trainyard_artifacts::ArtifactStore) {
    use trainyard_artifacts::AttemptKey;

    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");
    make_output_tree(&out_dir);
    let attempt = AttemptKey::new("run-42", "train", 1).unwrap();
    let prefix = attempt.output_prefix();

    let uploaded = store.upload_dir(&out_dir, &prefix).await.unwrap();
    let expected = tree_digest(&out_dir);
    assert_eq!(uploaded.len(), expected.len(), "{uploaded:#?}");
    for record in &uploaded {
        let rel = record
            .key
            .strip_prefix("runs/run-42/train/1/out/")
            .unwrap_or_else(|| panic!("{} outside the attempt prefix", record.key));
        let (size, sha) = &expected[rel];
        assert_eq!(record.size, *size, "{rel}");
        assert_eq!(&record.sha256, sha, "{rel}");
        assert_eq!(record.uri, store.uri(&record.key));
    }
    let empty = uploaded
        .iter()
        .find(|r| r.key.ends_with("/empty.txt"))
        .unwrap();
    assert_eq!(empty.size, 0);
    assert_eq!(
        empty.sha256,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );

    // A sibling attempt prefix that shares a string prefix must not leak in.
    let sibling = work.path().join("sibling");
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::write(sibling.join("other.txt"), b"not mine").unwrap();
    store
        .upload_dir(&sibling, &format!("{prefix}2"))
        .await
        .unwrap();

    let input_dir = work.path().join("in").join("train");
    let downloaded = store.download_prefix(&prefix, &input_dir).await.unwrap();
    assert_eq!(tree_digest(&input_dir), expected);
    assert_eq!(downloaded, uploaded);

    // Attempt 1 has outputs; a log-only attempt 2 does not count.
    let log = work.path().join("log.txt");
    std::fs::write(&log, b"attempt 2 failed before writing outputs\n").unwrap();
    let second = AttemptKey::new("run-42", "train", 2).unwrap();
    store.put_log(&second, &log).await.unwrap();
    assert_eq!(
        store
            .attempts_with_outputs("run-42", "train")
            .await
            .unwrap(),
        vec![1]
    );
    assert!(
        store
            .attempts_with_outputs("run-42", "nobody")
            .await
            .unwrap()
            .is_empty()
    );
}
