//! Timeout, cancel and kill reach the task's whole process group: SIGTERM
//! first, SIGKILL after the grace period, grandchildren included.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tokio::sync::mpsc;
use trainyard_worker::exec::{self, ExecStatus, LogLine, StopHandle, TaskLaunch};

/// True once `pid` no longer runs (gone, or a zombie waiting for init).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // Format: "pid (comm) STATE ..."; comm may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
    }
}

/// Polls until `pid` is dead; the kernel delivers SIGKILL asynchronously.
async fn wait_dead(pid: i32) -> bool {
    for _ in 0..200 {
        if is_dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Receives lines until one equals `want`, returning those before it.
async fn until_line(rx: &mut mpsc::Receiver<LogLine>, want: &str) -> Vec<String> {
    let mut before = Vec::new();
    while let Some(line) = rx.recv().await {
        if line.line == want {
            return before;
        }
        before.push(line.line);
    }
    panic!("stream ended before {want:?}; saw {before:?}");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group_including_grandchildren() {
    let (tx, mut rx) = mpsc::channel(64);
    let launch = TaskLaunch {
        argv: vec!["sleep 100 & echo $!; echo ready; sleep 100".to_string()],
        shell: true,
        timeout: Some(Duration::from_millis(500)),
        kill_grace: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let task = exec::spawn(launch, tx).unwrap();
    let leader = i32::try_from(task.pid()).unwrap();
    let waiter = tokio::spawn(task.wait(StopHandle::new()));
    let grandchild: i32 = until_line(&mut rx, "ready").await[0].parse().unwrap();
    assert!(!is_dead(grandchild));

    let outcome = waiter.await.unwrap().unwrap();
    assert_eq!(outcome.status, ExecStatus::TimedOut);
    // sh dies of the SIGTERM; no SIGKILL grace was needed.
    assert_eq!(outcome.signal, Some(15));
    assert!(outcome.duration >= Duration::from_millis(500));
    assert!(
        outcome.duration < Duration::from_secs(5),
        "{:?}",
        outcome.duration
    );
    assert!(outcome.message.unwrap().contains("timed out"));
    assert!(
        wait_dead(grandchild).await,
        "grandchild {grandchild} survived"
    );
    assert!(wait_dead(leader).await);
}

#[tokio::test]
async fn cancel_sends_sigterm_first_so_the_task_can_clean_up() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("terminated");
    let (tx, mut rx) = mpsc::channel(64);
    let launch = TaskLaunch {
        argv: vec![
            r#"trap 'echo got-term > "$1"; exit 0' TERM; echo ready; sleep 100 & wait"#.to_string(),
            marker.display().to_string(),
        ],
        shell: true,
        kill_grace: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let stop = StopHandle::new();
    let waiter = tokio::spawn(exec::spawn(launch, tx).unwrap().wait(stop.clone()));
    until_line(&mut rx, "ready").await;
    stop.cancel.cancel();

    let outcome = waiter.await.unwrap().unwrap();
    assert_eq!(outcome.status, ExecStatus::Cancelled);
    assert_eq!(outcome.exit_code, Some(0), "the trap's exit code");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "got-term\n");
    assert!(outcome.duration < Duration::from_secs(30));
}

#[tokio::test]
async fn cancel_escalates_to_sigkill_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("terminated");
    let (tx, mut rx) = mpsc::channel(64);
    // Ignores SIGTERM (after noting it) and keeps running.
    let launch = TaskLaunch {
        argv: vec![
            r#"trap 'echo got-term >> "$1"' TERM; echo ready; while :; do sleep 1; done"#
                .to_string(),
            marker.display().to_string(),
        ],
        shell: true,
        // Long enough for the shell to run its trap even on a loaded machine
        // (it runs traps only between commands), short enough for a test.
        kill_grace: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let stop = StopHandle::new();
    let waiter = tokio::spawn(exec::spawn(launch, tx).unwrap().wait(stop.clone()));
    until_line(&mut rx, "ready").await;
    stop.cancel.cancel();

    let outcome = waiter.await.unwrap().unwrap();
    assert_eq!(outcome.status, ExecStatus::Cancelled);
    assert_eq!(outcome.signal, Some(9), "SIGKILL ended it after the grace");
    assert!(outcome.duration >= Duration::from_secs(2));
    assert!(
        std::fs::read_to_string(&marker)
            .unwrap()
            .contains("got-term")
    );
}

#[tokio::test]
async fn fenced_kill_sends_sigkill_at_once_without_waiting_for_grace() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("terminated");
    let (tx, mut rx) = mpsc::channel(64);
    let launch = TaskLaunch {
        argv: vec![
            r#"trap 'echo got-term > "$1"' TERM; echo ready; sleep 100 & wait"#.to_string(),
            marker.display().to_string(),
        ],
        shell: true,
        kill_grace: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let stop = StopHandle::new();
    let waiter = tokio::spawn(exec::spawn(launch, tx).unwrap().wait(stop.clone()));
    until_line(&mut rx, "ready").await;
    stop.kill.cancel();

    let outcome = waiter.await.unwrap().unwrap();
    assert_eq!(outcome.status, ExecStatus::Cancelled);
    assert_eq!(outcome.signal, Some(9));
    assert!(outcome.duration < Duration::from_secs(60));
    assert!(!marker.exists(), "SIGKILL leaves no chance to trap");
}

#[tokio::test]
async fn stragglers_left_in_the_group_die_when_the_main_process_exits() {
    let (tx, mut rx) = mpsc::channel(64);
    // The background sleep keeps stdout open; without cleanup wait() would hang.
    let launch = TaskLaunch {
        argv: vec!["sleep 100 & echo $!".to_string()],
        shell: true,
        ..Default::default()
    };
    let outcome = exec::run(launch, tx, StopHandle::new()).await.unwrap();
    assert_eq!(outcome.status, ExecStatus::Succeeded);
    let straggler: i32 = rx.recv().await.unwrap().line.parse().unwrap();
    assert!(wait_dead(straggler).await, "straggler {straggler} survived");
}

#[tokio::test]
async fn dropping_a_running_task_kills_its_group() {
    let (tx, mut rx) = mpsc::channel(64);
    let launch = TaskLaunch {
        argv: vec!["sleep 100 & echo $!; sleep 100".to_string()],
        shell: true,
        ..Default::default()
    };
    let task = exec::spawn(launch, tx).unwrap();
    let grandchild: i32 = rx.recv().await.unwrap().line.parse().unwrap();
    drop(task);
    assert!(
        wait_dead(grandchild).await,
        "grandchild {grandchild} survived"
    );
}
