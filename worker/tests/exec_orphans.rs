//! No task outlives its worker: the watchdog kills a guarded group, with
//! its grandchildren, when the worker goes away or lets its lease run out;
//! without a watchdog the main process dies with the worker
//! (PDEATHSIG), whichever thread spawned it; and a restarted worker kills
//! the groups its predecessor recorded, but only while they are provably
//! the recorded ones. A task is announced (by its tag) before it is
//! spawned, so one whose worker died before its group was recorded is
//! found and killed too.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use trainyard_worker::exec::groups::{GroupFate, GroupRecord};
use trainyard_worker::exec::{
    self, GroupBook, LogLine, RunningTask, Supervisor, TaskLaunch, mono_now_ms, procfs, watchdog,
};

fn alive(pid: i32) -> bool {
    procfs::stat(pid).is_some_and(|s| !s.is_dead())
}

async fn wait_dead(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    !alive(pid)
}

/// A task whose shell starts a grandchild `sleep`; returns the task, its
/// pid, the grandchild's pid and the task's process tag.
async fn task_with_grandchild(supervisor: Option<&Supervisor>) -> (RunningTask, i32, i32, String) {
    let (tx, mut rx) = mpsc::channel::<LogLine>(64);
    let launch = TaskLaunch {
        argv: vec![format!(
            "sleep 300 & echo $!; echo ${}; sleep 300",
            exec::TAG_VAR
        )],
        shell: true,
        ..Default::default()
    };
    let task = exec::spawn_supervised(launch, tx, supervisor).unwrap();
    let leader = i32::try_from(task.pid()).unwrap();
    let grandchild: i32 = rx.recv().await.unwrap().line.parse().unwrap();
    let tag = rx.recv().await.unwrap().line;
    assert!(alive(grandchild) && alive(leader));
    (task, leader, grandchild, tag)
}

fn group_line(pgid: i32, tag: &str) -> String {
    let start = procfs::stat(pgid).unwrap().start_ticks;
    format!("group {pgid} {start} {tag} run/task/1\n")
}

/// Runs the watchdog's loop on a socket pair; the returned end is the
/// worker's side, the handle yields the watchdog's log.
fn watchdog() -> (UnixStream, std::thread::JoinHandle<String>) {
    let (worker, dog) = UnixStream::pair().unwrap();
    let handle = std::thread::spawn(move || {
        let mut log = Vec::new();
        watchdog::serve(BufReader::new(dog), "test", &mut log);
        String::from_utf8(log).unwrap()
    });
    (worker, handle)
}

#[tokio::test]
async fn the_watchdog_kills_the_guarded_groups_grandchildren_included_when_the_worker_goes() {
    let (task, leader, grandchild, tag) = task_with_grandchild(None).await;
    let (mut worker, dog) = watchdog();
    worker
        .write_all(group_line(leader, &tag).as_bytes())
        .unwrap();
    // The worker exits: its end of the pipe closes.
    drop(worker);
    let log = dog.join().unwrap();
    assert!(wait_dead(grandchild, Duration::from_secs(2)).await, "{log}");
    assert!(wait_dead(leader, Duration::from_secs(2)).await, "{log}");
    assert!(
        log.contains("the worker exited: killed task process group"),
        "{log}"
    );
    drop(task);
}

#[tokio::test]
async fn the_watchdog_fences_at_the_lease_deadline_unless_renewed() {
    let (first, leader, grandchild, tag) = task_with_grandchild(None).await;
    let (mut worker, dog) = watchdog();
    worker
        .write_all(group_line(leader, &tag).as_bytes())
        .unwrap();
    let started = Instant::now();
    // Renewed twice, then the worker goes quiet (frozen or cut off).
    for _ in 0..2 {
        worker
            .write_all(format!("lease {}\n", mono_now_ms() + 400).as_bytes())
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(alive(grandchild), "killed while the lease was renewed");
    assert!(wait_dead(grandchild, Duration::from_secs(3)).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(550), "{took:?}");
    assert!(!alive(leader));
    // A group started after the lease ran out is killed at once.
    let (second, leader2, grandchild2, tag2) = task_with_grandchild(None).await;
    worker
        .write_all(group_line(leader2, &tag2).as_bytes())
        .unwrap();
    assert!(wait_dead(grandchild2, Duration::from_secs(2)).await);
    drop(worker);
    let log = dog.join().unwrap();
    assert!(log.contains("fencing: killed task process group"), "{log}");
    assert!(log.contains("the worker's lease had expired"), "{log}");
    drop((first, second));
}

#[tokio::test]
async fn a_restarted_worker_kills_the_recorded_group_and_forgets_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let book = GroupBook::open(dir.path().join("w.groups")).unwrap();
    let supervisor = Supervisor::new(Some(book.clone()), None);
    let (task, leader, grandchild, _) = task_with_grandchild(Some(&supervisor)).await;
    assert!(dir.path().join(format!("w.groups/{leader}.json")).exists());
    // Its announcement was replaced by the record.
    assert_eq!(book.records().len(), 1, "{:?}", book.records());

    // What the next worker under this identity does before it registers.
    let next = book.clone();
    let leftovers =
        tokio::task::spawn_blocking(move || next.kill_leftovers(Duration::from_secs(5)))
            .await
            .unwrap();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let GroupFate::Killed(pids) = &leftovers[0].fate else {
        panic!("{leftovers:?}");
    };
    assert!(
        pids.contains(&leader) && pids.contains(&grandchild),
        "{pids:?}"
    );
    assert!(leftovers[0].survivors.is_empty());
    assert!(!alive(grandchild) && !alive(leader));
    assert!(book.records().is_empty());
    drop(task);
}

/// What a worker killed right after spawning a task leaves: the task's
/// pending announcement (tag only, no pgid), and the task running in its
/// own group with a grandchild, both carrying the tag. Returns the child,
/// the leader's and the grandchild's pids, and the record.
fn announced_but_unrecorded_task() -> (std::process::Child, i32, i32, GroupRecord) {
    use std::os::unix::process::CommandExt as _;
    let tag = format!("test-{}", std::process::id());
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 300 & echo $!; wait"])
        .env(exec::TAG_VAR, &tag)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let grandchild: i32 = line.trim().parse().unwrap();
    let leader = i32::try_from(child.id()).unwrap();
    let record = GroupRecord {
        pgid: 0,
        leader_start_ticks: 0,
        boot_id: procfs::boot_id().unwrap(),
        tag,
        attempt: "r/t/1".into(),
    };
    assert!(alive(leader) && alive(grandchild));
    (child, leader, grandchild, record)
}

#[tokio::test]
async fn a_restarted_worker_kills_a_task_announced_but_never_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let book = GroupBook::open(dir.path().join("w.groups")).unwrap();
    let (mut child, leader, grandchild, pending) = announced_but_unrecorded_task();
    book.write(&pending).unwrap();
    assert_eq!(book.records(), vec![pending.clone()]);

    let next = book.clone();
    let leftovers =
        tokio::task::spawn_blocking(move || next.kill_leftovers(Duration::from_secs(5)))
            .await
            .unwrap();
    let _ = child.wait();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let GroupFate::Killed(pids) = &leftovers[0].fate else {
        panic!("{leftovers:?}");
    };
    assert!(
        pids.contains(&leader) && pids.contains(&grandchild),
        "{pids:?}"
    );
    assert!(!alive(grandchild) && !alive(leader));
    assert!(book.records().is_empty());
}

#[tokio::test]
async fn the_watchdog_kills_a_task_announced_but_never_recorded_when_the_worker_goes() {
    let (mut child, leader, grandchild, pending) = announced_but_unrecorded_task();
    let (mut worker, dog) = watchdog();
    worker
        .write_all(format!("group 0 0 {} r/t/1\n", pending.tag).as_bytes())
        .unwrap();
    drop(worker);
    let log = dog.join().unwrap();
    let _ = child.wait();
    assert!(wait_dead(grandchild, Duration::from_secs(2)).await, "{log}");
    assert!(wait_dead(leader, Duration::from_secs(2)).await, "{log}");
    assert!(
        log.contains("the worker exited: killed task process group pgid=(announced)"),
        "{log}"
    );
}

#[tokio::test]
async fn a_forgotten_announcement_kills_nothing() {
    let (mut child, leader, grandchild, pending) = announced_but_unrecorded_task();
    let (mut worker, dog) = watchdog();
    worker
        .write_all(format!("group 0 0 {0} r/t/1\nforget {0}\n", pending.tag).as_bytes())
        .unwrap();
    drop(worker);
    let log = dog.join().unwrap();
    assert!(alive(leader) && alive(grandchild), "{log}");
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(leader),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
}

#[tokio::test]
async fn a_record_that_no_longer_names_our_group_kills_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let book = GroupBook::open(dir.path()).unwrap();
    // A live group that is not the recorded one: another start time, and
    // none of its processes carries the recorded tag (a reused id).
    let (task, leader, grandchild, _) = task_with_grandchild(None).await;
    let start = procfs::stat(leader).unwrap().start_ticks;
    let stranger = GroupRecord {
        pgid: leader,
        leader_start_ticks: start + 1,
        boot_id: procfs::boot_id().unwrap(),
        tag: "some-other-attempt".into(),
        attempt: "r/t/1".into(),
    };
    book.write(&stranger).unwrap();
    // And a record from an earlier boot naming the same, live, group.
    let old_boot = GroupRecord {
        pgid: grandchild,
        boot_id: "an-earlier-boot".into(),
        ..stranger.clone()
    };
    book.write(&old_boot).unwrap();
    let b = book.clone();
    let leftovers = tokio::task::spawn_blocking(move || b.kill_leftovers(Duration::from_secs(1)))
        .await
        .unwrap();
    let fates: Vec<(i32, GroupFate)> = leftovers
        .iter()
        .map(|l| (l.record.pgid, l.fate.clone()))
        .collect();
    assert!(fates.contains(&(leader, GroupFate::NotOurs)), "{fates:?}");
    assert!(fates.contains(&(grandchild, GroupFate::Gone)), "{fates:?}");
    assert!(alive(leader) && alive(grandchild));
    drop(task);
    assert!(wait_dead(grandchild, Duration::from_secs(2)).await);
}

const HELPER: &str = "TRAINYARD_TEST_PDEATHSIG_HELPER";

/// Not a test: the worker process of the next test (this binary run again
/// with a filter). Spawns `sleep 300` without a watchdog from a thread that
/// then ends, prints its pid and waits to be killed.
#[test]
#[ignore = "a helper process of a_tasks_main_process_dies_with_a_worker_without_a_watchdog"]
fn pdeathsig_helper() {
    if std::env::var_os(HELPER).is_none() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let handle = runtime.handle().clone();
    let (task, _logs) = std::thread::spawn(move || {
        let _entered = handle.enter();
        let (tx, rx) = mpsc::channel::<LogLine>(8);
        let launch = TaskLaunch {
            argv: vec!["sleep".into(), "300".into()],
            ..Default::default()
        };
        (exec::spawn(launch, tx).unwrap(), rx)
    })
    .join()
    .unwrap();
    println!("PID {}", task.pid());
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(300));
    drop(task);
}

#[tokio::test]
async fn a_tasks_main_process_dies_with_a_worker_without_a_watchdog() {
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["pdeathsig_helper", "--exact", "--ignored", "--nocapture"])
        .env(HELPER, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(helper.stdout.take().unwrap());
    let pid: i32 = out
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("PID ").map(|p| p.trim().parse().unwrap()))
        .expect("the helper printed no pid");
    // The thread that spawned it ended: the task runs on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(pid), "the task died with the thread that spawned it");
    let killed = Instant::now();
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert!(
        wait_dead(pid, Duration::from_secs(2)).await,
        "task {pid} outlived its worker"
    );
    eprintln!(
        "task gone {:?} after its worker's SIGKILL",
        killed.elapsed()
    );
}
