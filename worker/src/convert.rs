//! Conversions between the worker's domain types and `trainyard.v1` wire
//! messages. Domain types never derive prost; this module is the one place
//! the worker translates, so the connection loop stays thin.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use trainyard_proto::v1;

use crate::exec::{ExecOutcome, ExecStatus, LogLine, LogStream, Metrics, TaskContext, TaskLaunch};
use crate::gpu::{GpuInfo, GpuUsage};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("assignment {assignment_id:?} has no attempt reference")]
    MissingAttempt { assignment_id: String },
    #[error("assignment {assignment_id:?} has an empty command")]
    EmptyArgv { assignment_id: String },
}

pub fn gpu_to_proto(gpu: &GpuInfo) -> v1::Gpu {
    v1::Gpu {
        index: gpu.index,
        uuid: gpu.uuid.clone(),
        model: gpu.model.clone(),
        memory_bytes: gpu.memory_bytes,
        healthy: gpu.healthy,
    }
}

pub fn gpu_usage_to_proto(usage: &GpuUsage) -> v1::GpuUsage {
    v1::GpuUsage {
        index: usage.index,
        utilization_percent: usage.utilization_percent,
        memory_used_bytes: usage.memory_used_bytes,
    }
}

pub fn log_line_to_proto(line: &LogLine) -> v1::LogLine {
    let stream = match line.stream {
        LogStream::Stdout => v1::LogStream::Stdout,
        LogStream::Stderr => v1::LogStream::Stderr,
    };
    v1::LogLine {
        stream: stream as i32,
        at_unix_ms: line.at.timestamp_millis(),
        text: line.line.clone(),
        seq: line.seq,
    }
}

pub fn status_to_proto(status: ExecStatus) -> v1::TaskOutcome {
    match status {
        ExecStatus::Succeeded => v1::TaskOutcome::Succeeded,
        ExecStatus::Failed => v1::TaskOutcome::Failed,
        ExecStatus::TimedOut => v1::TaskOutcome::TimedOut,
        ExecStatus::Cancelled => v1::TaskOutcome::Cancelled,
    }
}

/// The TaskFinished report for `attempt`.
pub fn finished_to_proto(
    attempt: v1::AttemptRef,
    outcome: &ExecOutcome,
    metrics: &Metrics,
    finished_at: DateTime<Utc>,
) -> v1::TaskFinished {
    v1::TaskFinished {
        attempt: Some(attempt),
        outcome: status_to_proto(outcome.status) as i32,
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        error: outcome.message.clone().unwrap_or_default(),
        metrics: metrics
            .values
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        finished_at_unix_ms: finished_at.timestamp_millis(),
        duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
        // Filled by the agent's job after the artifact transfers.
        outputs: Vec::new(),
        inputs: Vec::new(),
    }
}

/// Splits an assignment into what to run and the `TRAINYARD_*` context.
/// Zero/empty wire values mean "not set" (no timeout, worker defaults).
pub fn launch_from_assign(
    assign: &v1::Assign,
) -> Result<(v1::AttemptRef, TaskLaunch, TaskContext), ConvertError> {
    let attempt = assign
        .attempt
        .clone()
        .ok_or_else(|| ConvertError::MissingAttempt {
            assignment_id: assign.assignment_id.clone(),
        })?;
    if assign.argv.is_empty() {
        return Err(ConvertError::EmptyArgv {
            assignment_id: assign.assignment_id.clone(),
        });
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
    let millis = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
    let context = TaskContext {
        run_id: assign.run_id.clone(),
        dag_id: assign.dag_id.clone(),
        task_id: assign.task_id.clone(),
        attempt: attempt.attempt,
        logical_date: assign.logical_date.clone(),
        params_json: assign.params_json.clone(),
        output_dir: non_empty(&assign.output_dir),
        input_dir: non_empty(&assign.input_dir),
        metrics_file: non_empty(&assign.metrics_file),
    };
    let launch = TaskLaunch {
        argv: assign.argv.clone(),
        shell: assign.shell,
        env: assign
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        system_env: context.env(),
        inherit_env: assign.inherit_env,
        working_dir: non_empty(&assign.working_dir),
        gpu_indices: assign.gpu_indices.clone(),
        timeout: millis(assign.timeout_ms),
        kill_grace: millis(assign.kill_grace_ms),
    };
    Ok((attempt, launch, context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assign_becomes_launch_with_trainyard_env_and_no_zero_timeouts() {
        let assign = v1::Assign {
            assignment_id: "a1".into(),
            attempt: Some(v1::AttemptRef {
                task_instance_id: "ti".into(),
                attempt: 2,
            }),
            run_id: "r".into(),
            argv: vec!["python3".into(), "train.py".into()],
            gpu_indices: vec![2, 5],
            timeout_ms: 0,
            kill_grace_ms: 1500,
            metrics_file: "/data/m.json".into(),
            ..Default::default()
        };
        let (attempt, launch, ctx) = launch_from_assign(&assign).unwrap();
        assert_eq!(attempt.attempt, 2);
        assert_eq!(launch.timeout, None);
        assert_eq!(launch.kill_grace, Some(Duration::from_millis(1500)));
        assert_eq!(launch.gpu_indices, vec![2, 5]);
        assert_eq!(launch.working_dir, None);
        assert_eq!(launch.system_env["TRAINYARD_METRICS_FILE"], "/data/m.json");
        assert_eq!(ctx.run_id, "r");
    }

    #[test]
    fn assign_without_attempt_or_argv_is_rejected() {
        let mut assign = v1::Assign {
            argv: vec!["true".into()],
            ..Default::default()
        };
        assert!(matches!(
            launch_from_assign(&assign),
            Err(ConvertError::MissingAttempt { .. })
        ));
        assign.attempt = Some(v1::AttemptRef::default());
        assign.argv.clear();
        assert!(matches!(
            launch_from_assign(&assign),
            Err(ConvertError::EmptyArgv { .. })
        ));
    }

    #[test]
    fn outcome_maps_to_task_finished() {
        let outcome = ExecOutcome {
            exit_code: None,
            signal: Some(15),
            status: ExecStatus::TimedOut,
            duration: Duration::from_millis(1234),
            message: Some("timed out after 1s".into()),
        };
        let mut metrics = Metrics::default();
        metrics.values.insert("auc".into(), 0.9);
        let msg = finished_to_proto(v1::AttemptRef::default(), &outcome, &metrics, Utc::now());
        assert_eq!(msg.outcome, v1::TaskOutcome::TimedOut as i32);
        assert_eq!(msg.signal, Some(15));
        assert_eq!(msg.duration_ms, 1234);
        assert_eq!(msg.metrics["auc"], 0.9);
        assert_eq!(msg.error, "timed out after 1s");
    }
}
