//! `{{ … }}` placeholders in argv elements and env values: finding them (for
//! validation) and substituting them (at dispatch). Substitution happens
//! inside one argv element or env value and never quotes, splits or runs a
//! shell, so a value such as `"; rm -rf / #"` stays one inert string.
//! (Validation keeps placeholders out of elements that a shell or
//! interpreter itself runs as code, such as the script after `sh -c`.)
//!
//! A placeholder is `{{`, optional spaces, a dotted name, optional spaces,
//! `}}`. Text like `{{.ID}}` (a docker format string) is not a name and is
//! left as it is.

use std::collections::BTreeMap;
use std::ops::Range;

use chrono::{DateTime, SecondsFormat, Utc};

use super::params::ParamValue;

/// The variables a placeholder can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    Param(String),
    LogicalDate,
    RunId,
    DagId,
    TaskId,
}

/// The names usable in placeholders, for messages and docs.
pub const PLACEHOLDER_NAMES: &str = "params.NAME, logical_date, run_id, dag_id, task_id";

/// What one run's placeholders are replaced with.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderContext {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    /// Rendered as RFC 3339 UTC with a `Z` suffix, e.g. `2026-03-29T01:00:00Z`.
    pub logical_date: DateTime<Utc>,
    /// The run's params, already merged with the declared defaults.
    pub params: BTreeMap<String, ParamValue>,
}

/// Why an argv could not be rendered (validation normally prevents these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("placeholder names param `{0}` which the run does not have")]
    UnknownParam(String),
    #[error("unknown placeholder `{{{{ {0} }}}}`; use one of {PLACEHOLDER_NAMES}")]
    UnknownVariable(String),
}

/// One `{{ name }}` occurrence: its byte range in the string and the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Occurrence<'a> {
    pub(crate) range: Range<usize>,
    pub(crate) name: &'a str,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Finds every `{{ name }}` in `s`, in order.
pub(crate) fn occurrences(s: &str) -> Vec<Occurrence<'_>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(open) = s[pos..].find("{{").map(|i| pos + i) {
        let inner_start = open + 2;
        let Some(close) = s[inner_start..].find("}}").map(|i| inner_start + i) else {
            break;
        };
        let name = s[inner_start..close].trim();
        if is_name(name) {
            out.push(Occurrence {
                range: open..close + 2,
                name,
            });
            pos = close + 2;
        } else {
            pos = inner_start;
        }
    }
    out
}

/// Classifies a placeholder name, or says why it is not one.
pub fn classify(name: &str) -> Result<Placeholder, RenderError> {
    match name {
        "logical_date" => Ok(Placeholder::LogicalDate),
        "run_id" => Ok(Placeholder::RunId),
        "dag_id" => Ok(Placeholder::DagId),
        "task_id" => Ok(Placeholder::TaskId),
        _ => match name.strip_prefix("params.") {
            Some(p) if !p.is_empty() && !p.contains('.') => Ok(Placeholder::Param(p.to_owned())),
            _ => Err(RenderError::UnknownVariable(name.to_owned())),
        },
    }
}

/// Substitutes placeholders inside each argv element; the number of elements
/// never changes.
pub fn render_argv(argv: &[String], ctx: &RenderContext) -> Result<Vec<String>, RenderError> {
    argv.iter().map(|arg| render_str(arg, ctx)).collect()
}

/// Substitutes placeholders in one string (an argv element or an env
/// value); the result is plain text, never parsed again.
pub fn render_str(arg: &str, ctx: &RenderContext) -> Result<String, RenderError> {
    let mut out = String::with_capacity(arg.len());
    let mut last = 0;
    for occ in occurrences(arg) {
        out.push_str(&arg[last..occ.range.start]);
        match classify(occ.name)? {
            Placeholder::Param(p) => match ctx.params.get(&p) {
                Some(v) => out.push_str(&v.to_string()),
                None => return Err(RenderError::UnknownParam(p)),
            },
            Placeholder::LogicalDate => out.push_str(
                &ctx.logical_date
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ),
            Placeholder::RunId => out.push_str(&ctx.run_id),
            Placeholder::DagId => out.push_str(&ctx.dag_id),
            Placeholder::TaskId => out.push_str(&ctx.task_id),
        }
        last = occ.range.end;
    }
    out.push_str(&arg[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ctx(params: &[(&str, ParamValue)]) -> RenderContext {
        RenderContext {
            dag_id: "churn".into(),
            run_id: "run-1".into(),
            task_id: "train".into(),
            logical_date: Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn substitutes_all_variables() {
        let c = ctx(&[
            ("lr", ParamValue::Float(0.001)),
            ("epochs", ParamValue::Int(10)),
        ]);
        let out = render_argv(
            &argv(&[
                "train.py",
                "--lr={{ params.lr }}",
                "{{params.epochs}}",
                "{{ logical_date }}",
                "{{ dag_id }}/{{ run_id }}/{{ task_id }}",
            ]),
            &c,
        )
        .unwrap();
        assert_eq!(
            out,
            argv(&[
                "train.py",
                "--lr=0.001",
                "10",
                "2026-03-29T01:00:00Z",
                "churn/run-1/train"
            ])
        );
    }

    #[test]
    fn hostile_values_stay_inside_one_element() {
        for hostile in [
            "; touch /tmp/pwned #",
            "$(id)",
            "a b\nc",
            "`id` && rm -rf ~",
        ] {
            let c = ctx(&[("x", ParamValue::String(hostile.into()))]);
            let out = render_argv(&argv(&["echo", "{{ params.x }}", "end"]), &c).unwrap();
            assert_eq!(out.len(), 3);
            assert_eq!(out[1], hostile);
        }
    }

    #[test]
    fn substituted_text_is_not_rescanned() {
        let c = ctx(&[("x", ParamValue::String("{{ run_id }}".into()))]);
        let out = render_argv(&argv(&["{{ params.x }}"]), &c).unwrap();
        assert_eq!(out, argv(&["{{ run_id }}"]));
    }

    #[test]
    fn non_name_braces_are_left_alone() {
        let c = ctx(&[]);
        let out = render_argv(&argv(&["--format", "{{.ID}}", "{{ unterminated"]), &c).unwrap();
        assert_eq!(out, argv(&["--format", "{{.ID}}", "{{ unterminated"]));
    }

    #[test]
    fn unknown_names_are_errors() {
        let c = ctx(&[]);
        assert_eq!(
            render_argv(&argv(&["{{ params.nope }}"]), &c),
            Err(RenderError::UnknownParam("nope".into()))
        );
        assert_eq!(
            render_argv(&argv(&["{{ logical_dat }}"]), &c),
            Err(RenderError::UnknownVariable("logical_dat".into()))
        );
    }
}
