//! The `--gpus` flag: `auto`, `none`, or a declared inventory such as
//! `4xA100-80GB`, `2xH100-80GB,1xL4-24GB` or `H100:80GiB,H100:80GiB`.
//!
//! Sizes use the DAG file's units (`trainyard_core::resources::ByteSize`):
//! `GB` is decimal (80GB = 80·10⁹ bytes), `GiB` binary, so a declared GPU and a
//! task's `gpu_memory` are compared in the same units.

use std::fmt;
use std::str::FromStr;

use trainyard_core::resources::ByteSize;

use super::{GpuError, GpuInfo};

/// How the worker learns its GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GpuSpec {
    /// NVML if the driver library loads, else `nvidia-smi`, else no GPUs.
    #[default]
    Auto,
    /// A CPU-only worker, even on a GPU host.
    None,
    /// An explicit inventory, in index order; nothing is probed.
    Declared(Vec<DeclaredGpu>),
}

/// One GPU of a declared inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredGpu {
    pub model: String,
    pub memory_bytes: u64,
}

impl GpuSpec {
    /// The GPUs a declared inventory stands for, indexed from 0 with
    /// deterministic fake UUIDs (`GPU-decl-0`, ...); empty for `auto`/`none`.
    pub fn declared_gpus(&self) -> Vec<GpuInfo> {
        match self {
            GpuSpec::Declared(gpus) => gpus
                .iter()
                .zip(0u32..)
                .map(|(g, index)| GpuInfo {
                    index,
                    uuid: format!("GPU-decl-{index}"),
                    model: g.model.clone(),
                    memory_bytes: g.memory_bytes,
                    healthy: true,
                })
                .collect(),
            GpuSpec::Auto | GpuSpec::None => Vec::new(),
        }
    }
}

impl FromStr for GpuSpec {
    type Err = GpuError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim();
        match trimmed.to_ascii_lowercase().as_str() {
            "auto" => return Ok(GpuSpec::Auto),
            "none" | "0" => return Ok(GpuSpec::None),
            "" => return Err(invalid(input, "empty; use auto, none or e.g. 2xA100-80GB")),
            _ => {}
        }
        let mut gpus = Vec::new();
        for item in trimmed.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(invalid(input, "empty entry between commas"));
            }
            let (count, gpu) = parse_item(input, item)?;
            gpus.extend(std::iter::repeat_n(gpu, count));
        }
        Ok(GpuSpec::Declared(gpus))
    }
}

/// Parses `[Nx]MODEL-SIZE` or `[Nx]MODEL:SIZE`.
fn parse_item(input: &str, item: &str) -> Result<(usize, DeclaredGpu), GpuError> {
    let (count, rest) = match item.split_once(['x', 'X']) {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            let count: usize = n
                .parse()
                .map_err(|_| invalid(input, format!("bad GPU count {n:?} in {item:?}")))?;
            (count, rest)
        }
        _ => (1, item),
    };
    if count == 0 {
        return Err(invalid(
            input,
            format!("GPU count must be at least 1 in {item:?}"),
        ));
    }
    if count > 1024 {
        return Err(invalid(
            input,
            format!("{count} GPUs in {item:?} is not a real host"),
        ));
    }
    // ':' wins over '-' because model names may contain dashes ("A100-SXM4:80GiB").
    let (model, size) = rest
        .rsplit_once(':')
        .or_else(|| rest.rsplit_once('-'))
        .ok_or_else(|| {
            invalid(
                input,
                format!("{item:?} needs a model and a memory size, e.g. 2xA100-80GB or H100:80GiB"),
            )
        })?;
    let model = model.trim();
    if model.is_empty() {
        return Err(invalid(input, format!("missing GPU model in {item:?}")));
    }
    let memory = ByteSize::parse(size.trim())
        .map_err(|e| invalid(input, format!("bad memory size in {item:?}: {e}")))?;
    if memory.0 == 0 {
        return Err(invalid(
            input,
            format!("GPU memory must be positive in {item:?}"),
        ));
    }
    Ok((
        count,
        DeclaredGpu {
            model: model.to_string(),
            memory_bytes: memory.0,
        },
    ))
}

fn invalid(spec: &str, reason: impl Into<String>) -> GpuError {
    GpuError::InvalidSpec {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

impl fmt::Display for GpuSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpuSpec::Auto => f.write_str("auto"),
            GpuSpec::None => f.write_str("none"),
            GpuSpec::Declared(gpus) => {
                for (i, g) in gpus.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{}", g.model, ByteSize(g.memory_bytes))?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn declared(spec: &str) -> Vec<DeclaredGpu> {
        match spec.parse::<GpuSpec>().unwrap() {
            GpuSpec::Declared(g) => g,
            other => panic!("expected declared, got {other:?}"),
        }
    }

    #[test]
    fn auto_and_none_keywords_are_case_insensitive() {
        assert_eq!("auto".parse::<GpuSpec>().unwrap(), GpuSpec::Auto);
        assert_eq!(" AUTO ".parse::<GpuSpec>().unwrap(), GpuSpec::Auto);
        assert_eq!("none".parse::<GpuSpec>().unwrap(), GpuSpec::None);
        assert_eq!("0".parse::<GpuSpec>().unwrap(), GpuSpec::None);
    }

    #[test]
    fn count_times_model_dash_size_expands_in_order() {
        let gpus = declared("2xH100-80GB,1xL4-24GB");
        assert_eq!(gpus.len(), 3);
        assert_eq!(gpus[0].model, "H100");
        assert_eq!(gpus[0].memory_bytes, 80_000_000_000);
        assert_eq!(gpus[2].model, "L4");
        assert_eq!(gpus[2].memory_bytes, 24_000_000_000);
        assert_eq!(declared("4xA100-80GB").len(), 4);
    }

    #[test]
    fn colon_form_keeps_dashes_in_model_names() {
        let gpus = declared("H100:80GiB,H100:80GiB");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].memory_bytes, 80 * GIB);
        let gpus = declared("A100-SXM4:40GiB");
        assert_eq!(gpus[0].model, "A100-SXM4");
    }

    #[test]
    fn declared_gpus_get_indices_and_fake_uuids() {
        let spec: GpuSpec = "2xA100-80GB".parse().unwrap();
        let gpus = spec.declared_gpus();
        assert_eq!(gpus[0].uuid, "GPU-decl-0");
        assert_eq!(gpus[1].uuid, "GPU-decl-1");
        assert_eq!(gpus[1].index, 1);
        assert!(gpus.iter().all(|g| g.healthy));
    }

    #[test]
    fn malformed_specs_say_what_is_wrong() {
        for (spec, needle) in [
            ("", "empty"),
            ("2xA100", "needs a model and a memory size"),
            ("0xA100-80GB", "at least 1"),
            ("2xA100-80XB", "bad memory size"),
            ("A100-80GB,,L4-24GB", "empty entry"),
            ("-80GB", "missing GPU model"),
            ("A100-0GB", "positive"),
        ] {
            let err = spec.parse::<GpuSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{spec:?}: {err}");
        }
    }

    #[test]
    fn display_roundtrips_through_parse() {
        let spec: GpuSpec = "2xH100-80GB,L4:24GiB".parse().unwrap();
        let again: GpuSpec = spec.to_string().parse().unwrap();
        assert_eq!(spec, again);
    }
}
