//! One OpenTelemetry trace per run: a `run <dag_id>` span with a
//! `task <task_id>` child for every attempt of the run's tasks.
//!
//! Owns the mapping from store records to spans ([`emit_run_trace`], pure: it
//! takes the records and a tracer) and the task that feeds it
//! ([`spawn_if_enabled`]), started only when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set (the CLI installs the OTLP exporter as the global tracer provider then).
//!
//! Why spans are built when the run ends, from the store, and not live:
//! - the timestamps that matter (attempt started/ended on the worker) are in
//!   the store, and the engine's broadcast is lossy; reading the records once
//!   the run is terminal gives every attempt, even if events were missed;
//! - the trace id must be the run id so a run's trace can be found from its
//!   id. opentelemetry 0.33's tracer always generates span ids and only takes
//!   a trace id from a parent, so the run span is parented on a remote span
//!   context (trace id = the run id's 16 bytes, span id = its first 8 bytes)
//!   and the task spans are children of the run span itself, built after it.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags,
    TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trainyard_core::ids::RunId;
use trainyard_core::state::{AttemptOutcome, RunState};

use crate::engine::{EngineEvent, EngineHandle};
use crate::store::{Attempt, ReadStore, Run, TaskInstance};

/// The variable that turns OTLP export on (read by the CLI's telemetry too).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The span context every span of a run's trace descends from: trace id = the
/// run id's bytes, span id = its first 8 bytes (never zero for a UUID v7,
/// whose first bytes are a timestamp). Sampled, so parent-based samplers keep
/// the whole trace.
pub fn run_span_context(run_id: RunId) -> SpanContext {
    let bytes = run_id.as_uuid().into_bytes();
    let mut span = [0u8; 8];
    span.copy_from_slice(&bytes[..8]);
    SpanContext::new(
        TraceId::from_bytes(bytes),
        SpanId::from_bytes(span),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

fn time(t: DateTime<Utc>) -> SystemTime {
    t.into()
}

/// Emits the trace of one (terminal) run: the run span, then one child span
/// per attempt in `attempts` (task ids looked up in `tasks`). Attempts that
/// never started are drawn from their assignment; unfinished ones end with
/// the run.
pub fn emit_run_trace<T>(tracer: &T, run: &Run, tasks: &[TaskInstance], attempts: &[Attempt])
where
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    let run_start = run.started_at.unwrap_or(run.created_at);
    let run_end = run.ended_at.unwrap_or(run.updated_at);
    let anchor = Context::new().with_remote_span_context(run_span_context(run.id));
    let run_span = SpanBuilder::from_name(format!("run {}", run.dag_id))
        .with_kind(SpanKind::Internal)
        .with_start_time(time(run_start))
        .with_attributes([
            KeyValue::new("dag_id", run.dag_id.to_string()),
            KeyValue::new("run_id", run.id.to_string()),
            KeyValue::new("state", run.state.as_str()),
        ])
        .start_with_context(tracer, &anchor);
    let run_cx = anchor.with_span(run_span);
    if run.state == RunState::Failed {
        run_cx.span().set_status(Status::error("run failed"));
    }

    for attempt in attempts {
        let task_id = tasks
            .iter()
            .find(|t| t.id == attempt.task_instance_id)
            .map_or_else(
                || attempt.task_instance_id.to_string(),
                |t| t.task_id.to_string(),
            );
        let mut attributes = vec![
            KeyValue::new("task_id", task_id.clone()),
            KeyValue::new("run_id", run.id.to_string()),
            KeyValue::new("attempt", i64::from(attempt.attempt)),
        ];
        if let Some(worker) = attempt.worker_id {
            attributes.push(KeyValue::new("worker_id", worker.to_string()));
        }
        if let Some(outcome) = attempt.outcome {
            attributes.push(KeyValue::new("outcome", outcome.as_str()));
        }
        if let Some(code) = attempt.exit_code {
            attributes.push(KeyValue::new("exit_code", i64::from(code)));
        }
        let start = attempt.started_at.unwrap_or(attempt.assigned_at);
        let end = attempt.ended_at.unwrap_or(run_end).max(start);
        let mut span = SpanBuilder::from_name(format!("task {task_id}"))
            .with_kind(SpanKind::Internal)
            .with_start_time(time(start))
            .with_attributes(attributes)
            .start_with_context(tracer, &run_cx);
        match attempt.outcome {
            Some(AttemptOutcome::Failed | AttemptOutcome::TimedOut | AttemptOutcome::Lost) => {
                let why = attempt
                    .error
                    .clone()
                    .unwrap_or_else(|| "attempt failed".into());
                span.set_status(Status::error(why));
            }
            Some(AttemptOutcome::Success) => span.set_status(Status::Ok),
            _ => {}
        }
        span.end_with_timestamp(time(end));
    }
    run_cx
        .span()
        .end_with_timestamp(time(run_end.max(run_start)));
}

/// Starts the trace emitter when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and not
/// empty); `None` otherwise, so runs cost nothing without a collector.
pub fn spawn_if_enabled(
    engine: &EngineHandle,
    store: Arc<dyn ReadStore>,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let enabled = std::env::var(ENDPOINT_VAR).is_ok_and(|v| !v.trim().is_empty());
    if !enabled {
        return None;
    }
    let events = engine.subscribe();
    Some(tokio::spawn(run(events, store, shutdown)))
}

async fn run(
    mut events: broadcast::Receiver<EngineEvent>,
    store: Arc<dyn ReadStore>,
    shutdown: CancellationToken,
) {
    let tracer = opentelemetry::global::tracer("trainyard");
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(EngineEvent::RunState { run_id, state, .. }) if state.is_terminal() => {
                if let Err(err) = export_run(&tracer, store.as_ref(), run_id).await {
                    tracing::warn!(%run_id, error = %err, "cannot build the run's trace");
                }
            }
            Ok(_) => {}
            // A missed run end loses that run's trace, nothing else.
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "trace emitter fell behind engine events");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn export_run<T>(tracer: &T, store: &dyn ReadStore, run_id: RunId) -> crate::store::Result<()>
where
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    let run = store.get_run(run_id).await?;
    let tasks = store.task_instances(run_id).await?;
    let attempts = store.run_attempts(run_id).await?;
    emit_run_trace(tracer, &run, &tasks, &attempts);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use serde_json::json;
    use trainyard_core::ids::{AttemptId, DagId, DagVersionId, TaskId, TaskInstanceId, WorkerId};
    use trainyard_core::state::{TaskState, TriggerKind};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn fake_run() -> Run {
        Run {
            id: RunId::new(),
            dag_id: DagId::new("train"),
            version_id: DagVersionId::new(1),
            logical_date: None,
            trigger: TriggerKind::Manual,
            params: json!({}),
            state: RunState::Failed,
            idempotency_key: None,
            created_at: at(0),
            started_at: Some(at(1)),
            ended_at: Some(at(100)),
            updated_at: at(100),
        }
    }

    fn task(run: &Run, id: i64, task_id: &str) -> TaskInstance {
        TaskInstance {
            id: TaskInstanceId::new(id),
            run_id: run.id,
            dag_id: run.dag_id.clone(),
            task_id: TaskId::new(task_id),
            state: TaskState::Success,
            attempt: 1,
            max_attempts: 2,
            priority: 0,
            pool: "default".into(),
            resources: json!({}),
            ready_at: None,
            queued_at: None,
            next_retry_at: None,
            started_at: None,
            ended_at: None,
            created_at: at(0),
            updated_at: at(0),
        }
    }

    fn attempt(run: &Run, ti: i64, n: i32, outcome: AttemptOutcome, span: (i64, i64)) -> Attempt {
        Attempt {
            id: AttemptId::new(ti * 10 + i64::from(n)),
            task_instance_id: TaskInstanceId::new(ti),
            run_id: run.id,
            attempt: n,
            worker_id: Some(WorkerId::new()),
            gpus: vec![],
            outcome: Some(outcome),
            exit_code: Some(i32::from(outcome != AttemptOutcome::Success)),
            error: None,
            log_location: None,
            assigned_at: at(span.0),
            started_at: Some(at(span.0)),
            ended_at: Some(at(span.1)),
        }
    }

    #[test]
    fn every_task_span_is_a_child_of_the_run_span_in_the_run_id_trace() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer("trainyard");
        let run = fake_run();
        let tasks = [task(&run, 1, "prep"), task(&run, 2, "train")];
        let attempts = [
            attempt(&run, 1, 1, AttemptOutcome::Success, (2, 10)),
            attempt(&run, 2, 1, AttemptOutcome::Failed, (11, 50)),
            attempt(&run, 2, 2, AttemptOutcome::Success, (51, 99)),
        ];

        emit_run_trace(&tracer, &run, &tasks, &attempts);
        let spans = exporter.get_finished_spans().unwrap();

        let anchor = run_span_context(run.id);
        let trace_id = TraceId::from_bytes(run.id.as_uuid().into_bytes());
        assert_eq!(anchor.trace_id(), trace_id);
        let root = spans.iter().find(|s| s.name == "run train").unwrap();
        assert_eq!(root.span_context.trace_id(), trace_id);
        assert_eq!(root.parent_span_id, anchor.span_id());
        assert_eq!(root.start_time, time(at(1)));
        assert_eq!(root.end_time, time(at(100)));
        assert!(
            root.attributes
                .contains(&KeyValue::new("run_id", run.id.to_string()))
        );
        assert!(root.attributes.contains(&KeyValue::new("state", "failed")));

        let task_spans: Vec<_> = spans
            .iter()
            .filter(|s| s.name.starts_with("task "))
            .collect();
        assert_eq!(task_spans.len(), 3);
        for span in &task_spans {
            assert_eq!(span.span_context.trace_id(), trace_id);
            assert_eq!(span.parent_span_id, root.span_context.span_id());
        }
        let names: Vec<_> = task_spans.iter().map(|s| s.name.to_string()).collect();
        assert_eq!(names, ["task prep", "task train", "task train"]);
        assert_eq!(task_spans[1].start_time, time(at(11)));
        assert_eq!(task_spans[1].end_time, time(at(50)));
        assert!(matches!(task_spans[1].status, Status::Error { .. }));
        assert!(
            task_spans[1]
                .attributes
                .contains(&KeyValue::new("exit_code", 1_i64))
        );
    }
}
