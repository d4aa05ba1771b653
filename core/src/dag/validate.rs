//! Whole-DAG checks that need every task: dependencies and cycles,
//! placeholders against declared params (and never inside code a shell or
//! interpreter runs), and `when` references against the graph. Fills in
//! each task's derived `downstream` list.

use std::collections::BTreeMap;

use super::build::TaskSpans;
use super::error::{Collector, DagErrorKind as K};
use super::graph::{TaskGraph, ancestors_by};
use super::interp::risky_elements;
use super::raw::{Span, offset_in_string};
use super::render::{Placeholder, classify, occurrences};
use super::{DagSpec, TaskExec, when};

/// Longest `when` accepted; also bounds the CEL parser's recursion.
const MAX_WHEN_LEN: usize = 4096;
const MAX_WHEN_NESTING: usize = 64;

pub(crate) fn validate(
    c: &mut Collector<'_>,
    source: &str,
    spec: &mut DagSpec,
    spans: &BTreeMap<String, TaskSpans>,
) {
    check_dependencies(c, spec, spans);
    fill_downstream(spec);
    for (id, task) in &spec.tasks {
        let Some(s) = spans.get(id) else { continue };
        check_placeholders(c, source, spec, id, &task.exec, s);
        if let (Some(expr), Some(span)) = (&task.when, &s.when) {
            check_when(c, spec, id, expr, span.clone());
        }
    }
}

fn check_dependencies(
    c: &mut Collector<'_>,
    spec: &mut DagSpec,
    spans: &BTreeMap<String, TaskSpans>,
) {
    for (id, s) in spans {
        for (dep, span) in &s.deps {
            if dep == id {
                c.push(
                    K::SelfDependency,
                    span.clone(),
                    format!("task `{id}` depends on itself"),
                );
            } else if !spec.tasks.contains_key(dep) {
                let hint = spec
                    .tasks
                    .keys()
                    .map(|t| (strsim::levenshtein(t, dep), t))
                    .filter(|(d, _)| *d <= 2)
                    .min()
                    .map(|(_, t)| format!("; did you mean `{t}`?"))
                    .unwrap_or_default();
                c.push(
                    K::UnknownDependency,
                    span.clone(),
                    format!("task `{id}` depends on unknown task `{dep}`{hint}"),
                );
            }
        }
    }
    // Keep only edges to real, other tasks so the graph below is well-formed
    // and later checks do not repeat these errors.
    let known: std::collections::BTreeSet<String> = spec.tasks.keys().cloned().collect();
    for (id, task) in spec.tasks.iter_mut() {
        task.depends_on.retain(|d| d != id && known.contains(d));
    }

    let graph = TaskGraph::new(
        spec.tasks
            .iter()
            .map(|(id, t)| (id.as_str(), t.depends_on.iter().map(String::as_str))),
    );
    for cycle in graph.cycles() {
        // Point at the entry in the first task's depends_on that closes the
        // loop: cycle [a, b, c, a] means a depends on c.
        let first = &cycle[0];
        let closing = &cycle[cycle.len() - 2];
        let span = spans
            .get(first)
            .and_then(|s| s.deps.iter().find(|(d, _)| d == closing))
            .map(|(_, s)| s.clone())
            .or_else(|| spans.get(first).map(|s| s.header.clone()))
            .unwrap_or(0..0);
        c.push(
            K::Cycle,
            span,
            format!("dependency cycle: {}", cycle.join(" -> ")),
        );
    }
}

fn fill_downstream(spec: &mut DagSpec) {
    let mut down: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, task) in &spec.tasks {
        for up in &task.depends_on {
            down.entry(up.clone()).or_default().push(id.clone());
        }
    }
    for (id, task) in spec.tasks.iter_mut() {
        // Iterating a BTreeMap keeps each list sorted already.
        task.downstream = down.remove(id).unwrap_or_default();
    }
}

fn check_placeholders(
    c: &mut Collector<'_>,
    source: &str,
    spec: &DagSpec,
    id: &str,
    exec: &TaskExec,
    s: &TaskSpans,
) {
    // Where placeholders are substituted: command elements and env values.
    let mut rendered: Vec<(&str, &Span)> = Vec::new();
    if let TaskExec::Command(argv) = exec {
        rendered.extend(argv.iter().map(String::as_str).zip(&s.argv));
    }
    let task = spec.tasks.get(id);
    for (name, span) in &s.env {
        if let Some(super::EnvVar {
            source: super::EnvSource::Value(v),
            ..
        }) = task.and_then(|t| t.env.get(name))
        {
            rendered.push((v.as_str(), span));
        }
    }
    for (text, span) in rendered {
        for occ in occurrences(text) {
            let at = offset_in_string(source, span, text, occ.range.start);
            match classify(occ.name) {
                Ok(Placeholder::Param(p)) if !spec.params.contains_key(&p) => c.push(
                    K::UnknownParam,
                    at..at,
                    format!("task `{id}`: placeholder names undeclared param `{p}`; declare it under [params]"),
                ),
                Ok(_) => {}
                Err(e) => c.push(K::BadPlaceholder, at..at, format!("task `{id}`: {e}")),
            }
        }
    }
    if let TaskExec::Command(argv) = exec {
        check_code_elements(c, source, id, argv, &s.argv);
    }
    // A shell string is run as it is written: a placeholder there would
    // silently stay literal (and substituting it would be shell injection).
    if let (TaskExec::Shell(script), Some(span)) = (exec, &s.shell) {
        for occ in occurrences(script) {
            if classify(occ.name).is_ok() {
                let at = offset_in_string(source, span, script, occ.range.start);
                c.push(
                    K::BadPlaceholder,
                    at..at,
                    format!(
                        "task `{id}`: placeholders are not substituted in `shell`, only in `command` elements and `env` values; pass the value through env (env = {{ NAME = \"{{{{ params.name }}}}\" }} and \"$NAME\" in the script) or read $TRAINYARD_PARAMS / $TRAINYARD_LOGICAL_DATE"
                    ),
                );
            }
        }
    }
}

/// Refuses placeholders in argv elements a shell or interpreter runs as
/// code (`sh -c SCRIPT`, `python3 -c CODE`, `perl -e CODE`, …) or reads as
/// options; see `interp`.
fn check_code_elements(
    c: &mut Collector<'_>,
    source: &str,
    id: &str,
    argv: &[String],
    spans: &[Span],
) {
    for risky in risky_elements(argv) {
        let (Some(arg), Some(span)) = (argv.get(risky.index), spans.get(risky.index)) else {
            continue;
        };
        for occ in occurrences(arg) {
            let Ok(placeholder) = classify(occ.name) else {
                continue;
            };
            let at = offset_in_string(source, span, arg, occ.range.start);
            let written = &arg[occ.range.clone()];
            c.push(
                K::PlaceholderInCode,
                at..at,
                format!("task `{id}`: {}", risky.message(written, &placeholder)),
            );
        }
    }
}

fn check_when(c: &mut Collector<'_>, spec: &DagSpec, id: &str, expr: &str, span: Span) {
    if expr.len() > MAX_WHEN_LEN || nesting(expr) > MAX_WHEN_NESTING {
        c.push(
            K::BadWhen,
            span,
            format!("task `{id}`: `when` is too long or too deeply nested"),
        );
        return;
    }
    let compiled = match when::compile(expr) {
        Ok(p) => p,
        Err(e) => {
            c.push(K::BadWhen, span, format!("task `{id}`: {e}"));
            return;
        }
    };
    let ancestors = ancestors_by(id, |t| spec.upstream(t));
    for path in &compiled.paths {
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        match segs.as_slice() {
            ["params"] | ["metrics"] | ["previous"] | ["previous", "metrics"] => {}
            ["params", p, ..] => {
                if !spec.params.contains_key(*p) {
                    c.push(
                        K::WhenUnknownParam,
                        span.clone(),
                        format!("task `{id}`: `when` reads undeclared param `{p}`"),
                    );
                }
            }
            ["metrics", t, ..] => {
                if !spec.tasks.contains_key(*t) {
                    c.push(K::WhenUnknownTask, span.clone(), format!("task `{id}`: `when` reads metrics of unknown task `{t}`"));
                } else if !ancestors.contains(*t) {
                    c.push(
                        K::WhenNotUpstream,
                        span.clone(),
                        format!("task `{id}`: `when` reads metrics of `{t}`, which is not upstream of `{id}`; add it to depends_on"),
                    );
                }
            }
            ["previous", "metrics", t, ..] => {
                if !spec.tasks.contains_key(*t) {
                    c.push(
                        K::WhenUnknownTask,
                        span.clone(),
                        format!("task `{id}`: `when` reads previous metrics of unknown task `{t}`"),
                    );
                }
            }
            [root, ..] => c.push(
                K::BadWhen,
                span.clone(),
                format!(
                    "task `{id}`: `when` reads unknown name `{}`; use params.NAME, metrics.TASK.NAME or previous.metrics.TASK.NAME",
                    if *root == "previous" { path.join(".") } else { (*root).to_owned() }
                ),
            ),
            [] => {}
        }
    }
}

/// Deepest bracket nesting, a cheap guard before handing text to the parser.
fn nesting(expr: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for ch in expr.chars() {
        match ch {
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}
