//! Task execution with real child processes: argv safety, shell mode,
//! environment and GPU visibility, working directory, logs, exit codes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use tokio::sync::mpsc;
use trainyard_worker::exec::{
    self, ExecError, ExecOutcome, ExecStatus, LogLine, LogStream, StopHandle, TaskContext,
    TaskLaunch,
};

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Runs to completion and returns the outcome and every log line.
async fn run(launch: TaskLaunch) -> (ExecOutcome, Vec<LogLine>) {
    let (tx, mut rx) = mpsc::channel(4096);
    let outcome = exec::run(launch, tx, StopHandle::new()).await.unwrap();
    let mut lines = Vec::new();
    while let Some(line) = rx.recv().await {
        lines.push(line);
    }
    (outcome, lines)
}

fn stdout(lines: &[LogLine]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.stream == LogStream::Stdout)
        .map(|l| l.line.as_str())
        .collect()
}

fn hostile(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        format!("; touch {d}/semicolon #"),
        format!("$(touch {d}/dollar)"),
        format!("`touch {d}/backtick`"),
        format!("| touch {d}/pipe"),
    ]
}

fn assert_no_files(dir: &Path) {
    let created: Vec<_> = std::fs::read_dir(dir).unwrap().collect();
    assert!(created.is_empty(), "injection created files: {created:?}");
}

#[tokio::test]
async fn hostile_argv_elements_reach_the_program_verbatim_and_run_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for value in hostile(dir.path()) {
        let launch = TaskLaunch {
            argv: argv(&["printf", "%s\\n", &value]),
            ..Default::default()
        };
        let (outcome, lines) = run(launch).await;
        assert_eq!(outcome.status, ExecStatus::Succeeded);
        assert_eq!(stdout(&lines), vec![value.as_str()]);
    }
    assert_no_files(dir.path());
}

#[tokio::test]
async fn hostile_env_values_and_shell_positional_args_run_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for value in hostile(dir.path()) {
        let launch = TaskLaunch {
            // The script itself is trusted; the value arrives as $1 and $P.
            argv: vec![r#"printf '%s\n' "$1" "$P""#.to_string(), value.clone()],
            shell: true,
            env: BTreeMap::from([("P".to_string(), value.clone())]),
            ..Default::default()
        };
        let (outcome, lines) = run(launch).await;
        assert_eq!(outcome.status, ExecStatus::Succeeded);
        assert_eq!(stdout(&lines), vec![value.as_str(), value.as_str()]);
    }
    assert_no_files(dir.path());
}

#[tokio::test]
async fn shell_true_runs_the_script_through_sh() {
    let launch = TaskLaunch {
        argv: argv(&["for i in 1 2 3; do echo n$i; done | tail -n 2"]),
        shell: true,
        ..Default::default()
    };
    let (outcome, lines) = run(launch).await;
    assert_eq!(outcome.status, ExecStatus::Succeeded);
    assert_eq!(stdout(&lines), vec!["n2", "n3"]);
}

#[tokio::test]
async fn child_sees_task_env_trainyard_vars_and_exactly_its_gpus() {
    let ctx = TaskContext {
        run_id: "run-1".into(),
        attempt: 3,
        ..Default::default()
    };
    let launch = TaskLaunch {
        argv: argv(&[
            r#"echo "$FOO|$CUDA_VISIBLE_DEVICES|$NVIDIA_VISIBLE_DEVICES|$TRAINYARD_RUN_ID|$TRAINYARD_ATTEMPT"; test -n "$PATH""#,
        ]),
        shell: true,
        env: BTreeMap::from([
            ("FOO".to_string(), "bar baz".to_string()),
            // A DAG cannot widen its GPUs, nor fake its identity.
            (
                "CUDA_VISIBLE_DEVICES".to_string(),
                "0,1,2,3,4,5,6,7".to_string(),
            ),
            ("TRAINYARD_RUN_ID".to_string(), "forged".to_string()),
        ]),
        system_env: ctx.env(),
        gpu_indices: vec![1, 3],
        ..Default::default()
    };
    let (outcome, lines) = run(launch).await;
    assert_eq!(outcome.status, ExecStatus::Succeeded, "{lines:?}");
    assert_eq!(stdout(&lines), vec!["bar baz|1,3|1,3|run-1|3"]);
}

#[tokio::test]
async fn no_gpus_means_an_empty_but_set_cuda_visible_devices() {
    let launch = TaskLaunch {
        argv: argv(&[
            r#"echo "${CUDA_VISIBLE_DEVICES+set}[$CUDA_VISIBLE_DEVICES]|$NVIDIA_VISIBLE_DEVICES""#,
        ]),
        shell: true,
        ..Default::default()
    };
    let (_, lines) = run(launch).await;
    assert_eq!(stdout(&lines), vec!["set[]|void"]);
}

#[tokio::test]
async fn working_dir_is_applied_and_a_missing_one_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let launch = TaskLaunch {
        argv: argv(&["pwd"]),
        working_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let (_, lines) = run(launch).await;
    let seen = std::fs::canonicalize(stdout(&lines)[0]).unwrap();
    assert_eq!(seen, std::fs::canonicalize(dir.path()).unwrap());

    let (tx, _rx) = mpsc::channel(1);
    let missing = TaskLaunch {
        argv: argv(&["pwd"]),
        working_dir: Some(dir.path().join("nope")),
        ..Default::default()
    };
    let err = exec::spawn(missing, tx).unwrap_err();
    assert!(matches!(err, ExecError::WorkingDir { .. }), "{err:?}");
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn log_lines_keep_per_stream_order_and_a_global_sequence() {
    let launch = TaskLaunch {
        argv: argv(&[
            "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf 'tail-without-newline'",
        ]),
        shell: true,
        ..Default::default()
    };
    let (_, lines) = run(launch).await;
    assert_eq!(stdout(&lines), vec!["out1", "out2", "tail-without-newline"]);
    let stderr: Vec<_> = lines
        .iter()
        .filter(|l| l.stream == LogStream::Stderr)
        .map(|l| l.line.as_str())
        .collect();
    assert_eq!(stderr, vec!["err1", "err2"]);
    let mut seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..5).collect::<Vec<_>>());
}

#[tokio::test]
async fn many_lines_arrive_complete_and_in_order() {
    let launch = TaskLaunch {
        argv: argv(&["seq", "1", "20000"]),
        ..Default::default()
    };
    // A small channel read concurrently proves back-pressure does not lose lines.
    let (tx, mut rx) = mpsc::channel(8);
    let collector = tokio::spawn(async move {
        let mut n = 0u32;
        while let Some(line) = rx.recv().await {
            let line: LogLine = line;
            n += 1;
            assert_eq!(line.line, n.to_string());
        }
        n
    });
    let outcome = exec::run(launch, tx, StopHandle::new()).await.unwrap();
    assert_eq!(outcome.status, ExecStatus::Succeeded);
    assert_eq!(collector.await.unwrap(), 20000);
}

#[tokio::test]
async fn exit_codes_and_signals_map_to_outcomes() {
    let (ok, _) = run(TaskLaunch {
        argv: argv(&["true"]),
        ..Default::default()
    })
    .await;
    assert_eq!(
        (ok.status, ok.exit_code, ok.signal),
        (ExecStatus::Succeeded, Some(0), None)
    );

    let (failed, _) = run(TaskLaunch {
        argv: argv(&["exit 3"]),
        shell: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        (failed.status, failed.exit_code),
        (ExecStatus::Failed, Some(3))
    );
    assert_eq!(failed.message.as_deref(), Some("exited with code 3"));

    let (killed, _) = run(TaskLaunch {
        argv: argv(&["kill -9 $$"]),
        shell: true,
        ..Default::default()
    })
    .await;
    assert_eq!(
        (killed.status, killed.exit_code, killed.signal),
        (ExecStatus::Failed, None, Some(9))
    );
    assert_eq!(killed.message.as_deref(), Some("killed by SIGKILL"));
}

#[tokio::test]
async fn missing_program_and_empty_argv_are_spawn_errors() {
    let (tx, _rx) = mpsc::channel(1);
    let err = exec::spawn(
        TaskLaunch {
            argv: argv(&["/nonexistent/trainyard-no-such-program"]),
            ..Default::default()
        },
        tx.clone(),
    )
    .unwrap_err();
    assert!(matches!(err, ExecError::Spawn { .. }), "{err:?}");
    assert!(
        err.to_string().contains("trainyard-no-such-program"),
        "{err}"
    );
    let err = exec::spawn(TaskLaunch::default(), tx).unwrap_err();
    assert!(matches!(err, ExecError::EmptyArgv));
}

#[tokio::test]
async fn metrics_file_written_by_the_task_is_read_after_exit() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = TaskContext {
        metrics_file: Some(dir.path().join("metrics.json")),
        ..Default::default()
    };
    let launch = TaskLaunch {
        argv: argv(&[
            r#"printf '{"auc": 0.91, "loss": 2, "note": "x"}' > "$TRAINYARD_METRICS_FILE""#,
        ]),
        shell: true,
        system_env: ctx.env(),
        ..Default::default()
    };
    let (outcome, _) = run(launch).await;
    assert_eq!(outcome.status, ExecStatus::Succeeded);
    let metrics = exec::read_metrics_file(&dir.path().join("metrics.json")).await;
    assert_eq!(metrics.values.get("auc"), Some(&0.91));
    assert_eq!(metrics.values.get("loss"), Some(&2.0));
    assert_eq!(metrics.warnings.len(), 1, "{:?}", metrics.warnings);
}

/// Set for the copy of this test binary that
/// `tasks_get_a_clean_environment_unless_they_inherit` starts.
const ENV_CHILD: &str = "TY_EXEC_ENV_CHILD";

/// The environment a task saw, as `NAME=value` lines of `env`.
async fn task_env(launch: TaskLaunch) -> BTreeMap<String, String> {
    let (outcome, lines) = run(TaskLaunch {
        argv: argv(&["env"]),
        ..launch
    })
    .await;
    assert_eq!(outcome.status, ExecStatus::Succeeded, "{outcome:?}");
    stdout(&lines)
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The worker's environment is this process's. Rather than change it with
/// `set_var` under other tests' threads, the test runs this binary again
/// with known variables set and checks what a task sees there.
#[test]
fn tasks_get_a_clean_environment_unless_they_inherit() {
    if std::env::var_os(ENV_CHILD).is_some() {
        return tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(clean_environment_checks());
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tasks_get_a_clean_environment_unless_they_inherit",
            "--test-threads=1",
        ])
        .env(ENV_CHILD, "1")
        .env("LANG", "C.UTF-8")
        .env("TZ", "Europe/Berlin")
        .env("CUDA_HOME", "/usr/local/cuda")
        .env("NVIDIA_DRIVER_CAPABILITIES", "compute,utility")
        .env("AWS_SECRET_ACCESS_KEY", "worker-credential")
        .env("TRAINYARD_WORKER_TOKEN", "worker-join-token")
        .env("CUDA_VISIBLE_DEVICES", "0,1,2,3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The child really ran the checks (and did not filter itself out).
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

async fn clean_environment_checks() {
    let ctx = TaskContext {
        run_id: "r1".into(),
        ..Default::default()
    };
    let launch = TaskLaunch {
        env: BTreeMap::from([("FROM_DAG".to_owned(), "dag value".to_owned())]),
        system_env: ctx.env(),
        gpu_indices: vec![2],
        ..Default::default()
    };
    let clean = task_env(launch.clone()).await;
    assert_eq!(clean["PATH"], std::env::var("PATH").unwrap());
    assert_eq!(clean["LANG"], "C.UTF-8");
    assert_eq!(clean["TZ"], "Europe/Berlin");
    assert_eq!(clean["CUDA_HOME"], "/usr/local/cuda");
    assert_eq!(clean["NVIDIA_DRIVER_CAPABILITIES"], "compute,utility");
    assert_eq!(clean["FROM_DAG"], "dag value");
    assert_eq!(clean["TRAINYARD_RUN_ID"], "r1");
    // Visibility is the task's own, never the worker's.
    assert_eq!(clean["CUDA_VISIBLE_DEVICES"], "2");
    assert_eq!(clean["NVIDIA_VISIBLE_DEVICES"], "2");
    for hidden in [
        "AWS_SECRET_ACCESS_KEY",
        "TRAINYARD_WORKER_TOKEN",
        ENV_CHILD,
        "CARGO_MANIFEST_DIR",
    ] {
        assert!(!clean.contains_key(hidden), "{hidden} leaked: {clean:?}");
    }
    let allowed = |k: &str| {
        [
            "PATH", "HOME", "LANG", "TZ", "FROM_DAG", "PWD", "SHLVL", "_",
        ]
        .contains(&k)
            || k.starts_with("TRAINYARD_")
            || k.starts_with("CUDA_")
            || k.starts_with("NVIDIA_")
    };
    let extra: Vec<&String> = clean.keys().filter(|k| !allowed(k)).collect();
    assert!(extra.is_empty(), "unexpected variables: {extra:?}");

    let inherited = task_env(TaskLaunch {
        inherit_env: true,
        ..launch
    })
    .await;
    assert_eq!(inherited["AWS_SECRET_ACCESS_KEY"], "worker-credential");
    assert_eq!(inherited["FROM_DAG"], "dag value");
    assert_eq!(inherited["CUDA_VISIBLE_DEVICES"], "2");
}
