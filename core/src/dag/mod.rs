//! The DAG file (TOML): its model, parsing with source spans, and validation.
//!
//! [`parse_dag`] is the one entry point: it parses the file with spans,
//! reports every problem (not just the first) as [`DagErrors`] with
//! `file:line:col`, and otherwise returns a [`DagSpec`] whose tasks have the
//! `[defaults]` applied. The format is documented in `docs/dag-format.md`.
//!
//! Module map: `raw` reads typed values out of the spanned TOML tree,
//! `build` turns the tree into a spec, `validate` checks the graph,
//! placeholders and `when` references (`interp` knows which argv elements a
//! shell or interpreter runs as code); `params`, `render`, `when` and
//! `units` hold the runtime halves (trigger params, argv rendering, CEL
//! evaluation, durations).

mod build;
pub mod code;
mod error;
mod graph;
mod interp;
mod params;
mod raw;
mod render;
pub mod units;
mod validate;
mod when;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::resources::{ByteSize, ResourceRequest};
pub use error::{DagError, DagErrorKind, DagErrors};
pub use params::{
    MAX_PARAMS_BYTES, ParamError, ParamValue, check_logical_date, cli_params_to_json, merge_params,
    params_json_size, split_assignment,
};
pub use render::{
    PLACEHOLDER_NAMES, Placeholder, RenderContext, RenderError, render_argv, render_str,
};
pub use when::{WhenError, WhenOutcome, eval_when, eval_when_explained};

/// A parsed and validated DAG.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagSpec {
    /// `[A-Za-z0-9_-]+`, unique among loaded DAGs.
    pub id: String,
    pub description: Option<String>,
    /// Cron expression (validated by [`crate::cron::parse`]); `None` = manual only.
    pub schedule: Option<String>,
    /// IANA zone the schedule and plain dates are read in; default "UTC".
    pub timezone: String,
    /// No schedule slot before this instant.
    pub start_date: Option<DateTime<Utc>>,
    /// No schedule slot after this instant.
    pub end_date: Option<DateTime<Utc>>,
    /// Run missed slots (backfill) when the DAG is (re)enabled; default false.
    pub catchup: bool,
    /// Runs of this DAG active at once; default 1.
    pub max_active_runs: u32,
    /// Tasks of one run active at once; `None` = limited only by pools and workers.
    pub max_active_tasks: Option<u32>,
    /// What a due cron slot does while `max_active_runs` runs are active.
    pub overlap: Overlap,
    pub tags: Vec<String>,
    /// Declared params and their defaults (the default fixes the type).
    pub params: BTreeMap<String, ParamValue>,
    /// Tasks by id, with `[defaults]` applied.
    pub tasks: BTreeMap<String, TaskSpec>,
    /// The version's code files, recorded by the scheduler's DAG loader (a
    /// parsed file has none; see [`code`]). Specs stored before snapshots
    /// existed read as `None`: their tasks run in the worker's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<code::CodeSnapshot>,
}

/// What happens when a cron slot comes due while the DAG already has
/// `max_active_runs` active runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Drop the slot (it is recorded as skipped); the default.
    #[default]
    Skip,
    /// Queue the run; it starts when an active run finishes.
    Buffer,
    /// Cancel the oldest active run and start the new one.
    CancelPrevious,
}

/// How the delay between retries grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryBackoff {
    /// Every retry waits `retry_delay`; the default.
    #[default]
    Fixed,
    /// Retry n waits `retry_delay * 2^(n-1)`, capped by `max_retry_delay`.
    Exponential,
}

/// When a task with upstream tasks becomes ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    /// All upstream tasks succeeded; the default.
    #[default]
    AllSuccess,
    /// All upstream tasks finished, whatever their outcome.
    AllDone,
    /// At least one upstream task succeeded (runs as soon as one does).
    OneSuccess,
    /// At least one upstream task failed (runs as soon as one does).
    OneFailed,
    /// No upstream task failed (skipped ones are fine).
    NoneFailed,
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskExec {
    /// An argv run directly (no shell); placeholders are rendered per element
    /// (never inside an element a shell or interpreter runs as code).
    Command(Vec<String>),
    /// A script run with `sh -c`; no placeholders are substituted in it.
    Shell(String),
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvSource {
    /// A value written in the DAG file; placeholders in it are substituted
    /// at dispatch, as plain text.
    Value(String),
    /// Copied from this variable of the worker's environment at run time.
    FromEnv(String),
}

/// One environment variable of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub source: EnvSource,
    /// Masked (`***`) wherever logs or the UI would show the value.
    pub secret: bool,
}

/// One task with every default resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: String,
    pub description: Option<String>,
    /// Direct upstream task ids, sorted.
    pub depends_on: Vec<String>,
    /// Direct downstream task ids, sorted; derived from the other tasks'
    /// `depends_on` so the scheduler finds successors without a scan.
    pub downstream: Vec<String>,
    pub exec: TaskExec,
    pub env: BTreeMap<String, EnvVar>,
    pub working_dir: Option<String>,
    /// Run with the worker's whole environment instead of the clean one
    /// (only `PATH`, `HOME`, `LANG`, `TZ`, `CUDA_*`, `NVIDIA_*` from the
    /// worker, then what Trainyard and the DAG set); default false. Specs
    /// stored before this setting existed read as false.
    #[serde(default)]
    pub inherit_env: bool,
    pub resources: ResourceRequest,
    /// Retries after the first attempt; default 0.
    pub retries: u32,
    /// Delay before the first retry; default 30s.
    #[serde(with = "units::serde_duration")]
    pub retry_delay: Duration,
    pub retry_backoff: RetryBackoff,
    /// Cap on exponential backoff; default none (uncapped).
    #[serde(with = "units::serde_opt_duration")]
    pub max_retry_delay: Option<Duration>,
    /// Per-attempt limit; default none.
    #[serde(with = "units::serde_opt_duration")]
    pub timeout: Option<Duration>,
    pub trigger_rule: TriggerRule,
    /// CEL condition; false means the task is skipped.
    pub when: Option<String>,
    /// Higher runs first among ready tasks; default 0.
    pub priority: i32,
    /// Named pool limiting concurrency; default "default".
    pub pool: String,
}

impl TaskSpec {
    /// Delay before retry number `retry` (1-based), following the backoff.
    pub fn retry_delay_for(&self, retry: u32) -> Duration {
        let delay = match self.retry_backoff {
            RetryBackoff::Fixed => self.retry_delay,
            RetryBackoff::Exponential => {
                let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(31));
                self.retry_delay.saturating_mul(factor)
            }
        };
        match self.max_retry_delay {
            Some(cap) => delay.min(cap),
            None => delay,
        }
    }

    /// The argv, when the task runs a command.
    pub fn argv(&self) -> Option<&[String]> {
        match &self.exec {
            TaskExec::Command(argv) => Some(argv),
            TaskExec::Shell(_) => None,
        }
    }
}

/// Parses and validates one DAG file. `file` is only used in messages.
pub fn parse_dag(file: &str, source: &str) -> Result<DagSpec, DagErrors> {
    build::parse(file, source)
}

impl DagSpec {
    /// Tasks grouped so every task's upstream tasks sit in earlier layers;
    /// each layer is sorted by id.
    pub fn topological_layers(&self) -> Vec<Vec<String>> {
        graph::layers(self)
    }

    /// All task ids, upstream before downstream (layer by layer).
    pub fn task_ids_in_topological_order(&self) -> Vec<String> {
        self.topological_layers().into_iter().flatten().collect()
    }

    /// Direct upstream task ids of `task` (empty for an unknown task).
    pub fn upstream(&self, task: &str) -> &[String] {
        self.tasks.get(task).map_or(&[], |t| &t.depends_on)
    }

    /// Direct downstream task ids of `task` (empty for an unknown task).
    pub fn downstream(&self, task: &str) -> &[String] {
        self.tasks.get(task).map_or(&[], |t| &t.downstream)
    }

    /// Every task `task` depends on, directly or transitively.
    pub fn ancestors(&self, task: &str) -> std::collections::BTreeSet<String> {
        graph::ancestors(self, task)
    }

    /// Tasks with no upstream tasks, sorted.
    pub fn roots(&self) -> Vec<String> {
        self.tasks
            .values()
            .filter(|t| t.depends_on.is_empty())
            .map(|t| t.id.clone())
            .collect()
    }

    /// The timezone as a `chrono_tz::Tz` (validated at parse time).
    pub fn tz(&self) -> chrono_tz::Tz {
        self.timezone.parse().unwrap_or(chrono_tz::UTC)
    }

    /// Params for a manual trigger: `given` merged over the declared defaults;
    /// unknown names and wrong types are rejected.
    pub fn validate_params(
        &self,
        given: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<BTreeMap<String, ParamValue>, ParamError> {
        merge_params(&self.params, given)
    }
}
