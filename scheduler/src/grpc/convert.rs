//! Wire ⇄ engine conversions for the worker protocol (`trainyard.v1`).
//!
//! Domain types never derive prost; this file is the one place the scheduler
//! translates. Everything coming *from* a worker is untrusted: ids are
//! parsed, numbers are bounded and strings are length-checked, and a value
//! that does not fit is a [`ConvertError`] (→ `INVALID_ARGUMENT`) rather
//! than a panic or a silently clamped number.

use std::collections::BTreeMap;

use trainyard_core::ids::{TaskInstanceId, WorkerId};
use trainyard_proto::v1;

use crate::engine::{
    Assignment, GpuInventory, GpuUsage, TaskLineage, TaskOutcome, TaskResult, WorkerCommand,
    WorkerRegistration,
};
use crate::logs::LogStream;
use crate::store::NewArtifact;

/// Upper bounds on what a worker may claim. Generous for real hardware,
/// tight enough that a typo or a hostile peer cannot poison placement.
pub mod limits {
    /// Longest name, label key/value, queue name, GPU uuid/model, hostname.
    pub const MAX_STRING: usize = 256;
    pub const MAX_LABELS: usize = 64;
    pub const MAX_QUEUES: usize = 64;
    pub const MAX_CPUS: u32 = 65_536;
    /// 64 TiB of host memory.
    pub const MAX_MEMORY_BYTES: u64 = 64 << 40;
    pub const MAX_SLOTS: u32 = 10_000;
    pub const MAX_GPUS: usize = 256;
    /// 1 TiB per GPU: several times the largest GPU sold today (288 GB),
    /// so only a worker that lies about its inventory hits it.
    pub const MAX_GPU_MEMORY_BYTES: u64 = 1 << 40;
    /// Attempts one worker may report as running (Hello, Heartbeat).
    pub const MAX_RUNNING: usize = 100_000;
    /// Metrics per TaskFinished.
    pub const MAX_METRICS: usize = 1_000;
    /// Outputs, and inputs, one TaskFinished may record as lineage.
    pub const MAX_LINEAGE_RECORDS: usize = 100_000;
    /// Error text kept from a TaskFinished (longer is cut, not rejected).
    pub const MAX_ERROR_CHARS: usize = 16 * 1024;
    /// Lines per LogLines batch.
    pub const MAX_LOG_LINES: usize = 10_000;
}

/// Why a worker's message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0} is required")]
    Missing(&'static str),
}

pub type Result<T, E = ConvertError> = std::result::Result<T, E>;

/// A message that does not fit the protocol is the sender's mistake.
impl trainyard_core::error::Classify for ConvertError {
    fn kind(&self) -> trainyard_core::error::ErrorKind {
        trainyard_core::error::ErrorKind::Invalid
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConvertError {
    ConvertError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_str(field: &'static str, s: &str) -> Result<()> {
    // A NUL cannot be stored (PostgreSQL refuses it in text) and control
    // characters in names and labels only serve to spoof logs and the UI.
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(invalid(
            field,
            format!("contains the control character {c:?}; use printable text"),
        ));
    }
    if s.len() > limits::MAX_STRING {
        return Err(invalid(
            field,
            format!(
                "{} bytes, longer than the {} byte limit",
                s.len(),
                limits::MAX_STRING
            ),
        ));
    }
    Ok(())
}

/// A worker id as the worker sent it (a UUID).
pub fn worker_id(s: &str) -> Result<WorkerId> {
    s.parse()
        .map_err(|e: trainyard_core::ids::IdError| invalid("worker_id", e.to_string()))
}

/// `(task instance, attempt)` from an [`v1::AttemptRef`].
pub fn attempt_from_proto(a: Option<&v1::AttemptRef>) -> Result<(TaskInstanceId, i32)> {
    let a = a.ok_or(ConvertError::Missing("attempt"))?;
    let ti: TaskInstanceId =
        a.task_instance_id
            .parse()
            .map_err(|e: trainyard_core::ids::IdError| {
                invalid("attempt.task_instance_id", e.to_string())
            })?;
    let attempt = i32::try_from(a.attempt)
        .map_err(|_| invalid("attempt.attempt", format!("{} is out of range", a.attempt)))?;
    Ok((ti, attempt))
}

pub fn attempt_to_proto(ti: TaskInstanceId, attempt: i32) -> v1::AttemptRef {
    v1::AttemptRef {
        task_instance_id: ti.to_string(),
        // Attempt numbers start at 1; a negative one never leaves the engine.
        attempt: u32::try_from(attempt).unwrap_or(0),
    }
}

/// The attempts a worker says it still runs (Hello).
pub fn running_from_proto(running: &[v1::RunningAttempt]) -> Result<Vec<(TaskInstanceId, i32)>> {
    if running.len() > limits::MAX_RUNNING {
        return Err(invalid(
            "running",
            format!(
                "{} attempts, more than {}",
                running.len(),
                limits::MAX_RUNNING
            ),
        ));
    }
    running
        .iter()
        .map(|r| attempt_from_proto(r.attempt.as_ref()))
        .collect()
}

fn gpu_from_proto(g: &v1::Gpu) -> Result<GpuInventory> {
    check_str("gpus.uuid", &g.uuid)?;
    check_str("gpus.model", &g.model)?;
    if g.memory_bytes > limits::MAX_GPU_MEMORY_BYTES {
        return Err(invalid(
            "gpus.memory_bytes",
            format!("{} bytes is not a real GPU", g.memory_bytes),
        ));
    }
    if usize::try_from(g.index).map_or(true, |i| i >= limits::MAX_GPUS) {
        return Err(invalid(
            "gpus.index",
            format!("{} is not below {}", g.index, limits::MAX_GPUS),
        ));
    }
    Ok(GpuInventory {
        index: g.index,
        uuid: g.uuid.clone(),
        model: g.model.clone(),
        memory_bytes: g.memory_bytes,
        healthy: g.healthy,
    })
}

/// A registration, validated. The protocol version is checked by the caller
/// (it is answered in the response, not as an error).
/// A registration as the engine takes it; `max_gpus` is the scheduler's
/// `--max-worker-gpus`.
pub fn registration_from_proto(
    r: &v1::RegisterRequest,
    max_gpus: u32,
) -> Result<WorkerRegistration> {
    if r.name.trim().is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    check_str("name", &r.name)?;
    check_str("hostname", &r.hostname)?;
    check_str("worker_version", &r.worker_version)?;
    let id = if r.worker_id.is_empty() {
        None
    } else {
        Some(worker_id(&r.worker_id)?)
    };
    if r.labels.len() > limits::MAX_LABELS {
        return Err(invalid(
            "labels",
            format!(
                "{} labels, more than {}",
                r.labels.len(),
                limits::MAX_LABELS
            ),
        ));
    }
    for (k, v) in &r.labels {
        check_str("labels", k)?;
        check_str("labels", v)?;
    }
    if r.queues.len() > limits::MAX_QUEUES {
        return Err(invalid(
            "queues",
            format!(
                "{} queues, more than {}",
                r.queues.len(),
                limits::MAX_QUEUES
            ),
        ));
    }
    for q in &r.queues {
        if q.trim().is_empty() {
            return Err(invalid("queues", "a queue name must not be empty"));
        }
        check_str("queues", q)?;
    }
    if r.cpus > limits::MAX_CPUS {
        return Err(invalid(
            "cpus",
            format!("{} is more than {}", r.cpus, limits::MAX_CPUS),
        ));
    }
    if r.memory_bytes > limits::MAX_MEMORY_BYTES {
        return Err(invalid(
            "memory_bytes",
            format!(
                "{} bytes is more than {}",
                r.memory_bytes,
                limits::MAX_MEMORY_BYTES
            ),
        ));
    }
    if r.slots == 0 || r.slots > limits::MAX_SLOTS {
        return Err(invalid(
            "slots",
            format!("{} is not between 1 and {}", r.slots, limits::MAX_SLOTS),
        ));
    }
    let max_gpus = usize::try_from(max_gpus)
        .unwrap_or(usize::MAX)
        .min(limits::MAX_GPUS);
    if r.gpus.len() > max_gpus {
        return Err(invalid(
            "gpus",
            format!(
                "{} GPUs, more than the {max_gpus} this scheduler accepts from one worker \
                 (raise the scheduler's --max-worker-gpus if the machine really has them)",
                r.gpus.len()
            ),
        ));
    }
    let gpus = r
        .gpus
        .iter()
        .map(gpu_from_proto)
        .collect::<Result<Vec<_>>>()?;
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = gpus.iter().find(|g| !seen.insert(g.index)) {
        return Err(invalid(
            "gpus.index",
            format!("index {} appears twice", dup.index),
        ));
    }
    Ok(WorkerRegistration {
        id,
        name: r.name.clone(),
        labels: r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        queues: r.queues.clone(),
        cpus: f64::from(r.cpus),
        memory_bytes: r.memory_bytes,
        slots: r.slots,
        gpus,
        credential: None,
    })
}

/// GPU figures from a heartbeat. The wire has no health flag per sample:
/// a GPU that answers its sampler counts as healthy.
pub fn usage_from_proto(usage: &[v1::GpuUsage]) -> Result<Vec<GpuUsage>> {
    if usage.len() > limits::MAX_GPUS {
        return Err(invalid(
            "gpus",
            format!("{} samples, more than {}", usage.len(), limits::MAX_GPUS),
        ));
    }
    usage
        .iter()
        .map(|u| {
            if u.utilization_percent > 100 {
                return Err(invalid(
                    "gpus.utilization_percent",
                    format!("{} is above 100", u.utilization_percent),
                ));
            }
            Ok(GpuUsage {
                index: u.index,
                utilization_percent: f64::from(u.utilization_percent),
                memory_used_bytes: u.memory_used_bytes,
                healthy: true,
            })
        })
        .collect()
}

/// A finished attempt's report.
pub fn result_from_proto(f: &v1::TaskFinished) -> Result<TaskResult> {
    let outcome = match v1::TaskOutcome::try_from(f.outcome) {
        Ok(v1::TaskOutcome::Succeeded) => TaskOutcome::Succeeded,
        Ok(v1::TaskOutcome::Failed) => TaskOutcome::Failed,
        Ok(v1::TaskOutcome::TimedOut) => TaskOutcome::TimedOut,
        Ok(v1::TaskOutcome::Cancelled) => TaskOutcome::Cancelled,
        Ok(v1::TaskOutcome::CannotStart) => TaskOutcome::CannotStart,
        Ok(v1::TaskOutcome::Unspecified) | Err(_) => {
            return Err(invalid(
                "outcome",
                format!("{} is not a known outcome", f.outcome),
            ));
        }
    };
    if f.metrics.len() > limits::MAX_METRICS {
        return Err(invalid(
            "metrics",
            format!(
                "{} metrics, more than {}",
                f.metrics.len(),
                limits::MAX_METRICS
            ),
        ));
    }
    let mut metrics = BTreeMap::new();
    for (name, value) in &f.metrics {
        if name.is_empty() {
            return Err(invalid("metrics", "a metric name must not be empty"));
        }
        check_str("metrics", name)?;
        if !value.is_finite() {
            return Err(invalid(
                "metrics",
                format!("`{name}` is {value}, not a finite number"),
            ));
        }
        metrics.insert(name.clone(), *value);
    }
    let error = (!f.error.is_empty()).then(|| truncate(&f.error, limits::MAX_ERROR_CHARS));
    let error = match (error, f.signal) {
        (None, Some(sig)) if outcome != TaskOutcome::Succeeded => {
            Some(format!("killed by signal {sig}"))
        }
        (e, _) => e,
    };
    // Lineage travels with the result and is committed with the attempt's end.
    let lineage = TaskLineage {
        outputs: f
            .outputs
            .iter()
            .take(limits::MAX_LINEAGE_RECORDS)
            .map(|a| NewArtifact {
                key: a.key.clone(),
                uri: a.uri.clone(),
                size: a.size,
                sha256: a.sha256.clone(),
            })
            .collect(),
        inputs: f
            .inputs
            .iter()
            .take(limits::MAX_LINEAGE_RECORDS)
            .map(|a| a.key.clone())
            .collect(),
        log_location: None,
    };
    Ok(TaskResult {
        outcome,
        exit_code: f.exit_code,
        error,
        metrics,
        lineage,
    })
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// The lines of a batch for the log store. Lines the worker wrote itself go
/// to stderr with a `[trainyard]` prefix so they stand out in the task log.
pub fn log_lines_from_proto(l: &v1::LogLines) -> Result<Vec<(LogStream, String)>> {
    if l.lines.len() > limits::MAX_LOG_LINES {
        return Err(invalid(
            "lines",
            format!(
                "{} lines in one batch, more than {}",
                l.lines.len(),
                limits::MAX_LOG_LINES
            ),
        ));
    }
    // Each stored line is one line: a worker that sends embedded newlines
    // (an old or hostile one) cannot forge lines of its own choosing.
    Ok(l.lines
        .iter()
        .flat_map(|line| {
            let (stream, prefix) = match v1::LogStream::try_from(line.stream) {
                Ok(v1::LogStream::Stderr) => (LogStream::Stderr, ""),
                Ok(v1::LogStream::System) => (LogStream::Stderr, "[trainyard] "),
                _ => (LogStream::Stdout, ""),
            };
            line.text
                .split('\n')
                .map(move |part| (stream, format!("{prefix}{}", part.trim_end_matches('\r'))))
        })
        .collect())
}

/// The id echoed in the worker's Ack: unique per (task instance, attempt).
pub fn assignment_id(ti: TaskInstanceId, attempt: i32) -> String {
    format!("{ti}-{attempt}")
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn assign_to_proto(a: &Assignment) -> v1::Assign {
    v1::Assign {
        assignment_id: assignment_id(a.task_instance_id, a.attempt),
        attempt: Some(attempt_to_proto(a.task_instance_id, a.attempt)),
        run_id: a.run_id.to_string(),
        dag_id: a.dag_id.to_string(),
        task_id: a.task_id.to_string(),
        argv: a.argv.clone(),
        shell: a.shell,
        env: a.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        working_dir: a.working_dir.clone().unwrap_or_default(),
        timeout_ms: a.timeout.map_or(0, millis),
        gpu_indices: a.gpu_indices.clone(),
        cpus: a.cpus,
        memory_bytes: a.memory_bytes.unwrap_or(0),
        params_json: a.params_json.to_string(),
        logical_date: a.logical_date.to_rfc3339(),
        metrics_file: String::new(),
        output_dir: String::new(),
        input_dir: String::new(),
        kill_grace_ms: 0,
        upstream: a.upstream.iter().map(ToString::to_string).collect(),
        env_from_worker: a
            .env_from_worker
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        secret_env: a.secret_env.clone(),
        inherit_env: a.inherit_env,
        // Filled by the session from the store (see grpc::artifacts).
        upstream_outputs: Vec::new(),
        code: a.code.as_ref().map(|c| v1::CodeSnapshot {
            root: c.root.clone(),
            files: c
                .files
                .iter()
                .map(|f| v1::CodeFile {
                    path: f.path.clone(),
                    sha256: f.sha256.clone(),
                    size: f.size,
                    executable: f.executable,
                })
                .collect(),
        }),
    }
}

/// An engine command as the message the worker receives.
pub fn command_to_proto(cmd: &WorkerCommand) -> v1::SchedulerMessage {
    use v1::scheduler_message::Kind;
    let kind = match cmd {
        WorkerCommand::Assign(a) => Kind::Assign(assign_to_proto(a)),
        WorkerCommand::Cancel {
            ti,
            attempt,
            reason,
        } => Kind::Cancel(v1::Cancel {
            attempt: Some(attempt_to_proto(*ti, *attempt)),
            reason: reason.clone(),
            grace_ms: 0,
        }),
        WorkerCommand::Kill {
            ti,
            attempt,
            reason,
        } => Kind::Kill(v1::Kill {
            attempt: Some(attempt_to_proto(*ti, *attempt)),
            reason: reason.clone(),
        }),
    };
    v1::SchedulerMessage { kind: Some(kind) }
}

/// A Kill for a stale attempt, sent when the engine fenced a report.
pub fn kill_to_proto(ti: TaskInstanceId, attempt: i32, reason: &str) -> v1::SchedulerMessage {
    command_to_proto(&WorkerCommand::Kill {
        ti,
        attempt,
        reason: reason.to_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use trainyard_core::ids::RunId;

    fn register() -> v1::RegisterRequest {
        v1::RegisterRequest {
            protocol_version: v1::PROTOCOL_VERSION,
            name: "gpu-box-1".into(),
            labels: [("zone".to_owned(), "a".to_owned())].into_iter().collect(),
            queues: vec!["default".into()],
            cpus: 16,
            memory_bytes: 64 << 30,
            slots: 8,
            gpus: vec![v1::Gpu {
                index: 0,
                uuid: "GPU-decl-0".into(),
                model: "NVIDIA A100".into(),
                memory_bytes: 80 << 30,
                healthy: true,
            }],
            worker_version: "0.1.0".into(),
            hostname: "box".into(),
            worker_id: WorkerId::new().to_string(),
            session_credential: String::new(),
        }
    }

    #[test]
    fn a_sane_registration_converts_field_by_field() {
        let r = register();
        let reg = registration_from_proto(&r, 64).unwrap();
        assert_eq!(reg.id.unwrap().to_string(), r.worker_id);
        assert_eq!(reg.cpus, 16.0);
        assert_eq!(reg.slots, 8);
        assert_eq!(reg.gpus[0].model, "NVIDIA A100");
        assert_eq!(reg.labels["zone"], "a");
    }

    #[test]
    fn an_empty_worker_id_lets_the_scheduler_choose() {
        let mut r = register();
        r.worker_id.clear();
        assert_eq!(registration_from_proto(&r, 64).unwrap().id, None);
    }

    #[test]
    fn absurd_or_malformed_registrations_are_refused_with_the_field_named() {
        type Mutate = Box<dyn Fn(&mut v1::RegisterRequest)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("worker_id", Box::new(|r| r.worker_id = "not-a-uuid".into())),
            ("name", Box::new(|r| r.name = "  ".into())),
            ("name", Box::new(|r| r.name = "x".repeat(10_000))),
            ("slots", Box::new(|r| r.slots = 0)),
            ("slots", Box::new(|r| r.slots = u32::MAX)),
            ("cpus", Box::new(|r| r.cpus = u32::MAX)),
            ("memory_bytes", Box::new(|r| r.memory_bytes = u64::MAX)),
            ("gpus.index", Box::new(|r| r.gpus[0].index = u32::MAX)),
            (
                "gpus.memory_bytes",
                Box::new(|r| r.gpus[0].memory_bytes = u64::MAX),
            ),
            ("gpus.index", Box::new(|r| r.gpus.push(r.gpus[0].clone()))),
            ("queues", Box::new(|r| r.queues.push(String::new()))),
            ("name", Box::new(|r| r.name = "evil\0worker".into())),
            (
                "labels",
                Box::new(|r| {
                    r.labels.insert("zone".into(), "a\nb".into());
                }),
            ),
            (
                "gpus",
                Box::new(|r| {
                    r.gpus = (0..65)
                        .map(|i| v1::Gpu {
                            index: i,
                            ..r.gpus[0].clone()
                        })
                        .collect()
                }),
            ),
            (
                "gpus.memory_bytes",
                Box::new(|r| r.gpus[0].memory_bytes = 2 << 40),
            ),
        ];
        for (field, mutate) in cases {
            let mut r = register();
            mutate(&mut r);
            match registration_from_proto(&r, 64) {
                Err(ConvertError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn attempt_refs_round_trip_and_bad_ones_are_refused() {
        let ti = TaskInstanceId::new(42);
        let a = attempt_to_proto(ti, 3);
        assert_eq!(attempt_from_proto(Some(&a)).unwrap(), (ti, 3));
        assert_eq!(
            attempt_from_proto(None),
            Err(ConvertError::Missing("attempt"))
        );
        let bad = v1::AttemptRef {
            task_instance_id: "forty-two".into(),
            attempt: 1,
        };
        assert!(attempt_from_proto(Some(&bad)).is_err());
        let huge = v1::AttemptRef {
            task_instance_id: "1".into(),
            attempt: u32::MAX,
        };
        assert!(attempt_from_proto(Some(&huge)).is_err());
    }

    #[test]
    fn task_finished_maps_outcome_metrics_and_error() {
        let f = v1::TaskFinished {
            outcome: v1::TaskOutcome::Failed as i32,
            exit_code: Some(3),
            error: "exited with code 3".into(),
            metrics: [("auc".to_owned(), 0.91)].into_iter().collect(),
            ..Default::default()
        };
        let r = result_from_proto(&f).unwrap();
        assert_eq!(r.outcome, TaskOutcome::Failed);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.error.as_deref(), Some("exited with code 3"));
        assert_eq!(r.metrics["auc"], 0.91);
    }

    #[test]
    fn task_finished_without_outcome_or_with_nan_metrics_is_refused() {
        let f = v1::TaskFinished::default();
        assert!(result_from_proto(&f).is_err());
        let f = v1::TaskFinished {
            outcome: v1::TaskOutcome::Succeeded as i32,
            metrics: [("loss".to_owned(), f64::NAN)].into_iter().collect(),
            ..Default::default()
        };
        assert!(result_from_proto(&f).is_err());
    }

    #[test]
    fn a_signal_without_message_becomes_the_error() {
        let f = v1::TaskFinished {
            outcome: v1::TaskOutcome::Failed as i32,
            signal: Some(9),
            ..Default::default()
        };
        assert_eq!(
            result_from_proto(&f).unwrap().error.as_deref(),
            Some("killed by signal 9")
        );
    }

    #[test]
    fn usage_above_100_percent_is_refused() {
        let ok = v1::GpuUsage {
            index: 0,
            utilization_percent: 55,
            memory_used_bytes: 1,
        };
        assert_eq!(
            usage_from_proto(&[ok]).unwrap()[0].utilization_percent,
            55.0
        );
        let bad = v1::GpuUsage {
            utilization_percent: 101,
            ..ok
        };
        assert!(usage_from_proto(&[bad]).is_err());
    }

    #[test]
    fn system_log_lines_go_to_stderr_with_a_prefix() {
        let l = v1::LogLines {
            lines: vec![
                v1::LogLine {
                    stream: v1::LogStream::Stdout as i32,
                    text: "hello".into(),
                    ..Default::default()
                },
                v1::LogLine {
                    stream: v1::LogStream::System as i32,
                    text: "timed out".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let lines = log_lines_from_proto(&l).unwrap();
        assert_eq!(lines[0], (LogStream::Stdout, "hello".to_owned()));
        assert_eq!(
            lines[1],
            (LogStream::Stderr, "[trainyard] timed out".to_owned())
        );
    }

    #[test]
    fn a_line_with_embedded_newlines_is_stored_as_several_lines() {
        let l = v1::LogLines {
            lines: vec![v1::LogLine {
                stream: v1::LogStream::Stdout as i32,
                text: "one\r\ntwo\nthree".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let lines = log_lines_from_proto(&l).unwrap();
        let texts: Vec<&str> = lines.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three"]);
    }

    #[test]
    fn assignments_carry_everything_the_worker_needs() {
        let a = Assignment {
            task_instance_id: TaskInstanceId::new(7),
            run_id: RunId::new(),
            dag_id: "churn".into(),
            task_id: "train".into(),
            attempt: 2,
            argv: vec!["python3".into(), "train.py".into()],
            shell: false,
            env: [("A".to_owned(), "1".to_owned())].into_iter().collect(),
            env_from_worker: [("TOKEN".to_owned(), "HF_TOKEN".to_owned())]
                .into_iter()
                .collect(),
            secret_env: vec!["TOKEN".into()],
            inherit_env: true,
            working_dir: None,
            timeout: Some(std::time::Duration::from_secs(90)),
            gpu_indices: vec![1, 3],
            cpus: 2.0,
            memory_bytes: None,
            params_json: serde_json::json!({"lr": 0.1}),
            logical_date: chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 0, 0).unwrap(),
            upstream: vec!["ingest".into()],
            upstream_attempts: Vec::new(),
            code: Some(trainyard_core::dag::code::CodeSnapshot {
                root: "dags".into(),
                files: vec![trainyard_core::dag::code::CodeFile {
                    path: "jobs/train.py".into(),
                    sha256: "ab".repeat(32),
                    size: 12,
                    executable: true,
                }],
            }),
        };
        let msg = command_to_proto(&WorkerCommand::Assign(a.clone()));
        let Some(v1::scheduler_message::Kind::Assign(p)) = msg.kind else {
            panic!("not an assign");
        };
        assert_eq!(p.assignment_id, "7-2");
        assert_eq!(
            attempt_from_proto(p.attempt.as_ref()).unwrap(),
            (a.task_instance_id, 2)
        );
        assert_eq!(p.run_id, a.run_id.to_string());
        assert_eq!(p.timeout_ms, 90_000);
        assert_eq!(p.gpu_indices, vec![1, 3]);
        assert_eq!(p.params_json, r#"{"lr":0.1}"#);
        assert_eq!(p.logical_date, "2026-01-02T03:00:00+00:00");
        assert_eq!(p.upstream, vec!["ingest".to_owned()]);
        assert_eq!(p.env_from_worker["TOKEN"], "HF_TOKEN");
        assert_eq!(p.secret_env, vec!["TOKEN".to_owned()]);
        assert!(p.inherit_env);
        assert_eq!(p.memory_bytes, 0);
        let code = p.code.expect("the version's code");
        assert_eq!(code.root, "dags");
        assert_eq!(
            (
                code.files[0].path.as_str(),
                code.files[0].size,
                code.files[0].executable
            ),
            ("jobs/train.py", 12, true)
        );
    }

    #[test]
    fn cancel_and_kill_carry_the_attempt_and_reason() {
        let ti = TaskInstanceId::new(5);
        let msg = kill_to_proto(ti, 1, "stale");
        let Some(v1::scheduler_message::Kind::Kill(k)) = msg.kind else {
            panic!("not a kill");
        };
        assert_eq!(k.reason, "stale");
        assert_eq!(attempt_from_proto(k.attempt.as_ref()).unwrap(), (ti, 1));
        let msg = command_to_proto(&WorkerCommand::Cancel {
            ti,
            attempt: 4,
            reason: "by request".into(),
        });
        assert!(matches!(
            msg.kind,
            Some(v1::scheduler_message::Kind::Cancel(_))
        ));
    }
}
