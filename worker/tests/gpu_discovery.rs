//! GPU discovery against a fake `nvidia-smi` placed on an explicit PATH
//! (never the process's own, which other tests share).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use trainyard_worker::gpu::{self, DiscoveryOptions, GpuError, GpuSource, GpuSpec, UsageSampler};

const MIB: u64 = 1 << 20;

/// Realistic `--query-gpu=index,uuid,name,memory.total` output of an HGX H100 box.
const EIGHT_H100: &str = "\
0, GPU-5f3c1b2a-8d4e-4c1f-9a7b-1e2d3c4b5a60, NVIDIA H100 80GB HBM3, 81559
1, GPU-6a4d2c3b-9e5f-4d20-8b8c-2f3e4d5c6b71, NVIDIA H100 80GB HBM3, 81559
2, GPU-7b5e3d4c-af60-4e31-9c9d-304f5e6d7c82, NVIDIA H100 80GB HBM3, 81559
3, GPU-8c6f4e5d-b071-4f42-adae-41506f7e8d93, NVIDIA H100 80GB HBM3, 81559
4, GPU-9d705f6e-c182-4053-bebf-5261708f9ea4, NVIDIA H100 80GB HBM3, 81559
5, GPU-ae81607f-d293-4164-cfc0-637281a0afb5, NVIDIA H100 80GB HBM3, 81559
6, GPU-bf927180-e3a4-4275-d0d1-748392b1b0c6, NVIDIA H100 80GB HBM3, 81559
7, GPU-c0a38291-f4b5-4386-e1e2-8594a3c2c1d7, NVIDIA H100 80GB HBM3, 81559
";

/// A fake `nvidia-smi` that answers the inventory and the usage query.
fn fake_smi(dir: &Path, inventory: &str, usage: &str, exit_code: i32) {
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n  *memory.total*) cat <<'EOF'\n{inventory}EOF\n;;\n  *utilization*) cat <<'EOF'\n{usage}EOF\n;;\nesac\nexit {exit_code}\n"
    );
    let file = dir.join("nvidia-smi");
    std::fs::write(&file, script).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn opts(dir: &Path) -> DiscoveryOptions {
    // /bin and /usr/bin so the script's `sh` and `cat` resolve.
    let path = std::env::join_paths([dir, Path::new("/usr/bin"), Path::new("/bin")]).unwrap();
    DiscoveryOptions::with_path(path)
}

#[tokio::test]
async fn auto_discovers_eight_gpus_from_nvidia_smi() {
    let dir = tempfile::tempdir().unwrap();
    fake_smi(dir.path(), EIGHT_H100, "", 0);
    let (gpus, source) = gpu::try_discover(&GpuSpec::Auto, &opts(dir.path()))
        .await
        .unwrap();
    assert_eq!(source, GpuSource::NvidiaSmi);
    assert_eq!(gpus.len(), 8);
    assert_eq!(gpus[0].index, 0);
    assert_eq!(gpus[0].uuid, "GPU-5f3c1b2a-8d4e-4c1f-9a7b-1e2d3c4b5a60");
    assert_eq!(gpus[0].model, "NVIDIA H100 80GB HBM3");
    assert_eq!(gpus[0].memory_bytes, 81559 * MIB);
    assert_eq!(gpus[7].index, 7);
    assert!(gpus.iter().all(|g| g.healthy));
}

#[tokio::test]
async fn malformed_output_is_a_clear_error_and_falls_back_to_cpu_only() {
    let dir = tempfile::tempdir().unwrap();
    fake_smi(
        dir.path(),
        "0, GPU-abc, NVIDIA H100 80GB HBM3, lots\n",
        "",
        0,
    );
    let err = gpu::try_discover(&GpuSpec::Auto, &opts(dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GpuError::Malformed { line: 1, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("memory.total \"lots\" is not a number"),
        "{msg}"
    );

    let (gpus, source, warning) = gpu::discover_with(&GpuSpec::Auto, &opts(dir.path())).await;
    assert!(gpus.is_empty());
    assert_eq!(source, GpuSource::None);
    assert!(
        warning
            .unwrap()
            .to_string()
            .contains("malformed nvidia-smi output")
    );
}

#[tokio::test]
async fn uuid_with_whitespace_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let bad = EIGHT_H100.replace("GPU-9d705f6e", "GPU-9d70 5f6e");
    fake_smi(dir.path(), &bad, "", 0);
    let err = gpu::try_discover(&GpuSpec::Auto, &opts(dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GpuError::Malformed { line: 5, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn truncated_lines_name_the_missing_fields() {
    let dir = tempfile::tempdir().unwrap();
    fake_smi(dir.path(), "0, GPU-abc\n", "", 0);
    let err = gpu::try_discover(&GpuSpec::Auto, &opts(dir.path()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected 4 fields"), "{err}");
}

#[tokio::test]
async fn failing_exit_code_reports_status_and_message() {
    let dir = tempfile::tempdir().unwrap();
    fake_smi(
        dir.path(),
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
        "",
        9,
    );
    let err = gpu::try_discover(&GpuSpec::Auto, &opts(dir.path()))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, GpuError::Failed { .. }), "{err:?}");
    assert!(msg.contains("exit status: 9"), "{msg}");
    assert!(
        msg.contains("couldn't communicate with the NVIDIA driver"),
        "{msg}"
    );

    let (gpus, _, warning) = gpu::discover_with(&GpuSpec::Auto, &opts(dir.path())).await;
    assert!(gpus.is_empty());
    assert!(warning.is_some());
}

#[tokio::test]
async fn no_nvidia_smi_on_path_means_cpu_only_without_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (gpus, source, warning) = gpu::discover_with(&GpuSpec::Auto, &opts(dir.path())).await;
    assert!(gpus.is_empty());
    assert_eq!(source, GpuSource::None);
    assert!(warning.is_none(), "{warning:?}");
}

#[tokio::test]
async fn none_and_declared_specs_never_run_nvidia_smi() {
    let dir = tempfile::tempdir().unwrap();
    // A tool that would fail loudly if it were called.
    fake_smi(dir.path(), "garbage\n", "garbage\n", 1);
    let (gpus, source) = gpu::try_discover(&GpuSpec::None, &opts(dir.path()))
        .await
        .unwrap();
    assert!(gpus.is_empty());
    assert_eq!(source, GpuSource::None);

    let spec: GpuSpec = "2xA100-80GB".parse().unwrap();
    let (gpus, source) = gpu::try_discover(&spec, &opts(dir.path())).await.unwrap();
    assert_eq!(source, GpuSource::Declared);
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[1].uuid, "GPU-decl-1");
    let sampler = UsageSampler::new(source, opts(dir.path()));
    assert!(sampler.sample().await.unwrap().is_empty());
}

#[tokio::test]
async fn usage_sampling_reads_utilisation_and_memory_used() {
    let dir = tempfile::tempdir().unwrap();
    fake_smi(dir.path(), EIGHT_H100, "0, 97, 70321\n1, 0, 1\n", 0);
    let sampler = UsageSampler::new(GpuSource::NvidiaSmi, opts(dir.path()));
    let usage = sampler.sample().await.unwrap();
    assert_eq!(usage.len(), 2);
    assert_eq!(usage[0].utilization_percent, 97);
    assert_eq!(usage[0].memory_used_bytes, 70321 * MIB);
}
