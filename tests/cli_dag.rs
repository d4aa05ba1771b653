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
