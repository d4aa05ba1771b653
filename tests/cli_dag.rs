//! `trainyard dag validate` as a user runs it: one `ok` line per good file,
//! one `path:line:col: error: message` line per problem on stderr, exit 1.
#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_trainyard");

#[test]
fn validate_prints_one_error_line_per_problem_across_files_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        "id = \"a\"\n[tasks.x]\ncommand = [\"true\"]\ndepends_on = [\"ghost\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        "id = \"b\"\n[tasks.y]\ncommand = [\"true\"]\nretries = \"two\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "id = \"c\"\n[tasks.z]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["dag", "validate"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "ok c (1 tasks)\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    for (line, file) in lines.iter().zip(["a.toml", "b.toml"]) {
        let prefix = format!("{}:", dir.path().join(file).display());
        let rest = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{line}"));
        let mut parts = rest.splitn(3, ':');
        assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{line}");
        assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{line}");
        assert!(parts.next().unwrap().starts_with(" error: "), "{line}");
    }
}

#[test]
fn validate_accepts_the_example_dags() {
    let dags = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dags");
    let out = Command::new(BIN)
        .args(["dag", "validate"])
        .arg(&dags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("ok churn_retrain (4 tasks)")
    );
}

/// A DAG of `n` tasks, one `[tasks.tN]` table each.
fn wide_dag(id: &str, n: usize) -> String {
    let mut src = format!("id = \"{id}\"\n");
    for i in 0..n {
        src.push_str(&format!("[tasks.t{i}]\ncommand = [\"true\"]\n"));
    }
    src
}

#[test]
fn show_into_a_pipe_closed_early_exits_quietly() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wide.toml");
    // Far more output than a pipe buffers (64 KiB), so `show` is still
    // writing when the reader goes away, as with `| head -n 1`.
    std::fs::write(&file, wide_dag("wide", 5000)).unwrap();
    let mut child = Command::new(BIN)
        .args(["dag", "show"])
        .arg(&file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    {
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut first).unwrap();
    } // the read end closes here
    let out = child.wait_with_output().unwrap();
    assert_eq!(first, "DAG wide\n");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn validate_applies_the_dag_file_limits_and_their_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wide.toml"), wide_dag("wide", 30)).unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(["dag", "validate"])
            .args(args)
            .arg(dir.path())
            .env_remove("TRAINYARD_MAX_DAG_TASKS")
            .env_remove("TRAINYARD_MAX_DAG_FILE_SIZE")
            .output()
            .unwrap()
    };
    let ok = run(&[]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let out = run(&["--max-dag-tasks", "10"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let expected = format!(
        "{}: error: the file defines 30 tasks, over the limit of 10 tasks per DAG",
        dir.path().join("wide.toml").display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(stderr.contains("--max-dag-tasks"), "{stderr}");

    let out = run(&["--max-dag-file-size", "100B"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("over the 100B limit for a DAG file")
            && stderr.contains("--max-dag-file-size"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["dag", "validate"])
        .arg(dir.path())
        .env("TRAINYARD_MAX_DAG_TASKS", "5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the env var sets the cap");
}
