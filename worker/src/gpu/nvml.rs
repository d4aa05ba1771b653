//! GPU inventory through NVML (`nvml-wrapper`). `Nvml::init` dlopens
//! `libnvidia-ml` at run time, so this compiles and runs on hosts without
//! NVIDIA libraries: there it simply reports "unavailable" and discovery
//! falls back to `nvidia-smi`.

use nvml_wrapper::Nvml;

use super::GpuInfo;

/// Lists GPUs, or says why NVML cannot be used. A device that NVML counts
/// but cannot query is reported unhealthy rather than dropped, so its index
/// stays reserved and visible to operators.
pub(super) fn discover() -> Result<Vec<GpuInfo>, String> {
    let nvml = Nvml::init().map_err(|e| format!("nvml init: {e}"))?;
    let count = nvml
        .device_count()
        .map_err(|e| format!("nvml device count: {e}"))?;
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let queried = nvml.device_by_index(index).and_then(|dev| {
            Ok(GpuInfo {
                index,
                uuid: dev.uuid()?,
                model: dev.name()?,
                memory_bytes: dev.memory_info()?.total,
                healthy: true,
            })
        });
        match queried {
            Ok(gpu) => gpus.push(gpu),
            Err(error) => {
                tracing::warn!(index, %error, "nvml could not query gpu, marking it unhealthy");
                gpus.push(GpuInfo {
                    index,
                    uuid: String::new(),
                    model: String::new(),
                    memory_bytes: 0,
                    healthy: false,
                });
            }
        }
    }
    Ok(gpus)
}
