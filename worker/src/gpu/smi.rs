//! `nvidia-smi` as a discovery and sampling fallback: locating it on a given
//! `PATH`, running it with a timeout, and parsing its CSV
//! (`--format=csv,noheader,nounits`) strictly, so a changed or broken output
//! becomes a clear error instead of a wrong inventory.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::{DiscoveryOptions, GpuError, GpuInfo, GpuUsage, Result};

const PROGRAM: &str = "nvidia-smi";
const INVENTORY_QUERY: &str = "--query-gpu=index,uuid,name,memory.total";
const USAGE_QUERY: &str = "--query-gpu=index,utilization.gpu,memory.used";
const FORMAT: &str = "--format=csv,noheader,nounits";
const MIB: u64 = 1 << 20;
/// Keeps an error message readable when the tool dumps a wall of text.
const MAX_STDERR: usize = 500;

/// The inventory from `nvidia-smi`, or `None` when it is not installed.
pub(super) async fn discover(opts: &DiscoveryOptions) -> Result<Option<Vec<GpuInfo>>> {
    match run(opts, INVENTORY_QUERY).await? {
        Some(stdout) => parse_inventory(&stdout).map(Some),
        None => Ok(None),
    }
}

/// Utilisation per GPU, or `None` when `nvidia-smi` is not installed.
pub(super) async fn sample_usage(opts: &DiscoveryOptions) -> Result<Option<Vec<GpuUsage>>> {
    match run(opts, USAGE_QUERY).await? {
        Some(stdout) => parse_usage(&stdout).map(Some),
        None => Ok(None),
    }
}

/// Runs `nvidia-smi QUERY --format=...`; `None` when it is not on the path.
async fn run(opts: &DiscoveryOptions, query: &str) -> Result<Option<String>> {
    let path = opts.path.clone().or_else(|| std::env::var_os("PATH"));
    let Some(program) = find_program(PROGRAM, path.as_deref()) else {
        return Ok(None);
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.arg(query)
        .arg(FORMAT)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A hung nvidia-smi is killed when the timeout drops the future.
        .kill_on_drop(true);
    if let Some(path) = &opts.path {
        cmd.env("PATH", path);
    }
    let output = match tokio::time::timeout(opts.timeout, output_retrying_busy(&mut cmd)).await {
        Ok(result) => result.map_err(|source| GpuError::Spawn {
            program: program.display().to_string(),
            source,
        })?,
        Err(_) => {
            return Err(GpuError::Timeout {
                program: program.display().to_string(),
                timeout: opts.timeout,
            });
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        // nvidia-smi prints some failures ("No devices were found") on stdout.
        let detail = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        return Err(GpuError::Failed {
            program: program.display().to_string(),
            status: output.status.to_string(),
            stderr: truncate(detail.trim(), MAX_STDERR),
        });
    }
    Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// Spawning a freshly written executable can fail with ETXTBSY while another
/// thread's fork still holds its write handle; that clears within
/// milliseconds, so retry a few times.
async fn output_retrying_busy(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<std::process::Output> {
    let mut attempt = 0;
    loop {
        match cmd.output().await {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
            }
            other => return other,
        }
    }
}

/// The first executable file named `name` in the directories of `path`.
fn find_program(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    let path: OsString = path?.to_owned();
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Values such as `[N/A]`, `[Not Supported]` or `[Unknown Error]`: the
/// driver could not tell, which is not a parse error.
fn is_unavailable(field: &str) -> bool {
    field.starts_with('[') && field.ends_with(']')
}

fn malformed(line: usize, reason: impl Into<String>, text: &str) -> GpuError {
    GpuError::Malformed {
        line,
        reason: reason.into(),
        text: truncate(text, 200),
    }
}

fn parse_index(line_no: usize, field: &str, line: &str) -> Result<u32> {
    field.parse().map_err(|_| {
        malformed(
            line_no,
            format!("GPU index {field:?} is not a number"),
            line,
        )
    })
}

/// Parses `index, uuid, name, memory.total [MiB]` lines. Model names may
/// contain commas, so the fields between uuid and memory form the name. A
/// memory the driver cannot report marks the GPU unhealthy.
pub fn parse_inventory(stdout: &str) -> Result<Vec<GpuInfo>> {
    let mut gpus: Vec<GpuInfo> = Vec::new();
    for (i, line) in stdout.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() < 4 {
            return Err(malformed(
                line_no,
                format!(
                    "expected 4 fields (index, uuid, name, memory.total), found {}",
                    fields.len()
                ),
                line,
            ));
        }
        let index = parse_index(line_no, fields[0], line)?;
        let uuid = fields[1];
        if uuid.is_empty() || uuid.contains(char::is_whitespace) {
            return Err(malformed(
                line_no,
                format!("GPU uuid {uuid:?} is not a uuid"),
                line,
            ));
        }
        let model = fields[2..fields.len() - 1].join(", ");
        if model.is_empty() {
            return Err(malformed(line_no, "GPU name is empty", line));
        }
        let mem = fields[fields.len() - 1];
        let (memory_bytes, healthy) = if is_unavailable(mem) {
            (0, false)
        } else {
            let mib: u64 = mem.parse().map_err(|_| {
                malformed(
                    line_no,
                    format!("memory.total {mem:?} is not a number of MiB"),
                    line,
                )
            })?;
            (mib.saturating_mul(MIB), true)
        };
        if gpus.iter().any(|g| g.index == index) {
            return Err(malformed(
                line_no,
                format!("GPU index {index} appears twice"),
                line,
            ));
        }
        gpus.push(GpuInfo {
            index,
            uuid: uuid.to_string(),
            model,
            memory_bytes,
            healthy: healthy && !is_unavailable(uuid),
        });
    }
    Ok(gpus)
}

/// Parses `index, utilization.gpu [%], memory.used [MiB]` lines; values the
/// driver cannot report count as 0.
pub fn parse_usage(stdout: &str) -> Result<Vec<GpuUsage>> {
    let mut out = Vec::new();
    for (i, line) in stdout.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [index, util, mem] = fields.as_slice() else {
            return Err(malformed(
                line_no,
                format!(
                    "expected 3 fields (index, utilization.gpu, memory.used), found {}",
                    fields.len()
                ),
                line,
            ));
        };
        let number = |field: &str, what: &str| -> Result<u64> {
            if is_unavailable(field) {
                return Ok(0);
            }
            field
                .parse()
                .map_err(|_| malformed(line_no, format!("{what} {field:?} is not a number"), line))
        };
        let utilization = number(util, "utilization.gpu")?;
        out.push(GpuUsage {
            index: parse_index(line_no, index, line)?,
            utilization_percent: u32::try_from(utilization.min(100)).unwrap_or(100),
            memory_used_bytes: number(mem, "memory.used")?.saturating_mul(MIB),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_keeps_commas_inside_model_names() {
        let gpus = parse_inventory("3, GPU-abc, NVIDIA A100-SXM4-80GB, rev 2, 81920\n").unwrap();
        assert_eq!(gpus[0].model, "NVIDIA A100-SXM4-80GB, rev 2");
        assert_eq!(gpus[0].memory_bytes, 81920 * MIB);
    }

    #[test]
    fn unavailable_memory_marks_gpu_unhealthy() {
        let gpus = parse_inventory("0, GPU-abc, Tesla T4, [N/A]\n").unwrap();
        assert!(!gpus[0].healthy);
        assert_eq!(gpus[0].memory_bytes, 0);
    }

    #[test]
    fn duplicate_indices_are_rejected() {
        let err = parse_inventory("0, GPU-a, L4, 23034\n0, GPU-b, L4, 23034\n").unwrap_err();
        assert!(err.to_string().contains("appears twice"), "{err}");
    }

    #[test]
    fn usage_caps_percent_and_treats_na_as_zero() {
        let usage = parse_usage("0, 37, 1024\n1, [N/A], [N/A]\n").unwrap();
        assert_eq!(usage[0].utilization_percent, 37);
        assert_eq!(usage[0].memory_used_bytes, 1024 * MIB);
        assert_eq!(usage[1].utilization_percent, 0);
    }

    #[test]
    fn find_program_ignores_non_executables_and_missing_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nvidia-smi");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let path = std::env::join_paths([dir.path()]).unwrap();
        assert_eq!(find_program(PROGRAM, Some(&path)), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_program(PROGRAM, Some(&path)), Some(file));
        assert_eq!(find_program(PROGRAM, None), None);
    }
}
