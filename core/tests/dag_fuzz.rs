//! No input makes the parser panic: random bytes, random TOML-ish text and
//! mutations of a valid file all come back as `Ok` or as positioned errors.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use trainyard_core::dag::parse_dag;

const VALID: &str = r#"id = "churn_retrain"
schedule = "0 3 * * *"
timezone = "Europe/Berlin"
start_date = "2026-01-01"
overlap = "buffer"
[params]
learning_rate = 0.001
epochs = 10
[defaults]
retries = 2
retry_delay = "30s"
resources = { cpus = 1 }
[tasks.ingest]
command = ["python3", "jobs/ingest.py", "--date", "{{ logical_date }}"]
resources = { cpus = 2, memory = "4GiB" }
env.KEY = { value = "x", secret = true }
[tasks.train]
depends_on = ["ingest"]
command = ["python3", "jobs/train.py", "--lr", "{{ params.learning_rate }}"]
resources = { gpus = 2, gpu_memory = "40GiB", gpu_model = "A100|H100" }
timeout = "6h"
[tasks.deploy]
depends_on = ["train"]
when = "metrics.train.auc >= 0.85 && params.epochs > 1"
shell = "cp model models/"
"#;

/// Fragments that steer mutations towards interesting parser paths.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "\"",
    "'",
    "=",
    ",",
    ".",
    "\n",
    "{{",
    "}}",
    "[tasks.x]",
    "depends_on",
    "\"train\"",
    "-1",
    "1e400",
    "nan",
    "\"\\u0000\"",
    "\"é\"",
    "when",
    "metrics.",
    "(",
    ")",
    "gpus",
    "\"4GiB\"",
    "2026-02-30",
    "#",
    "\"\"\"",
    "[[tasks]]",
    "params.",
    "true",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0usize..20).prop_map(|(a, b)| Mutation::Delete(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::Insert(a, b)),
        (any::<usize>(), 0usize..80).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
    ]
}

fn boundary(s: &str, at: usize) -> usize {
    let mut i = at % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(mut s: String, muts: &[Mutation]) -> String {
    for m in muts {
        match *m {
            Mutation::Delete(at, len) => {
                let a = boundary(&s, at);
                let b = boundary(&s, a + len.min(s.len() - a));
                s.replace_range(a..b.max(a), "");
            }
            Mutation::Insert(at, tok) => {
                let a = boundary(&s, at);
                s.insert_str(a, TOKENS[tok % TOKENS.len()]);
            }
            Mutation::Duplicate(at, len) => {
                let a = boundary(&s, at);
                let b = boundary(&s, a + len.min(s.len() - a)).max(a);
                let piece = s[a..b].to_owned();
                s.insert_str(b, &piece);
            }
        }
    }
    s
}

fn check(source: &str) {
    match parse_dag("fuzz.toml", source) {
        Ok(spec) => {
            // A valid result must be internally consistent.
            assert_eq!(spec.task_ids_in_topological_order().len(), spec.tasks.len());
        }
        Err(e) => {
            assert!(!e.errors.is_empty());
            for err in &e.errors {
                assert!(err.line >= 1 && err.col >= 1);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_token_soup_never_panics(toks in proptest::collection::vec(0usize..TOKENS.len(), 0..60)) {
        let s: String = toks.iter().map(|t| TOKENS[*t]).collect::<Vec<_>>().join(" ");
        check(&s);
    }

    #[test]
    fn mutated_valid_file_never_panics(muts in proptest::collection::vec(mutation(), 1..6)) {
        check(&apply(VALID.to_owned(), &muts));
    }

    #[test]
    fn arbitrary_when_expressions_never_panic(expr in "[a-z.()<>=!&|0-9 \"'\\[\\]]{0,60}") {
        let source = format!(
            "id = \"w\"\n[tasks.a]\ncommand = [\"true\"]\n[tasks.b]\ndepends_on = [\"a\"]\ncommand = [\"true\"]\nwhen = {}\n",
            toml_string(&expr)
        );
        check(&source);
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn the_unmutated_file_is_valid() {
    parse_dag("valid.toml", VALID).unwrap_or_else(|e| panic!("{e}"));
}
