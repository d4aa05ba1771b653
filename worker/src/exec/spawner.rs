//! Starts task processes. Where no watchdog guards the worker's tasks,
//! the main process gets `PR_SET_PDEATHSIG` = SIGKILL, so it dies with its
//! worker even on `kill -9`.
//!
//! Why only there: setting the signal needs code between fork and exec
//! (`pre_exec`), which turns std's `posix_spawn`/vfork path into a full
//! `fork()` that copies the page tables of the whole process. Measured on
//! the benchmark machine class (2 vCPUs, release build, p50 of spawning and
//! reaping `true`): 1.04 ms on the fast path against 1.67 ms through fork
//! in a small process, and 1.09 ms against 23 ms with 150 MB resident (a
//! standalone scheduler with in-process workers is that big) — several
//! times the whole per-step budget. The watchdog (`super::watchdog`) does
//! more for the same case (the whole group, a frozen worker too) for about
//! 0.06–0.09 ms per task; what it cannot cover (the worker and the watchdog
//! killed together) the next start of the worker cleans up before it
//! registers (`super::groups`). So the signal is the fallback for a worker
//! that has no watchdog (library use, or one that could not start).
//!
//! Why a dedicated thread when it is used: the kernel sends the
//! parent-death signal when the *thread* that forked the child exits, not
//! the process. Tokio's blocking-pool threads exit after 10 s idle, and a
//! worker thread that enters `block_in_place` is replaced and may later
//! retire, so a child forked from either would be SIGKILLed in the middle
//! of its run. The spawner thread is started once and never returns (a
//! panic while spawning is caught), so the signal fires exactly when the
//! process dies. A subreaper (`PR_SET_CHILD_SUBREAPER`) was the other
//! option; it only helps while the worker is alive to reap and kill, which
//! is not the case this is for.

use std::io;
use std::sync::OnceLock;
use std::sync::mpsc;

/// A spawn for the spawner thread.
struct Request {
    cmd: tokio::process::Command,
    /// The caller's runtime: the child's pipes and its reaping belong to it.
    runtime: tokio::runtime::Handle,
    reply: mpsc::SyncSender<io::Result<tokio::process::Child>>,
}

fn spawner() -> Option<&'static mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            let started = std::thread::Builder::new()
                .name("trainyard-spawner".into())
                .spawn(move || {
                    for mut req in rx {
                        let _entered = req.runtime.enter();
                        // A panic here must not end this thread: its exit
                        // would SIGKILL every task it started.
                        let spawned =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                req.cmd.spawn()
                            }))
                            .unwrap_or_else(|_| Err(io::Error::other("spawning panicked")));
                        let _ = req.reply.send(spawned);
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(error) => {
                    tracing::error!(%error, "cannot start the task spawner thread");
                    None
                }
            }
        })
        .as_ref()
}

/// Spawns `cmd`; with `die_with_this_process`, from the spawner thread
/// with the parent-death signal set. Must be called inside a tokio runtime.
pub(super) fn spawn(
    mut cmd: tokio::process::Command,
    die_with_this_process: bool,
) -> io::Result<tokio::process::Child> {
    if !die_with_this_process {
        return cmd.spawn();
    }
    set_pdeathsig(&mut cmd);
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| io::Error::other(format!("no tokio runtime to spawn in: {e}")))?;
    let (reply, answer) = mpsc::sync_channel(1);
    let sender =
        spawner().ok_or_else(|| io::Error::other("the task spawner thread is not running"))?;
    sender
        .send(Request {
            cmd,
            runtime,
            reply,
        })
        .map_err(|_| io::Error::other("the task spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the task spawner thread did not answer"))?
}

/// Sets `PR_SET_PDEATHSIG` = SIGKILL in the child between fork and exec,
/// and refuses to exec when the worker already died in between (the
/// child's parent is then someone else, and the signal would never come).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_pdeathsig(cmd: &mut tokio::process::Command) {
    use nix::sys::signal::Signal;
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It makes two system calls
    // (prctl, getppid) and builds its errors from raw errno values, which
    // allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_pdeathsig(_cmd: &mut tokio::process::Command) {}
