//! A 1 GiB output uploads and downloads in bounded memory: the process's
//! peak RSS (VmHWM) stays under 100 MB, on the local store and through a
//! real S3 HTTP server (whose own memory counts too: it runs in-process).
//!
//! Its own test binary, so no other test's allocations move the high-water
//! mark, and `#[ignore]` so CI stays fast. Run it with
//! `cargo test --release -p trainyard-artifacts --test big_artifact -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::{BUCKET, S3Server};
use trainyard_artifacts::ArtifactStore;

const GIB: u64 = 1024 * 1024 * 1024;
const RSS_LIMIT_BYTES: u64 = 100 * 1000 * 1000;

/// A field of /proc/self/status in bytes (the kernel reports kB).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"));
    let kb: u64 = line
        .trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Resets VmHWM to the current RSS (Linux: writing "5" to clear_refs), so
/// the second backend is measured on its own.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

async fn round_trip_one_gib(label: &str, store: &ArtifactStore) {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let sha = common::write_pattern_file(&out.join("model.bin"), GIB, 0x5eed);

    reset_peak_rss();
    let before = proc_status_bytes("VmRSS:");
    let started = Instant::now();
    let uploaded = store
        .upload_dir(&out, "runs/big/train/1/out")
        .await
        .unwrap();
    let upload_s = started.elapsed().as_secs_f64();
    assert_eq!(uploaded.len(), 1);
    assert_eq!(uploaded[0].size, GIB);
    assert_eq!(uploaded[0].sha256, sha);
    std::fs::remove_dir_all(&out).unwrap();

    let started = Instant::now();
    let input = work.path().join("in");
    let downloaded = store
        .download_prefix("runs/big/train/1/out", &input)
        .await
        .unwrap();
    let download_s = started.elapsed().as_secs_f64();
    assert_eq!(downloaded, uploaded);
    assert_eq!(common::sha256_file(&input.join("model.bin")), sha);

    let peak = proc_status_bytes("VmHWM:");
    println!(
        "{label}: 1 GiB upload {upload_s:.1}s, download {download_s:.1}s; \
         RSS before {:.1} MB, peak (VmHWM) {:.1} MB",
        before as f64 / 1e6,
        peak as f64 / 1e6
    );
    assert!(
        peak < RSS_LIMIT_BYTES,
        "{label}: peak RSS {peak} bytes is over {RSS_LIMIT_BYTES}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "moves 2 GiB through each backend; run in release with --ignored"]
async fn one_gib_output_round_trips_with_peak_rss_under_100_mb() {
    let root = tempfile::tempdir().unwrap();
    let local = ArtifactStore::from_url(root.path().join("store").to_str().unwrap()).unwrap();
    round_trip_one_gib("local", &local).await;

    let server = S3Server::start().await;
    let s3 = ArtifactStore::from_url_with_options(&format!("s3://{BUCKET}/big"), &server.options())
        .unwrap();
    round_trip_one_gib("s3 (s3s-fs in-process)", &s3).await;
}
