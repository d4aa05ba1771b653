//! Host resources a worker registers besides GPUs: CPU count and memory,
//! read from the OS and overridable by flags.

/// CPUs and memory this worker offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    pub cpus: u32,
    pub memory_bytes: u64,
}

impl HostResources {
    /// Reads the OS and applies overrides (`--cpus`, `--memory`). CPUs come
    /// from `available_parallelism`, which respects cgroup quotas and CPU
    /// affinity; memory from `MemTotal` in `/proc/meminfo` (0 where that file
    /// is missing, e.g. not Linux: pass an override there).
    pub fn detect(cpus: Option<u32>, memory_bytes: Option<u64>) -> Self {
        Self {
            cpus: cpus.unwrap_or_else(detect_cpus),
            memory_bytes: memory_bytes.unwrap_or_else(detect_memory_bytes),
        }
    }
}

fn detect_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

fn detect_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_meminfo_total(&s))
        .unwrap_or(0)
}

/// `MemTotal:       131891012 kB` -> bytes (the kernel's kB are KiB).
pub fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_total_is_read_in_kib() {
        let s = "MemTotal:       16384 kB\nMemFree:        100 kB\n";
        assert_eq!(parse_meminfo_total(s), Some(16384 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn overrides_win_over_the_os() {
        let r = HostResources::detect(Some(3), Some(42));
        assert_eq!(
            r,
            HostResources {
                cpus: 3,
                memory_bytes: 42
            }
        );
    }

    #[test]
    fn detection_finds_at_least_one_cpu() {
        assert!(HostResources::detect(None, None).cpus >= 1);
    }
}
