//! Task logs over HTTP: the whole log of an attempt, and a live stream of
//! new lines (Server-Sent Events).
//!
//! A stream is only opened for a task that exists and has not finished, and
//! counts against the follower limits (`logs::follow`): 429 when the caller's
//! address has too many open, 503 when the scheduler has. A finished task's
//! stream replays its stored log and ends. A live stream ends itself (event
//! `end`) as soon as the engine commits its task's end (where the engine
//! runs in this process), and otherwise at the latest at the next
//! `FollowLimits::recheck` while no line arrives, so nothing is held for a
//! task nobody can write to.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Interval, MissedTickBehavior};
use trainyard_core::ids::{RunId, TaskInstanceId};

use super::client::ClientAddr;
use super::openapi as doc;
use super::{ApiError, ApiResult, AppState};
use crate::engine::Ended;
use crate::logs::{FollowError, Follower, LogError};
use crate::store::{ReadStore, TaskInstance};

/// How long a refused follower is asked to wait before trying again.
const FOLLOW_RETRY_AFTER: Duration = Duration::from_secs(10);

fn run_id(raw: &str) -> ApiResult<RunId> {
    raw.parse()
        .map_err(|e| ApiError::bad_request(format!("bad run id {raw:?}: {e}")))
}

/// The task instance of `run` named `task`: 404 naming the run when the run
/// does not exist, naming the task when the run has no such task.
async fn find_task(state: &AppState, run: RunId, task: &str) -> ApiResult<TaskInstance> {
    let tasks = state.store.task_instances(run).await?;
    if let Some(t) = tasks.into_iter().find(|t| t.task_id.as_str() == task) {
        return Ok(t);
    }
    // Says "run … not found" when that is why.
    state.store.get_run(run).await?;
    Err(ApiError::not_found(format!(
        "run {run} has no task {task:?}; GET /api/v1/runs/{run} lists its tasks"
    )))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// Attempt number (1 = first try); default: the latest.
    attempt: Option<i32>,
}

/// The attempt asked for, which must exist, or the task's latest attempt
/// (1 for a task not tried yet: its log is empty until it starts).
fn pick_attempt(ti: &TaskInstance, asked: Option<i32>) -> ApiResult<i32> {
    match asked {
        None => Ok(ti.attempt.max(1)),
        Some(a) if (1..=ti.attempt).contains(&a) => Ok(a),
        Some(a) => {
            let has = match ti.attempt {
                0 => "it has not started yet".to_owned(),
                1 => "it has only attempt 1".to_owned(),
                n => format!("its attempts are 1 to {n}"),
            };
            Err(ApiError::not_found(format!(
                "task {:?} of run {} has no attempt {a}: {has}",
                ti.task_id.as_str(),
                ti.run_id
            )))
        }
    }
}

/// The attempt's stored log; empty when the attempt printed nothing yet.
async fn stored_log(state: &AppState, ti: &TaskInstance, attempt: i32) -> ApiResult<String> {
    match state
        .logs
        .read(ti.run_id, ti.task_id.as_str(), attempt)
        .await
    {
        Ok(text) => Ok(text),
        Err(LogError::NotFound { .. }) => Ok(String::new()),
        Err(e) => Err(e.into()),
    }
}

/// The full log of an attempt (default: the latest) as plain text.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/tasks/{task_id}/logs", tag = "logs",
    params(("run_id" = String, Path, description = "Run id"), ("task_id" = String, Path, description = "Task id"), LogQuery),
    responses((status = 200, body = String, content_type = "text/plain",
            headers(("x-trainyard-attempt" = i32, description = "The attempt served"))),
        (status = 400, body = doc::ErrorBody),
        (status = 404, description = "Unknown run, task or attempt", body = doc::ErrorBody)))]
pub(super) async fn task_log(
    State(state): State<AppState>,
    Path((raw, task)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let id = run_id(&raw)?;
    let ti = find_task(&state, id, &task).await?;
    let attempt = pick_attempt(&ti, q.attempt)?;
    let text = stored_log(&state, &ti, attempt).await?;
    Ok((
        [
            ("content-type", "text/plain; charset=utf-8"),
            ("x-trainyard-attempt", &attempt.to_string()),
        ],
        text,
    )
        .into_response())
}

/// A stored line replayed for a finished task (the file keeps no stream).
#[derive(Serialize)]
struct StoredLine<'a> {
    run_id: RunId,
    task_id: &'a str,
    attempt: i32,
    line: &'a str,
}

/// `event: end`: the task finished; nothing more will come.
#[derive(Serialize)]
struct End<'a> {
    state: &'a str,
    attempt: i32,
}

fn end_event(ti: &TaskInstance) -> Event {
    let data = serde_json::to_string(&End {
        state: ti.state.as_str(),
        attempt: ti.attempt,
    })
    .unwrap_or_default();
    Event::default().event("end").data(data)
}

/// The live stream's state: the follower, and when to look at the task again.
struct Live {
    follower: Follower,
    store: std::sync::Arc<dyn ReadStore>,
    ti: TaskInstanceId,
    recheck: Interval,
    /// The engine's committed ends, where it runs here: the stream ends as
    /// soon as its task does instead of at the next `recheck`.
    ends: Option<broadcast::Receiver<Ended>>,
    ended: bool,
}

/// Resolves when `ends` says task `ti` ended or may have (it lagged), and
/// never when there is nothing to listen to.
async fn task_end(ends: &mut Option<broadcast::Receiver<Ended>>, ti: TaskInstanceId) {
    let Some(rx) = ends.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(Ended::Task(t)) if t == ti => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => {
                *ends = None;
                return std::future::pending().await;
            }
        }
    }
}

impl Live {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if self.ended {
            return None;
        }
        loop {
            tokio::select! {
                r = self.follower.recv() => {
                    let event = match r {
                        Ok(line) => Event::default()
                            .event("line")
                            .data(serde_json::to_string(&line).unwrap_or_default()),
                        Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
                        Err(RecvError::Closed) => return None,
                    };
                    return Some((Ok(event), self));
                }
                _ = async {
                    tokio::select! {
                        _ = self.recheck.tick() => {}
                        _ = task_end(&mut self.ends, self.ti) => {}
                    }
                } => match self.store.get_task_instance(self.ti).await {
                    Ok(ti) if ti.state.is_terminal() => {
                        self.ended = true;
                        return Some((Ok(end_event(&ti)), self));
                    }
                    Ok(_) => {}
                    // Its run was deleted: nothing more can come.
                    Err(e) if e.is_not_found() => return None,
                    // The store is unreachable for now; keep following.
                    Err(e) => tracing::debug!(error = %e, "log stream could not check its task"),
                },
            }
        }
    }
}

/// A refusal by the follower limits: 429 (this client) or 503 (everyone),
/// with `Retry-After`.
fn refused(err: FollowError) -> Response {
    let (status, code) = match err {
        FollowError::ClientLimit { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
        FollowError::TotalLimit { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let body = serde_json::json!({ "error": { "code": code, "message": err.to_string() } });
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(FOLLOW_RETRY_AFTER.as_secs()),
    );
    resp
}

/// New log lines of a task as Server-Sent Events: `event: line` with one
/// JSON line per event, `event: lagged` with how many lines a slow reader
/// missed, and `event: end` (`{"state", "attempt"}`) when the task has
/// finished. For a finished task the stored log of its latest attempt is
/// sent as `line` events (without `stream`), then `end`.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/tasks/{task_id}/logs/stream", tag = "logs",
    params(("run_id" = String, Path, description = "Run id"), ("task_id" = String, Path, description = "Task id")),
    responses((status = 200, body = doc::LogEvent, content_type = "text/event-stream",
            description = "Server-Sent Events, each as `LogEvent` describes"),
        (status = 400, body = doc::ErrorBody),
        (status = 404, description = "Unknown run or task", body = doc::ErrorBody),
        (status = 429, description = "This client has too many live log streams open", body = doc::ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The scheduler serves its limit of live log streams", body = doc::ErrorBody,
            headers(("retry-after" = u64, description = "Seconds to wait")))))]
pub(super) async fn task_log_stream(
    State(state): State<AppState>,
    client: ClientAddr,
    Path((raw, task)): Path<(String, String)>,
) -> Result<Response, Response> {
    let id = run_id(&raw).map_err(IntoResponse::into_response)?;
    let ti = find_task(&state, id, &task)
        .await
        .map_err(IntoResponse::into_response)?;
    if ti.state.is_terminal() {
        let text = if ti.attempt >= 1 {
            stored_log(&state, &ti, ti.attempt)
                .await
                .map_err(IntoResponse::into_response)?
        } else {
            String::new()
        };
        return Ok(sse(replay(ti, text)));
    }
    let follower = state
        .logs
        .follow(id, &task, client.key())
        .map_err(refused)?;
    let every = state.logs.follow_limits().recheck;
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    recheck.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let live = Live {
        follower,
        store: state.store.clone(),
        ti: ti.id,
        recheck,
        ends: state.control.ends(),
        ended: false,
    };
    Ok(sse(futures::stream::unfold(live, Live::next)))
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// A finished task's stored log as `line` events, one at a time, then `end`.
fn replay(ti: TaskInstance, text: String) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (ti, text, 0usize, false),
        |(ti, text, at, done)| async move {
            if done {
                return None;
            }
            let rest = &text[at..];
            if rest.is_empty() {
                let end = end_event(&ti);
                return Some((Ok(end), (ti, text, at, true)));
            }
            let (line, used) = match rest.find('\n') {
                Some(i) => (&rest[..i], i + 1),
                None => (rest, rest.len()),
            };
            let data = serde_json::to_string(&StoredLine {
                run_id: ti.run_id,
                task_id: ti.task_id.as_str(),
                attempt: ti.attempt,
                line,
            })
            .unwrap_or_default();
            let event = Event::default().event("line").data(data);
            Some((Ok(event), (ti, text, at + used, false)))
        },
    )
}
