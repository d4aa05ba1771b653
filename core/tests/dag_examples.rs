//! Every example DAG shipped in the repository's dags/ folder must parse
//! and validate, and a generated 10,000-task DAG must too.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::PathBuf;

use trainyard_core::dag::parse_dag;

#[test]
fn every_example_dag_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dags");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    if files.is_empty() {
        eprintln!("no example DAGs in {} yet; nothing to check", dir.display());
        return;
    }
    let mut failures = Vec::new();
    for path in &files {
        let source = std::fs::read_to_string(path).unwrap();
        if let Err(e) = parse_dag(&path.display().to_string(), &source) {
            failures.push(e.to_string());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// 10,000 tasks: 100 chains of 20 hanging off a root, plus 8,000 tasks that
/// fan out from chain ends and fan back into one join task.
fn generated_dag() -> String {
    let mut s = String::from("id = \"wide\"\n\n[tasks.root]\ncommand = [\"true\"]\n");
    let mut count = 1;
    for c in 0..100 {
        for i in 0..20 {
            let dep = if i == 0 {
                "root".to_owned()
            } else {
                format!("c{c}_{}", i - 1)
            };
            writeln!(
                s,
                "\n[tasks.c{c}_{i}]\ndepends_on = [\"{dep}\"]\ncommand = [\"true\"]"
            )
            .unwrap();
            count += 1;
        }
    }
    for f in 0..7998 {
        writeln!(s, "\n[tasks.f{f}]\ndepends_on = [\"c{}_19\"]\ncommand = [\"true\", \"{{{{ task_id }}}}\"]", f % 100).unwrap();
        count += 1;
    }
    s.push_str("\n[tasks.join]\ncommand = [\"true\"]\ndepends_on = [");
    for f in 0..7998 {
        write!(s, "\"f{f}\",").unwrap();
    }
    s.push_str("]\n");
    count += 1;
    assert_eq!(count, 10_000);
    s
}

#[test]
fn ten_thousand_task_dag_validates() {
    let source = generated_dag();
    let spec = parse_dag("wide.toml", &source).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.tasks.len(), 10_000);
    let layers = spec.topological_layers();
    // root, 20 chain levels, the fan-out, the join
    assert_eq!(layers.len(), 23);
    assert_eq!(layers[0], vec!["root"]);
    assert_eq!(layers[22], vec!["join"]);
    assert_eq!(spec.downstream("root").len(), 100);
    assert_eq!(spec.upstream("join").len(), 7998);
    assert_eq!(spec.task_ids_in_topological_order().len(), 10_000);
}
