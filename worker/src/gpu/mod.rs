//! GPU discovery and utilisation sampling for the worker.
//!
//! Owns: the `--gpus` spec ([`GpuSpec`]), the discovered inventory
//! ([`GpuInfo`]), probing through NVML (`nvml`, the driver library loaded at
//! run time so the binary runs on hosts without NVIDIA libraries) and
//! `nvidia-smi` (`smi`), and per-GPU utilisation for heartbeats.
//!
//! Policy: `auto` tries NVML, then `nvidia-smi`; no NVIDIA library and no
//! `nvidia-smi` on PATH means a CPU-only worker and is not an error. A probe
//! that exists but fails or prints something unparseable *is* an error
//! ([`try_discover`]); [`discover`] turns it into a CPU-only inventory plus a
//! warning for the caller to log, so a broken driver never stops a worker.

mod nvml;
mod smi;
mod spec;

use std::ffi::OsString;
use std::time::Duration;

pub use smi::{parse_inventory, parse_usage};
pub use spec::{DeclaredGpu, GpuSpec};

/// One GPU as the worker reports it at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The index CUDA_VISIBLE_DEVICES uses on this host.
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_bytes: u64,
    /// False when the device was seen but could not be queried; the
    /// scheduler never places work on it.
    pub healthy: bool,
}

/// One utilisation sample of one GPU, for heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuUsage {
    pub index: u32,
    /// 0..=100.
    pub utilization_percent: u32,
    pub memory_used_bytes: u64,
}

/// Where an inventory came from; logged at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuSource {
    Nvml,
    NvidiaSmi,
    Declared,
    /// `--gpus none`, or `auto` found no NVIDIA library or tool.
    None,
}

pub type Result<T, E = GpuError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("invalid --gpus value {spec:?}: {reason}")]
    InvalidSpec { spec: String, reason: String },
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not answer within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} exited with {status}: {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("malformed nvidia-smi output on line {line}: {reason} (line: {text:?})")]
    Malformed {
        line: usize,
        reason: String,
        text: String,
    },
}

/// Knobs for probing; tests pass their own `PATH` instead of mutating the
/// process environment (which would race other tests).
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// Where to look for `nvidia-smi`; `None` means the process's `PATH`.
    pub path: Option<OsString>,
    /// Try NVML before `nvidia-smi`. Off in tests that must see the fake tool
    /// even on a host with a real GPU.
    pub use_nvml: bool,
    /// Upper bound for one `nvidia-smi` call; a wedged driver can hang it.
    pub timeout: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            path: None,
            use_nvml: true,
            timeout: Duration::from_secs(10),
        }
    }
}

impl DiscoveryOptions {
    /// Probe only `nvidia-smi`, looked up in `path`.
    pub fn with_path(path: impl Into<OsString>) -> Self {
        Self {
            path: Some(path.into()),
            use_nvml: false,
            ..Self::default()
        }
    }
}

/// Resolves `spec` to an inventory, returning probe failures as errors.
pub async fn try_discover(
    spec: &GpuSpec,
    opts: &DiscoveryOptions,
) -> Result<(Vec<GpuInfo>, GpuSource)> {
    match spec {
        GpuSpec::None => Ok((Vec::new(), GpuSource::None)),
        GpuSpec::Declared(_) => Ok((spec.declared_gpus(), GpuSource::Declared)),
        GpuSpec::Auto => {
            if opts.use_nvml {
                match tokio::task::spawn_blocking(nvml::discover).await {
                    Ok(Ok(gpus)) => return Ok((gpus, GpuSource::Nvml)),
                    Ok(Err(reason)) => {
                        tracing::debug!(%reason, "nvml unavailable, trying nvidia-smi");
                    }
                    Err(join) => tracing::warn!(error = %join, "nvml probe panicked"),
                }
            }
            match smi::discover(opts).await? {
                Some(gpus) => Ok((gpus, GpuSource::NvidiaSmi)),
                None => Ok((Vec::new(), GpuSource::None)),
            }
        }
    }
}

/// Resolves `spec` like [`try_discover`], but a failed probe yields a
/// CPU-only inventory and the error as a warning for the caller to log.
pub async fn discover_with(
    spec: &GpuSpec,
    opts: &DiscoveryOptions,
) -> (Vec<GpuInfo>, GpuSource, Option<GpuError>) {
    match try_discover(spec, opts).await {
        Ok((gpus, source)) => (gpus, source, None),
        Err(err) => (Vec::new(), GpuSource::None, Some(err)),
    }
}

/// [`discover_with`] using the process's `PATH` and NVML; the warning is a
/// sentence ready to log ("GPU discovery failed, running CPU-only: ...").
pub async fn discover(spec: &GpuSpec) -> (Vec<GpuInfo>, Option<String>) {
    let (gpus, _source, err) = discover_with(spec, &DiscoveryOptions::default()).await;
    let warning = err.map(|e| format!("GPU discovery failed, running CPU-only: {e}"));
    (gpus, warning)
}

/// Samples utilisation of real GPUs for heartbeats.
///
/// Declared and CPU-only inventories have nothing to sample and return an
/// empty list without running anything.
#[derive(Debug, Clone)]
pub struct UsageSampler {
    enabled: bool,
    opts: DiscoveryOptions,
}

impl UsageSampler {
    /// A sampler matching where the inventory came from.
    pub fn new(source: GpuSource, opts: DiscoveryOptions) -> Self {
        Self {
            enabled: matches!(source, GpuSource::Nvml | GpuSource::NvidiaSmi),
            opts,
        }
    }

    /// One sample per GPU via `nvidia-smi`; empty when disabled or when
    /// `nvidia-smi` is missing.
    pub async fn sample(&self) -> Result<Vec<GpuUsage>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        Ok(smi::sample_usage(&self.opts).await?.unwrap_or_default())
    }
}
