//! `trainyard bench store`: claim and transition throughput of a store.
//!
//! Placeholder until the benchmark lands; see below.
use serde::Serialize;

use super::error::Result;

#[derive(Debug, Clone, Serialize)]
pub struct StoreBenchReport {}

pub async fn bench_store(_url: &str, _tasks: usize) -> Result<StoreBenchReport> {
    Ok(StoreBenchReport {})
}
