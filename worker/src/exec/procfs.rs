//! What `/proc` says about processes, for recognising a task's processes
//! after the fact: a process's group, parent, state and start time
//! (`/proc/<pid>/stat`), whether its environment carries an attempt's tag
//! (`/proc/<pid>/environ`) and the boot id.
//!
//! Every probe that cannot read an answer says "unknown" (`None`, `false`),
//! and callers never kill on an unknown: a process this worker cannot
//! prove is its own is left alone.

use std::path::Path;

/// The fields of `/proc/<pid>/stat` the worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    /// Process group id.
    pub pgrp: i32,
    /// `R`, `S`, `D`, `T`, `Z`, …
    pub state: char,
    /// Start time in clock ticks since boot: with the pid, it names one
    /// process for the life of the machine (a reused pid starts later).
    pub start_ticks: u64,
}

impl ProcStat {
    /// A zombie (or dead) process holds no memory and no GPU: it only
    /// waits for its parent to read its status.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses one `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and `)`, so the fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once('(')?.0.trim().parse().ok()?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is at index n - 3.
    Some(ProcStat {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// The stat of `pid`, if it exists and is readable.
pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Every process visible in `/proc` (thread-group leaders; threads are
/// not listed at the top level). Processes that end while being read are
/// skipped.
pub fn processes() -> Vec<ProcStat> {
    processes_in(Path::new("/proc"))
}

fn processes_in(root: &Path) -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|text| parse_stat(&text))
        .collect()
}

/// Whether `pid`'s initial environment holds exactly `entry`
/// (`NAME=value`). Unreadable (gone, another user's, not dumpable): false.
pub fn environ_has(pid: i32, entry: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env.split(|b| *b == 0).any(|e| e == entry.as_bytes()),
        Err(_) => false,
    }
}

/// This boot's id: start times are counted from boot, so a record from an
/// earlier boot names nothing alive now.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parens_does_not_shift_the_fields() {
        let line = "4242 (my (odd) name) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 4242,
                ppid: 17,
                pgrp: 4242,
                state: 'S',
                start_ticks: 987654,
            }
        );
        assert!(!s.is_dead());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn this_process_is_found_with_its_own_environment() {
        let me = i32::try_from(std::process::id()).unwrap();
        let s = stat(me).unwrap();
        assert_eq!(s.pid, me);
        assert!(
            processes()
                .iter()
                .any(|p| p.pid == me && p.start_ticks == s.start_ticks)
        );
        if let Ok(path) = std::env::var("PATH") {
            assert!(environ_has(me, &format!("PATH={path}")));
        }
        assert!(!environ_has(me, "TRAINYARD_NO_SUCH_VARIABLE=1"));
        assert!(boot_id().is_some());
    }
}
