//! The watchdog: a small process beside each worker that kills the
//! worker's task process groups when the worker can no longer do it.
//!
//! Why a separate process: the kernel's `PR_SET_PDEATHSIG` only reaches a
//! task's main process, so what the task started (`sh -c` → `python`,
//! DataLoader workers, `torchrun` ranks) would live on after a `kill -9`
//! of the worker; and a frozen worker (SIGSTOP, a machine thrashing in
//! swap) cannot kill anything, while the scheduler retries its tasks
//! elsewhere once the lost-worker timeout passes. The watchdog is the
//! worker's own binary run again with [`WATCHDOG_ARG`]
//! ([`WatchdogCommand::this_binary`]; the binary's `main` calls
//! [`main_if_invoked`] first), in its own process group, and it:
//!
//! - kills every group it guards when its stdin reaches end-of-file, which
//!   happens when the worker exits, however it exits (the kernel closes the
//!   pipe; nothing else holds its write end, which is close-on-exec);
//! - kills every group it guards at the worker's lease deadline unless the
//!   worker renews it: the worker renews it each time the scheduler
//!   acknowledges a heartbeat, and sets it short of the lost-worker
//!   timeout, so a frozen or cut-off worker's tasks are dead before the
//!   scheduler declares it lost and starts their retries.
//!
//! Protocol, one line per message on stdin (`CLOCK_MONOTONIC` is one clock
//! for every process on the machine, so deadlines need no conversion):
//!
//! ```text
//! group <pgid> <leader start ticks> <tag> <run/task/attempt>
//! ended <pgid>
//! forget <tag>
//! lease <CLOCK_MONOTONIC deadline in ms, 0 = none>
//! ```
//!
//! Groups are known by their tag: a `group 0 0 <tag> …` line announces a
//! task before it is spawned (pending: its processes are found by the tag,
//! see [`super::groups`]), and the `group` line with its pgid that follows
//! the spawn replaces it; `forget` drops an announcement whose spawn failed.
//! At end-of-file a pending task may still be between fork and exec, where
//! its environment does not show the tag yet, so pending ones are looked
//! for once more a moment later.
//!
//! Before killing a group it checks that the group is still the one it was
//! told about ([`super::groups::GroupRecord::members`]). It writes one log
//! line per kill to stderr (the worker's log) and ignores SIGINT, SIGTERM
//! and SIGHUP: it leaves on end-of-file only.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::groups::{GroupFate, GroupRecord, kill_if_ours};
use super::procfs;

/// `argv[1]` that makes the trainyard binary a watchdog.
pub const WATCHDOG_ARG: &str = "__trainyard-worker-watchdog";

/// Milliseconds of `CLOCK_MONOTONIC` (since boot, not counting suspend).
pub fn mono_now_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            let ms = i128::from(t.tv_sec()) * 1000 + i128::from(t.tv_nsec()) / 1_000_000;
            u64::try_from(ms).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// How to start the watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl WatchdogCommand {
    /// This executable with [`WATCHDOG_ARG`]; its `main` must call
    /// [`main_if_invoked`] before anything else.
    pub fn this_binary() -> std::io::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
            args: vec![WATCHDOG_ARG.into()],
        })
    }
}

/// Runs the watchdog and returns its exit code when this process was
/// started as one (`argv[1]` is [`WATCHDOG_ARG`]); `None` otherwise.
pub fn main_if_invoked() -> Option<ExitCode> {
    if std::env::args_os().nth(1)? != WATCHDOG_ARG {
        return None;
    }
    // Blocked before any thread starts, so no thread ever takes them:
    // the watchdog outlives the signals that stop its worker.
    let mut quiet = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        quiet.add(s);
    }
    let _ = quiet.thread_block();
    let worker = std::env::var("TRAINYARD_WATCHDOG_WORKER_PID").unwrap_or_default();
    serve(
        std::io::BufReader::new(std::io::stdin()),
        &worker,
        &mut std::io::stderr(),
    );
    Some(ExitCode::SUCCESS)
}

/// One message from the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Group(GroupRecord),
    Ended(i32),
    Forget(String),
    Lease(u64),
}

/// How long after the first kill at end-of-file pending groups are looked
/// for again (a spawn takes about a millisecond).
const PENDING_SECOND_LOOK: Duration = Duration::from_millis(100);

fn parse(line: &str) -> Option<Msg> {
    let mut words = line.splitn(5, ' ');
    match words.next()? {
        "group" => Some(Msg::Group(GroupRecord {
            pgid: words.next()?.parse().ok()?,
            leader_start_ticks: words.next()?.parse().ok()?,
            tag: words.next()?.to_owned(),
            attempt: words.next().unwrap_or_default().to_owned(),
            boot_id: String::new(),
        })),
        "ended" => Some(Msg::Ended(words.next()?.parse().ok()?)),
        "forget" => Some(Msg::Forget(words.next()?.to_owned())),
        "lease" => Some(Msg::Lease(words.next()?.parse().ok()?)),
        _ => None,
    }
}

fn group_line(r: &GroupRecord) -> String {
    // Tags are hex and dashes, attempts have no newline: one line each.
    let attempt = r.attempt.replace(['\n', '\r'], " ");
    format!(
        "group {} {} {} {attempt}\n",
        r.pgid, r.leader_start_ticks, r.tag
    )
}

/// The watchdog's loop over `input` until end-of-file; log lines go to
/// `log`. Kills by the rules of the module docs.
pub fn serve<R: BufRead + Send + 'static>(input: R, worker: &str, log: &mut dyn std::io::Write) {
    let (tx, rx) = mpsc::channel();
    // A thread reads so the main loop can wait with a deadline.
    let reader = std::thread::Builder::new()
        .name("watchdog-stdin".into())
        .spawn(move || {
            for line in input.lines() {
                let Ok(line) = line else { break };
                match parse(line.trim_end()) {
                    Some(m) => {
                        if tx.send(m).is_err() {
                            break;
                        }
                    }
                    None => continue,
                }
            }
        });
    if reader.is_err() {
        say(log, worker, "cannot start its reader thread; exiting");
        return;
    }
    // By tag: a pending announcement and its group share it.
    let mut groups: BTreeMap<String, GroupRecord> = BTreeMap::new();
    let mut lease: u64 = 0;
    let mut expired = false;
    loop {
        let next = if lease == 0 || expired {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(Duration::from_millis(lease.saturating_sub(mono_now_ms())))
        };
        match next {
            Ok(Msg::Group(g)) => {
                if expired {
                    kill(log, worker, "the worker's lease had expired", &[&g]);
                }
                groups.insert(g.tag.clone(), g);
            }
            Ok(Msg::Ended(pgid)) => {
                groups.retain(|_, g| g.pgid != pgid);
            }
            Ok(Msg::Forget(tag)) => {
                groups.remove(&tag);
            }
            Ok(Msg::Lease(at)) => {
                lease = at;
                expired = false;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if mono_now_ms() < lease {
                    continue;
                }
                expired = true;
                let all: Vec<&GroupRecord> = groups.values().collect();
                kill(
                    log,
                    worker,
                    "no heartbeat acknowledged by the scheduler in time (the worker is frozen or cut off); fencing",
                    &all,
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let all: Vec<&GroupRecord> = groups.values().collect();
                kill(log, worker, "the worker exited", &all);
                let pending: Vec<&GroupRecord> =
                    groups.values().filter(|g| g.is_pending()).collect();
                if !pending.is_empty() {
                    std::thread::sleep(PENDING_SECOND_LOOK);
                    kill(log, worker, "the worker exited", &pending);
                }
                return;
            }
        }
    }
}

fn say(log: &mut dyn std::io::Write, worker: &str, what: &str) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let _ = writeln!(
        log,
        "{now}  WARN trainyard_worker::exec::watchdog: {what} worker_pid={worker} watchdog_pid={}",
        std::process::id()
    );
    let _ = log.flush();
}

fn kill(log: &mut dyn std::io::Write, worker: &str, why: &str, groups: &[&GroupRecord]) {
    if groups.is_empty() {
        return;
    }
    let procs = procfs::processes();
    for g in groups {
        match kill_if_ours(g, &procs) {
            GroupFate::Killed(pids) => say(
                log,
                worker,
                &format!(
                    "{why}: killed task process group pgid={} attempt={} pids={pids:?}",
                    if g.is_pending() {
                        "(announced)".to_owned()
                    } else {
                        g.pgid.to_string()
                    },
                    g.attempt
                ),
            ),
            GroupFate::NotOurs => say(
                log,
                worker,
                &format!(
                    "{why}: process group pgid={} is no longer the task's; left alone",
                    g.pgid
                ),
            ),
            GroupFate::Gone => {}
        }
    }
}

/// The worker's side: a running watchdog and what it was told, so a
/// watchdog that died can be replaced and brought up to date.
#[derive(Debug)]
pub(super) struct Client {
    cmd: WatchdogCommand,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// The `group` line of each guarded group, by tag, to replay.
    groups: BTreeMap<String, String>,
    lease: u64,
}

impl Client {
    /// Starts the watchdog; `None` (logged) when it cannot start.
    pub(super) fn start(cmd: WatchdogCommand) -> Option<Self> {
        let mut client = Self {
            cmd,
            child: None,
            stdin: None,
            groups: BTreeMap::new(),
            lease: 0,
        };
        client.spawn().then_some(client)
    }

    pub(super) fn is_running(&self) -> bool {
        self.stdin.is_some()
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> bool {
        if let Some(mut old) = self.child.take() {
            // It died (we only respawn after a failed write): reap it.
            let _ = old.try_wait();
        }
        let started = Command::new(&self.cmd.program)
            .args(&self.cmd.args)
            .env(
                "TRAINYARD_WATCHDOG_WORKER_PID",
                std::process::id().to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own group: a Ctrl-C or a signal to the worker's group
            // does not reach it.
            .process_group(0)
            .spawn();
        match started {
            Ok(mut child) => {
                tracing::info!(pid = child.id(), "task watchdog started");
                self.stdin = child.stdin.take();
                self.child = Some(child);
                true
            }
            Err(error) => {
                tracing::warn!(program = %self.cmd.program.display(), %error,
                    "cannot start the task watchdog; a task's children may outlive a killed or frozen worker");
                false
            }
        }
    }

    /// Sends `line`; a watchdog that died is replaced once and told
    /// everything again.
    fn send(&mut self, line: &str) {
        if self.write(line) {
            return;
        }
        tracing::warn!("the task watchdog is gone; starting another");
        if !self.spawn() {
            return;
        }
        let mut replay: Vec<String> = self.groups.values().cloned().collect();
        if self.lease != 0 {
            replay.push(format!("lease {}\n", self.lease));
        }
        if !self.write(&replay.concat()) {
            tracing::warn!("the new task watchdog is not reachable either");
        }
    }

    fn write(&mut self, text: &str) -> bool {
        let Some(stdin) = self.stdin.as_mut() else {
            return false;
        };
        if stdin.write_all(text.as_bytes()).is_ok() {
            return true;
        }
        self.stdin = None;
        false
    }

    pub(super) fn group(&mut self, r: &GroupRecord) {
        let line = group_line(r);
        self.groups.insert(r.tag.clone(), line.clone());
        self.send(&line);
    }

    pub(super) fn ended(&mut self, pgid: i32) {
        let prefix = format!("group {pgid} ");
        let before = self.groups.len();
        self.groups.retain(|_, line| !line.starts_with(&prefix));
        if self.groups.len() != before {
            self.send(&format!("ended {pgid}\n"));
        }
    }

    pub(super) fn forget(&mut self, tag: &str) {
        if self.groups.remove(tag).is_some() {
            self.send(&format!("forget {tag}\n"));
        }
    }

    pub(super) fn lease(&mut self, deadline_ms: u64) {
        if self.lease == deadline_ms {
            return;
        }
        self.lease = deadline_ms;
        self.send(&format!("lease {deadline_ms}\n"));
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // End-of-file: the watchdog kills what it still guards and exits.
        self.stdin = None;
        if let Some(child) = self.child.as_mut() {
            let _ = child.try_wait();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_and_group_lines_round_trip() {
        let r = GroupRecord {
            pgid: 42,
            leader_start_ticks: 7,
            boot_id: String::new(),
            tag: "ab-cd-0".into(),
            attempt: "run 1/train/2".into(),
        };
        let line = group_line(&r);
        assert_eq!(parse(line.trim_end()), Some(Msg::Group(r)));
        assert_eq!(parse("ended 42"), Some(Msg::Ended(42)));
        assert_eq!(parse("forget ab-cd-0"), Some(Msg::Forget("ab-cd-0".into())));
        assert_eq!(parse("lease 0"), Some(Msg::Lease(0)));
        assert_eq!(parse("lease soon"), None);
        assert_eq!(parse("reboot"), None);
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = mono_now_ms();
        std::thread::sleep(Duration::from_millis(5));
        assert!(mono_now_ms() >= a + 4);
    }
}
