//! Runs one task attempt as a child process and reports how it ended.
//!
//! Owns: building the command (argv verbatim, or `sh -c` only when the task
//! says `shell`), the environment (see below), the child's own process
//! group, line-by-line log capture ([`logs`]), timeout / cancel / kill of the
//! whole group (SIGTERM, grace, SIGKILL) and the task's metrics file
//! ([`metrics`]).
//!
//! GPU visibility: `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` are set
//! last, to exactly the assigned indices joined by `,`, so neither the
//! worker's own environment nor the DAG's `env` can widen them. A task with
//! no GPUs gets `CUDA_VISIBLE_DEVICES=""` (CUDA then sees no device) and
//! `NVIDIA_VISIBLE_DEVICES=void` (the container toolkit's "expose nothing").
//!
//! Environment, in order (later wins): the clean base — only `PATH`,
//! `HOME`, `LANG`, `TZ` and the `CUDA_*` / `NVIDIA_*` variables of the
//! worker's own environment — or, with [`TaskLaunch::inherit_env`], all of
//! it; then the task's env (the DAG's `env`, `from_env` values already
//! resolved by the caller); then the `TRAINYARD_*` variables of the attempt;
//! then GPU visibility. The clean base keeps what the worker was started
//! with (cloud credentials, tokens, its own `TRAINYARD_*` settings such as
//! its join token) away from tasks unless a DAG names it with `from_env`.
//!
//! When the task's main process ends, whatever it left behind in its process
//! group is killed too: a straggler could otherwise keep holding a GPU that
//! the scheduler is about to hand to the next task.
//!
//! No task outlives its worker: with a [`Supervisor`] the group is recorded
//! on disk and guarded by the watchdog process ([`groups`], [`watchdog`]),
//! which kills the whole group when the worker exits or stops renewing its
//! lease; without a watchdog the main process is forked from one long-lived
//! thread with `PR_SET_PDEATHSIG` ([`spawner`] says why not always).

mod context;
pub mod groups;
pub mod logs;
pub mod metrics;
pub mod procfs;
mod spawner;
pub mod watchdog;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use context::TaskContext;
pub use groups::{GroupBook, Supervisor, TAG_VAR};
pub use logs::{LogLine, LogStream};
pub use metrics::{Metrics, parse_metrics, read_metrics_file};
pub use watchdog::{WatchdogCommand, mono_now_ms};

/// Variables a task gets from the worker's environment by default.
pub const CLEAN_ENV_NAMES: &[&str] = &["PATH", "HOME", "LANG", "TZ"];
/// Prefixes of the worker's variables a task gets by default (CUDA and the
/// NVIDIA container toolkit read their settings from these).
pub const CLEAN_ENV_PREFIXES: &[&str] = &["CUDA_", "NVIDIA_"];

/// Whether a variable of the worker's environment passes into a clean one.
pub fn passes_clean_env(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    CLEAN_ENV_NAMES.contains(&name) || CLEAN_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Grace between SIGTERM and SIGKILL when the launch does not say.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for output pipes after the process group is gone; only
/// a process that escaped the group (setsid) can hold them longer.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything needed to start one attempt.
#[derive(Debug, Clone, Default)]
pub struct TaskLaunch {
    /// `shell = false`: program and arguments, passed verbatim (no shell, no
    /// globbing, no splitting). `shell = true`: `argv[0]` is a script run as
    /// `sh -c argv[0] sh argv[1..]`, so `argv[1..]` are `$1`, `$2`, ...
    pub argv: Vec<String>,
    pub shell: bool,
    /// The task's own env (from the DAG); overrides the worker's env.
    pub env: BTreeMap<String, String>,
    /// Variables the worker sets (`TRAINYARD_*`, see [`TaskContext::env`]);
    /// applied after `env`, so a DAG cannot override them.
    pub system_env: BTreeMap<String, String>,
    /// Start from the worker's whole environment instead of the clean base
    /// ([`CLEAN_ENV_NAMES`], [`CLEAN_ENV_PREFIXES`]).
    pub inherit_env: bool,
    /// `None`: the worker's current directory.
    pub working_dir: Option<PathBuf>,
    /// Exactly the GPUs the task may use.
    pub gpu_indices: Vec<u32>,
    pub timeout: Option<Duration>,
    /// SIGTERM-to-SIGKILL grace on timeout and cancel; `None`: [`DEFAULT_KILL_GRACE`].
    pub kill_grace: Option<Duration>,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStatus {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// Set when the main process exited on its own terms.
    pub exit_code: Option<i32>,
    /// Set when the main process died of a signal (ours or another).
    pub signal: Option<i32>,
    pub status: ExecStatus,
    pub duration: Duration,
    /// For people: why it failed ("timed out after 5s", "exited with code 3").
    pub message: Option<String>,
}

/// Asks a running task to stop. Cheap to clone; hand one to whoever
/// receives Cancel/Kill from the scheduler.
#[derive(Debug, Clone, Default)]
pub struct StopHandle {
    /// Cancel: SIGTERM the group, SIGKILL after the grace period.
    pub cancel: CancellationToken,
    /// Kill (fenced, "no longer yours"): SIGKILL the group at once; also cuts
    /// a running cancel grace short.
    pub kill: CancellationToken,
}

impl StopHandle {
    pub fn new() -> Self {
        Self::default()
    }
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("the task has an empty command")]
    EmptyArgv,
    #[error("working directory {path} is not usable: {source}")]
    WorkingDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the task failed: {0}")]
    Wait(#[source] std::io::Error),
}

/// A started task. Dropping it without [`RunningTask::wait`] kills its
/// process group, so no child outlives a worker bug.
#[derive(Debug)]
pub struct RunningTask {
    child: tokio::process::Child,
    group: GroupGuard,
    pid: u32,
    started: Instant,
    timeout: Option<Duration>,
    grace: Duration,
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// Lines read so far across both pipes; shows the readers progress.
    seq: Arc<AtomicU64>,
}

/// Starts `launch`; every output line goes to `logs`. The task's main
/// process dies with this process (`PR_SET_PDEATHSIG`); see
/// [`spawn_supervised`] for the rest of its group.
pub fn spawn(launch: TaskLaunch, logs: mpsc::Sender<LogLine>) -> Result<RunningTask> {
    spawn_supervised(launch, logs, None)
}

/// [`spawn`], with the task's process group recorded and guarded by
/// `supervisor` until it ends. When the supervisor has a watchdog, the
/// watchdog replaces the parent-death signal (see [`spawner`] for why).
pub fn spawn_supervised(
    launch: TaskLaunch,
    logs: mpsc::Sender<LogLine>,
    supervisor: Option<&Supervisor>,
) -> Result<RunningTask> {
    let (program, args): (&str, Vec<&str>) = match (launch.shell, launch.argv.split_first()) {
        (_, None) => return Err(ExecError::EmptyArgv),
        (false, Some((program, args))) => (program, args.iter().map(String::as_str).collect()),
        (true, Some((script, args))) => {
            let mut v = vec!["-c", script.as_str(), "sh"];
            v.extend(args.iter().map(String::as_str));
            ("sh", v)
        }
    };
    if let Some(dir) = &launch.working_dir {
        check_dir(dir)?;
    }
    let tag = groups::new_tag();
    let mut cmd = tokio::process::Command::new(program);
    if !launch.inherit_env {
        cmd.env_clear()
            .envs(std::env::vars_os().filter(|(name, _)| passes_clean_env(name)));
    }
    cmd.args(&args)
        .envs(&launch.env)
        .envs(&launch.system_env)
        // Marks every process of the attempt (children inherit it), so a
        // restarted worker or the watchdog can tell them from strangers.
        .env(TAG_VAR, &tag)
        .env(
            "CUDA_VISIBLE_DEVICES",
            cuda_visible_devices(&launch.gpu_indices),
        )
        .env(
            "NVIDIA_VISIBLE_DEVICES",
            nvidia_visible_devices(&launch.gpu_indices),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so signals reach everything the task started.
        .process_group(0)
        // Backstop if the future is dropped; GroupGuard handles the group.
        .kill_on_drop(true);
    if let Some(dir) = &launch.working_dir {
        cmd.current_dir(dir);
    }
    let guarded = supervisor.is_some_and(Supervisor::has_watchdog);
    let attempt = attempt_label(&launch.system_env);
    // Announced before it exists: a worker killed between the spawn and
    // `started` must not leave a task nobody knows about (groups.rs).
    if let Some(s) = supervisor {
        s.starting(&tag, &attempt);
    }
    let spawned = spawner::spawn(cmd, !guarded).and_then(|child| {
        child
            .id()
            .map(|pid| (child, pid))
            .ok_or_else(|| std::io::Error::other("child exited before its pid was read"))
    });
    let (mut child, pid) = match spawned {
        Ok(spawned) => spawned,
        Err(source) => {
            if let Some(s) = supervisor {
                s.not_started(&tag);
            }
            return Err(ExecError::Spawn {
                program: program.to_string(),
                source,
            });
        }
    };
    let pgid = i32::try_from(pid).unwrap_or(i32::MAX);
    if let Some(s) = supervisor {
        s.started(pgid, &tag, attempt);
    }
    let group = GroupGuard {
        pgid: Pid::from_raw(pgid),
        armed: true,
        supervisor: supervisor.cloned(),
    };
    let seq = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(logs::pump(
            out,
            LogStream::Stdout,
            Arc::clone(&seq),
            logs.clone(),
        )));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(logs::pump(
            err,
            LogStream::Stderr,
            Arc::clone(&seq),
            logs,
        )));
    }
    Ok(RunningTask {
        child,
        group,
        pid,
        started: Instant::now(),
        timeout: launch.timeout,
        grace: launch.kill_grace.unwrap_or(DEFAULT_KILL_GRACE),
        readers,
        seq,
    })
}

/// Starts `launch` and waits for it; see [`spawn`] and [`RunningTask::wait`].
pub async fn run(
    launch: TaskLaunch,
    logs: mpsc::Sender<LogLine>,
    stop: StopHandle,
) -> Result<ExecOutcome> {
    spawn(launch, logs)?.wait(stop).await
}

/// Why the worker ended the task, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    TimedOut,
    Cancelled,
    Killed,
}

impl RunningTask {
    /// OS pid of the task's main process; also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the task ends, enforcing the timeout and `stop`. All
    /// output lines have been sent when this returns.
    pub async fn wait(mut self, stop: StopHandle) -> Result<ExecOutcome> {
        let deadline = self
            .timeout
            .map(|t| tokio::time::Instant::from_std(self.started + t));
        let sleep_until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let (status, ending) = tokio::select! {
            status = self.child.wait() => (status.map_err(ExecError::Wait)?, None),
            () = sleep_until_deadline => (self.terminate(&stop, Ending::TimedOut).await?, Some(Ending::TimedOut)),
            () = stop.kill.cancelled() => (self.terminate(&stop, Ending::Killed).await?, Some(Ending::Killed)),
            () = stop.cancel.cancelled() => (self.terminate(&stop, Ending::Cancelled).await?, Some(Ending::Cancelled)),
        };
        let duration = self.started.elapsed();
        // Stragglers the main process left in its group die with it.
        self.group.finish();
        self.drain_readers().await;
        Ok(outcome(status, ending, duration, self.timeout))
    }

    /// Waits until both pipes reach EOF and every line is sent. Only a
    /// process that escaped the group (setsid) can hold a pipe open after
    /// the group is killed, so the readers are given up on when no line has
    /// moved for [`PIPE_DRAIN_TIMEOUT`]; a slow but moving consumer is waited for.
    async fn drain_readers(&mut self) {
        for mut reader in std::mem::take(&mut self.readers) {
            loop {
                let before = self.seq.load(Ordering::Relaxed);
                match tokio::time::timeout(PIPE_DRAIN_TIMEOUT, &mut reader).await {
                    Ok(_) => break,
                    Err(_) if self.seq.load(Ordering::Relaxed) != before => continue,
                    Err(_) => {
                        tracing::warn!(
                            pid = self.pid,
                            "task output still open after its process group ended; a process escaped the group"
                        );
                        reader.abort();
                        break;
                    }
                }
            }
        }
    }

    /// SIGTERM the group (SIGKILL at once for [`Ending::Killed`]), then
    /// SIGKILL after the grace period or when `stop.kill` fires.
    async fn terminate(&mut self, stop: &StopHandle, ending: Ending) -> Result<ExitStatus> {
        if ending == Ending::Killed {
            self.group.signal(Signal::SIGKILL);
            return self.child.wait().await.map_err(ExecError::Wait);
        }
        tracing::info!(pid = self.pid, ?ending, grace = ?self.grace, "sending SIGTERM to task process group");
        self.group.signal(Signal::SIGTERM);
        tokio::select! {
            status = self.child.wait() => return status.map_err(ExecError::Wait),
            () = tokio::time::sleep(self.grace) => {
                tracing::info!(pid = self.pid, "grace period over, sending SIGKILL");
            }
            () = stop.kill.cancelled() => {}
        }
        self.group.signal(Signal::SIGKILL);
        self.child.wait().await.map_err(ExecError::Wait)
    }
}

fn outcome(
    status: ExitStatus,
    ending: Option<Ending>,
    duration: Duration,
    timeout: Option<Duration>,
) -> ExecOutcome {
    let exit_code = status.code();
    let signal = status.signal();
    let (status, message) = match ending {
        Some(Ending::TimedOut) => (
            ExecStatus::TimedOut,
            Some(format!("timed out after {:?}", timeout.unwrap_or_default())),
        ),
        Some(Ending::Cancelled) => (ExecStatus::Cancelled, Some("cancelled".to_string())),
        Some(Ending::Killed) => (
            ExecStatus::Cancelled,
            Some("killed: the attempt was taken away from this worker".to_string()),
        ),
        None => match (exit_code, signal) {
            (Some(0), _) => (ExecStatus::Succeeded, None),
            (Some(code), _) => (ExecStatus::Failed, Some(format!("exited with code {code}"))),
            (None, Some(sig)) => (
                ExecStatus::Failed,
                Some(format!("killed by {}", signal_name(sig))),
            ),
            (None, None) => (ExecStatus::Failed, Some(format!("ended with {status}"))),
        },
    };
    ExecOutcome {
        exit_code,
        signal,
        status,
        duration,
        message,
    }
}

fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}

/// `CUDA_VISIBLE_DEVICES` for `gpus`: "0,3", or "" for none.
pub fn cuda_visible_devices(gpus: &[u32]) -> String {
    gpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `NVIDIA_VISIBLE_DEVICES` for `gpus`: "0,3", or "void" for none.
pub fn nvidia_visible_devices(gpus: &[u32]) -> String {
    if gpus.is_empty() {
        "void".to_string()
    } else {
        cuda_visible_devices(gpus)
    }
}

fn check_dir(dir: &std::path::Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ExecError::WorkingDir {
            path: dir.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        }),
        Err(source) => Err(ExecError::WorkingDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// `run/task/attempt` from the `TRAINYARD_*` variables, for logs about the
/// group; `-` where one is missing.
fn attempt_label(env: &BTreeMap<String, String>) -> String {
    let get = |k: &str| env.get(k).map_or("-", String::as_str);
    format!(
        "{}/{}/{}",
        get("TRAINYARD_RUN_ID"),
        get("TRAINYARD_TASK_ID"),
        get("TRAINYARD_ATTEMPT")
    )
}

/// Signals the task's process group; kills it on drop while armed.
#[derive(Debug)]
struct GroupGuard {
    pgid: Pid,
    /// True until the task has been reaped and its group cleaned up.
    armed: bool,
    /// Told when the group is gone, so the record and the watchdog forget it.
    supervisor: Option<Supervisor>,
}

impl GroupGuard {
    /// The main process was reaped: kill what is left of the group and
    /// stop guarding it.
    fn finish(&mut self) {
        self.signal(Signal::SIGKILL);
        self.armed = false;
        if let Some(s) = self.supervisor.take() {
            s.ended(self.pgid.as_raw());
        }
    }

    fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            // ESRCH: the group is already empty.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => {
                tracing::warn!(pgid = %self.pgid, ?signal, %error, "signalling task process group failed")
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            self.finish();
        }
    }
}
