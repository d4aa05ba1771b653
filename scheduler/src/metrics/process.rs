//! This process's memory as the kernel reports it (`/proc/self/status`),
//! for the RSS gauge and `trainyard bench`.

/// Resident memory now and at its peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStatus {
    /// `VmRSS`.
    pub rss_bytes: u64,
    /// `VmHWM`: the peak resident set size.
    pub hwm_bytes: u64,
}

/// Reads `/proc/self/status`; `None` where there is no procfs (not Linux).
pub fn memory_status() -> Option<MemoryStatus> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status(&text)
}

fn parse_status(text: &str) -> Option<MemoryStatus> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
    };
    Some(MemoryStatus {
        rss_bytes: field("VmRSS:")?,
        hwm_bytes: field("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_peak_in_bytes() {
        let text = "Name:\ttrainyard\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(
            parse_status(text),
            Some(MemoryStatus {
                rss_bytes: 10240 * 1024,
                hwm_bytes: 20480 * 1024
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
    }
}
