//! Errors found in a DAG file, each with a 1-based line and column, and the
//! byte-offset → line/column mapping they are computed with.

use std::fmt;
use std::ops::Range;

/// One kind per way a DAG file can be wrong; tests and tools match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DagErrorKind {
    /// The file is not valid TOML (also duplicate keys and tables).
    Syntax,
    /// A key the format does not know (typos are caught, not ignored).
    UnknownKey,
    /// A required key is absent (`id`, or a task's `command`/`shell`).
    MissingKey,
    /// A value of the wrong TOML type (string where a number belongs, …).
    WrongType,
    /// A number outside its allowed range (negative retries, zero max_active_runs, …).
    OutOfRange,
    /// A DAG, task or pool id that is not `[A-Za-z0-9_-]+`.
    BadId,
    /// The DAG declares no tasks.
    NoTasks,
    /// `depends_on` forms a cycle; the message shows its path.
    Cycle,
    /// `depends_on` names a task that does not exist.
    UnknownDependency,
    /// A task depends on itself.
    SelfDependency,
    /// `command = []` or an empty first element, or an empty `shell`.
    EmptyCommand,
    /// Both `command` and `shell` are set.
    CommandAndShell,
    /// `schedule` is not a valid cron expression.
    BadCron,
    /// `timezone` is not an IANA zone name.
    UnknownTimezone,
    /// `start_date`/`end_date` is not a date or datetime.
    BadDate,
    /// `start_date` is after `end_date`.
    StartAfterEnd,
    /// A duration such as `timeout` does not parse.
    BadDuration,
    /// A size such as `memory` does not parse.
    BadSize,
    /// Resources no worker could ever satisfy, or that contradict each other.
    ImpossibleResources,
    /// `gpu_model` is not a valid regular expression.
    BadGpuModel,
    /// A `[params]` entry with an unsupported value type or a bad name.
    BadParam,
    /// A `{{ params.X }}` placeholder names an undeclared param.
    UnknownParam,
    /// A `{{ … }}` placeholder names an unknown variable, or sits in a shell string.
    BadPlaceholder,
    /// A placeholder inside code a shell or interpreter runs (`sh -c SCRIPT`,
    /// `python3 -c CODE`, `perl -e CODE`, …) or where it reads options.
    PlaceholderInCode,
    /// A `when` expression does not parse.
    BadWhen,
    /// A `when` expression names a task that does not exist.
    WhenUnknownTask,
    /// A `when` expression reads metrics of a task that is not upstream of it.
    WhenNotUpstream,
    /// A `when` expression names an undeclared param.
    WhenUnknownParam,
    /// `trigger_rule` is not one of the known rules.
    BadTriggerRule,
    /// `retry_backoff` is not `fixed` or `exponential`.
    BadRetryBackoff,
    /// `overlap` is not `skip`, `buffer` or `cancel_previous`.
    BadOverlap,
    /// An `env` entry with a bad name, a reserved name or a bad secret spec.
    BadEnv,
}

/// One problem in a DAG file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagError {
    pub kind: DagErrorKind,
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// 1-based column (in characters) of the offending key or value.
    pub col: usize,
    pub message: String,
}

/// Every problem found in one file; `Display` prints one
/// `path:line:col: error: message` line per error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagErrors {
    pub file: String,
    pub errors: Vec<DagError>,
}

impl fmt::Display for DagErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(
                f,
                "{}:{}:{}: error: {}",
                self.file, e.line, e.col, e.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for DagErrors {}

/// Maps byte offsets in the source to 1-based (line, column-in-chars).
pub(crate) struct LineIndex<'s> {
    source: &'s str,
    line_starts: Vec<usize>,
}

impl<'s> LineIndex<'s> {
    pub(crate) fn new(source: &'s str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex {
            source,
            line_starts,
        }
    }

    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        // Count characters, not bytes, so columns match what editors show;
        // `get` guards against an offset inside a multi-byte character.
        let col = self
            .source
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, col)
    }
}

/// Collects errors while the file is walked, so every problem is reported.
pub(crate) struct Collector<'s> {
    index: LineIndex<'s>,
    pub(crate) errors: Vec<(usize, DagError)>,
}

impl<'s> Collector<'s> {
    pub(crate) fn new(source: &'s str) -> Self {
        Collector {
            index: LineIndex::new(source),
            errors: Vec::new(),
        }
    }

    pub(crate) fn push(
        &mut self,
        kind: DagErrorKind,
        span: Range<usize>,
        message: impl Into<String>,
    ) {
        let (line, col) = self.index.position(span.start);
        self.errors.push((
            span.start,
            DagError {
                kind,
                line,
                col,
                message: message.into(),
            },
        ));
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Errors in source order (stable for errors at the same offset).
    pub(crate) fn into_errors(mut self, file: &str) -> DagErrors {
        self.errors.sort_by_key(|(offset, _)| *offset);
        DagErrors {
            file: file.to_owned(),
            errors: self.errors.into_iter().map(|(_, e)| e).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_chars() {
        let idx = LineIndex::new("ab\nçd = 1\n");
        assert_eq!(idx.position(0), (1, 1));
        assert_eq!(idx.position(1), (1, 2));
        assert_eq!(idx.position(3), (2, 1));
        // 'ç' is two bytes; "d" is the second character of line 2.
        assert_eq!(idx.position(5), (2, 2));
        assert_eq!(idx.position(1000), (3, 1));
    }

    #[test]
    fn display_prints_one_line_per_error() {
        let errs = DagErrors {
            file: "dags/x.toml".into(),
            errors: vec![
                DagError {
                    kind: DagErrorKind::UnknownKey,
                    line: 3,
                    col: 1,
                    message: "unknown key `foo`".into(),
                },
                DagError {
                    kind: DagErrorKind::Cycle,
                    line: 9,
                    col: 14,
                    message: "dependency cycle: a -> b -> a".into(),
                },
            ],
        };
        assert_eq!(
            errs.to_string(),
            "dags/x.toml:3:1: error: unknown key `foo`\ndags/x.toml:9:14: error: dependency cycle: a -> b -> a"
        );
    }
}
