//! The bad-DAG corpus: every file under tests/fixtures/bad_dags/ states the
//! errors it must produce in `# expect: Kind line:col` comments, and the
//! parser must report exactly those (kind and position), no more, no fewer.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use trainyard_core::dag::{DagErrorKind, parse_dag};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bad_dags")
}

fn expectations(source: &str) -> Vec<String> {
    let mut v: Vec<String> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# expect:"))
        .map(|e| e.trim().to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn every_bad_file_reports_exactly_its_expected_errors() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 25, "corpus has only {} files", files.len());

    let mut failures = Vec::new();
    let mut kinds_seen = BTreeSet::new();
    for path in &files {
        let source = std::fs::read_to_string(path).unwrap();
        let expected = expectations(&source);
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            path.display()
        );
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let errs = match parse_dag(&name, &source) {
            Ok(_) => {
                failures.push(format!("{name}: parsed without error"));
                continue;
            }
            Err(e) => e,
        };
        let mut actual: Vec<String> = errs
            .errors
            .iter()
            .map(|e| format!("{:?} {}:{}", e.kind, e.line, e.col))
            .collect();
        actual.sort();
        kinds_seen.extend(errs.errors.iter().map(|e| format!("{:?}", e.kind)));
        if actual != expected {
            failures.push(format!(
                "{name}:\n  expected {expected:?}\n  actual   {actual:?}\n{errs}"
            ));
        }
        for line in errs.to_string().lines() {
            assert!(line.starts_with(&format!("{name}:")), "{line}");
            assert!(line.contains(": error: "), "{line}");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        kinds_seen.len() >= 25,
        "only {} kinds covered",
        kinds_seen.len()
    );
}

#[test]
fn cycle_message_shows_the_path() {
    let source = std::fs::read_to_string(corpus_dir().join("cycle.toml")).unwrap();
    let err = parse_dag("cycle.toml", &source).unwrap_err();
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].kind, DagErrorKind::Cycle);
    assert_eq!(err.errors[0].message, "dependency cycle: a -> b -> c -> a");
}

#[test]
fn a_file_with_many_problems_reports_them_all() {
    let source = std::fs::read_to_string(corpus_dir().join("many_errors.toml")).unwrap();
    let err = parse_dag("many_errors.toml", &source).unwrap_err();
    assert_eq!(err.errors.len(), 5, "{err}");
    // Reported in file order.
    let lines: Vec<usize> = err.errors.iter().map(|e| e.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

#[test]
#[ignore = "prints every corpus message for review"]
fn print_corpus_messages() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for path in files {
        let source = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Err(e) = parse_dag(&name, &source) {
            println!("{e}");
        }
    }
}
