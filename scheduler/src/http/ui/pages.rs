//! The UI's pages (GET handlers): DAG list, DAG page with graph, grid and
//! metric charts, trigger form, runs, run, task with live log, workers.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::Utc;
use maud::{Markup, html};
use serde::Deserialize;
use trainyard_core::dag::{DagSpec, ParamValue};
use trainyard_core::ids::{RunId, TaskId, WorkerId};

use super::layout::{Ctx, badge, bytes, duration, when};
use super::{UiError, UiResult, svg};
use crate::http::AppState;
use crate::http::auth::Caller;
use crate::http::read::{self, DagSummary};
use crate::store::{ReadStore, Run, RunFilter, TaskInstance};

type Who = Option<Extension<Caller>>;

fn ctx(headers: &HeaderMap, who: Who) -> Ctx {
    Ctx::new(headers, who.map(|w| w.0))
}

fn parse_run(raw: &str) -> UiResult<RunId> {
    RunId::from_str(raw).map_err(|e| UiError::BadRequest(format!("bad run id {raw:?}: {e}")))
}

fn pause_form(ctx: &Ctx, d: &DagSummary) -> Markup {
    html! {
        @if ctx.can_operate() {
            form class="inline" method="post" action={"/dags/" (d.id) (if d.paused { "/resume" } else { "/pause" })} {
                (ctx.csrf_field())
                button type="submit" class={"toggle " (if d.paused { "off" } else { "on" })}
                    title=(if d.paused { "Paused: click to resume" } else { "Active: click to pause" }) {
                    (if d.paused { "paused" } else { "active" })
                }
            }
        } @else {
            span class="muted" { (if d.paused { "paused" } else { "active" }) }
        }
    }
}

/// `/`: every DAG with recent runs, schedule, next run, pause toggle, parse errors.
pub(super) async fn dag_list(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Who,
) -> UiResult<Response> {
    let ctx = ctx(&headers, who);
    let dags = read::all_dags(state.store.as_ref(), Utc::now()).await?;
    Ok(ctx.page("DAGs", render_dag_list(&ctx, &dags)))
}

pub(super) fn render_dag_list(ctx: &Ctx, dags: &[DagSummary]) -> Markup {
    html! {
        h1 { "DAGs" }
        @if dags.is_empty() { p class="muted" { "No DAGs loaded yet. Put DAG files in the --dags folder." } }
        table class="dags" {
            thead { tr { th { "DAG" } th { "Schedule" } th { "Next run" } th { "Recent runs" } th { "State" } th {} } }
            tbody {
                @for d in dags {
                    tr id={"dag-" (d.id)} class=(if d.active { "" } else { "inactive" }) {
                        td {
                            a class="dag-id" href={"/dags/" (d.id)} { (d.id) }
                            @if let Some(desc) = &d.description { div class="desc" { (desc) } }
                            @if !d.tags.is_empty() { div { @for t in &d.tags { span class="tag" { (t) } } } }
                            @if let Some(err) = &d.parse_error {
                                details class="parse-error" { summary { "file does not parse" } pre { (err) } }
                            }
                        }
                        td { @if let Some(s) = &d.schedule { code { (s) } div class="muted" { (d.schedule_description.as_deref().unwrap_or("")) } } @else { span class="muted" { "manual" } } }
                        td { (when(d.next_run)) }
                        td class="dots" {
                            @for r in d.recent_runs.iter().rev() {
                                a class={"dot st-" (r.state)} href={"/runs/" (r.id)} title={(r.state) " · " (r.created_at.format("%Y-%m-%d %H:%M:%S"))} {}
                            }
                        }
                        td { (pause_form(ctx, d)) }
                        td { @if ctx.can_operate() && d.current_version_id.is_some() { a class="button" href={"/dags/" (d.id) "/trigger"} { "Trigger" } } }
                    }
                }
            }
        }
    }
}

/// Runs × tasks of a DAG, oldest run left, coloured by task state.
pub(super) struct Grid {
    pub tasks: Vec<String>,
    /// Oldest first, with their task instances by task id.
    pub runs: Vec<(Run, BTreeMap<String, TaskInstance>)>,
}

pub(super) async fn load_grid(
    store: &dyn ReadStore,
    spec: Option<&DagSpec>,
    dag: &str,
    limit: u32,
) -> UiResult<Grid> {
    let page = store
        .list_runs(RunFilter {
            dag_id: Some(read::parse_dag_id(dag)?),
            limit,
            ..RunFilter::default()
        })
        .await
        .map_err(crate::http::ApiError::from)?;
    let mut tasks: Vec<String> = spec
        .map(DagSpec::task_ids_in_topological_order)
        .unwrap_or_default();
    let mut known: BTreeSet<String> = tasks.iter().cloned().collect();
    let mut runs = Vec::with_capacity(page.runs.len());
    for run in page.runs.into_iter().rev() {
        let tis = store
            .task_instances(run.id)
            .await
            .map_err(crate::http::ApiError::from)?;
        let by_task: BTreeMap<String, TaskInstance> = tis
            .into_iter()
            .map(|t| (t.task_id.to_string(), t))
            .collect();
        for t in by_task.keys() {
            // Tasks of older versions that the current spec no longer has.
            if known.insert(t.clone()) {
                tasks.push(t.clone());
            }
        }
        runs.push((run, by_task));
    }
    Ok(Grid { tasks, runs })
}

pub(super) fn render_grid(grid: &Grid) -> Markup {
    html! {
        div class="grid-wrap" {
            table class="grid" {
                thead {
                    tr {
                        th { "task \\ run" }
                        @for (run, _) in &grid.runs {
                            th { a class={"dot st-" (run.state)} href={"/runs/" (run.id)} title={(run.state) " · " (run.created_at.format("%m-%d %H:%M:%S"))} {} }
                        }
                    }
                }
                tbody {
                    @for task in &grid.tasks {
                        tr {
                            th class="task" { (task) }
                            @for (run, tis) in &grid.runs {
                                @match tis.get(task) {
                                    Some(ti) => td { a class={"cell st-" (ti.state)} href={"/runs/" (run.id) "/tasks/" (task)} title={(task) ": " (ti.state)} {} },
                                    None => td { span class="cell st-none" {} },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct DagQuery {
    run: Option<String>,
    limit: Option<u32>,
}

/// `/dags/{id}`: summary, graph coloured by the selected run, grid, metric charts.
pub(super) async fn dag_page(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<DagQuery>,
    headers: HeaderMap,
    who: Who,
) -> UiResult<Response> {
    let ctx = ctx(&headers, who);
    let detail = read::dag_detail(&state, &raw).await?;
    let spec: Option<DagSpec> = detail
        .spec
        .clone()
        .and_then(|s| serde_json::from_value(s).ok());
    let grid = load_grid(state.store.as_ref(), spec.as_ref(), &raw, 25).await?;
    let selected = match &q.run {
        Some(r) => Some(parse_run(r)?),
        None => grid.runs.last().map(|(r, _)| r.id),
    };
    let states: BTreeMap<String, String> = match selected {
        Some(run) => state
            .store
            .task_instances(run)
            .await
            .map_err(crate::http::ApiError::from)?
            .into_iter()
            .map(|t| (t.task_id.to_string(), t.state.to_string()))
            .collect(),
        None => BTreeMap::new(),
    };
    let charts = metric_charts(state.store.as_ref(), spec.as_ref(), &raw, &grid).await?;
    let d = &detail.dag;
    let run_str = selected.map(|r| r.to_string());
    let body = html! {
        h1 { (d.id) " " (pause_form(&ctx, d)) }
        @if let Some(desc) = &d.description { p class="desc" { (desc) } }
        @if let Some(err) = &d.parse_error { div class="parse-error" { strong { "The DAG file does not parse; the last good version stays in use." } pre { (err) } } }
        dl class="facts" {
            dt { "Schedule" } dd { @if let Some(s) = &d.schedule { code { (s) } " " (d.schedule_description.as_deref().unwrap_or("")) " (" (d.timezone.as_deref().unwrap_or("UTC")) ")" } @else { "manual" } }
            dt { "Next run" } dd { (when(d.next_run)) }
            dt { "File" } dd { (d.file_path.as_deref().unwrap_or("—")) }
        }
        p {
            @if ctx.can_operate() && spec.is_some() { a class="button" href={"/dags/" (d.id) "/trigger"} { "Trigger a run" } " " }
            a href={"/dags/" (d.id) "/grid?limit=200"} { "Full grid" } " · "
            a href={"/runs?dag_id=" (d.id)} { "Runs" }
        }
        h2 { "Graph" @if let Some(r) = &run_str { " " small class="muted" { "run " a href={"/runs/" (r)} { (r) } } } }
        (svg::graph(&detail.graph, &states, run_str.as_deref()))
        h2 { "Runs" }
        (render_grid(&grid))
        @if !charts.is_empty() { h2 { "Metrics across runs" } div class="charts" { @for c in &charts { (c) } } }
    };
    Ok(ctx.page(d.id.as_str(), body))
}

/// `/dags/{id}/grid?limit=N`: the runs grid alone (up to 1000 runs).
pub(super) async fn grid_page(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<DagQuery>,
    headers: HeaderMap,
    who: Who,
) -> UiResult<Response> {
    let ctx = ctx(&headers, who);
    let detail = read::dag_detail(&state, &raw).await?;
    let spec: Option<DagSpec> = detail.spec.and_then(|s| serde_json::from_value(s).ok());
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let grid = load_grid(state.store.as_ref(), spec.as_ref(), &raw, limit).await?;
    let body = html! {
        h1 { a href={"/dags/" (raw)} { (raw) } " — runs grid" }
        p class="muted" { (grid.runs.len()) " runs, oldest left" }
        (render_grid(&grid))
    };
    Ok(ctx.page("Grid", body))
}

/// A `when` condition comparing a metric with a number or param:
/// (task, metric, operator, threshold).
fn gates(spec: &DagSpec) -> Vec<(String, String, String, f64)> {
    let Ok(re) = regex::Regex::new(
        r"metrics\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_]+)\s*(>=|<=|>|<|==)\s*(params\.([A-Za-z0-9_]+)|-?[0-9]+(?:\.[0-9]+)?)",
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in spec.tasks.values() {
        let Some(cond) = &t.when else { continue };
        for c in re.captures_iter(cond) {
            let value = match c.get(5) {
                Some(p) => match spec.params.get(p.as_str()) {
                    Some(ParamValue::Float(f)) => Some(*f),
                    Some(ParamValue::Int(i)) => Some(*i as f64),
                    _ => None,
                },
                None => c[4].parse().ok(),
            };
            if let Some(v) = value {
                out.push((
                    c[1].to_owned(),
                    c[2].to_owned(),
                    format!("{} gate {}", t.id, &c[3]),
                    v,
                ));
            }
        }
    }
    out
}

async fn metric_charts(
    store: &dyn ReadStore,
    spec: Option<&DagSpec>,
    dag: &str,
    grid: &Grid,
) -> UiResult<Vec<Markup>> {
    let mut names = BTreeSet::new();
    for (run, _) in grid.runs.iter().rev().take(5) {
        for m in store
            .run_metrics(run.id)
            .await
            .map_err(crate::http::ApiError::from)?
        {
            names.insert((m.task_id.to_string(), m.name));
        }
    }
    let gates = spec.map(gates).unwrap_or_default();
    let dag_id = read::parse_dag_id(dag)?;
    let mut out = Vec::new();
    for (task, name) in names.into_iter().take(8) {
        let Ok(task_id) = TaskId::from_str(&task) else {
            continue;
        };
        let series = store
            .metric_series(&dag_id, &task_id, &name, 50)
            .await
            .map_err(crate::http::ApiError::from)?;
        let points: Vec<svg::Point> = series
            .iter()
            .map(|p| svg::Point {
                label: p.recorded_at.format("%Y-%m-%d %H:%M").to_string(),
                value: p.value,
                href: format!("/runs/{}", p.run_id),
            })
            .collect();
        let gate = gates.iter().find(|(t, m, _, _)| *t == task && *m == name);
        out.push(svg::line_chart(
            &format!("{task}.{name}"),
            &points,
            gate.map(|(_, _, label, v)| (*v, label.as_str())),
        ));
    }
    Ok(out)
}

/// `/dags/{id}/trigger`: a form built from the DAG's declared params.
pub(super) async fn trigger_page(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    who: Who,
) -> UiResult<Response> {
    let ctx = ctx(&headers, who);
    let detail = read::dag_detail(&state, &raw).await?;
    let spec: DagSpec = detail
        .spec
        .and_then(|s| serde_json::from_value(s).ok())
        .ok_or_else(|| UiError::BadRequest(format!("DAG {raw} has no loadable version")))?;
    Ok(trigger_form(&ctx, &spec, &[], None))
}

pub(super) fn trigger_form(
    ctx: &Ctx,
    spec: &DagSpec,
    given: &[(String, String)],
    error: Option<&str>,
) -> Response {
    let value_of = |name: &str, default: &ParamValue| {
        given
            .iter()
            .find(|(k, _)| k.strip_prefix("p.") == Some(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| match default {
                ParamValue::String(s) => s.clone(),
                other => other.to_json().to_string(),
            })
    };
    let body = html! {
        h1 { "Trigger " a href={"/dags/" (spec.id)} { (spec.id) } }
        @if let Some(e) = error { p class="error" { (e) } }
        form class="trigger" method="post" action={"/dags/" (spec.id) "/trigger"} {
            (ctx.csrf_field())
            @if spec.params.is_empty() { p class="muted" { "This DAG declares no params." } }
            @for (name, default) in &spec.params {
                @let id = format!("p-{name}");
                @let field = format!("p.{name}");
                @let value = value_of(name, default);
                div class="field" {
                    label for=(id) { (name) " " span class="type" { (default.type_name()) } }
                    @match default {
                        ParamValue::Bool(_) => select id=(id) name=(field) {
                            option value="true" selected[value == "true"] { "true" }
                            option value="false" selected[value == "false"] { "false" }
                        },
                        ParamValue::Int(_) => input id=(id) type="number" step="1" name=(field) value=(value);,
                        ParamValue::Float(_) => input id=(id) type="number" step="any" name=(field) value=(value);,
                        ParamValue::String(_) => input id=(id) type="text" name=(field) value=(value);,
                    }
                    span class="muted" { "default " (match default { ParamValue::String(s) => s.clone(), o => o.to_json().to_string() }) }
                }
            }
            button id="trigger-submit" type="submit" { "Trigger run" }
        }
    };
    ctx.page(&format!("Trigger {}", spec.id), body)
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RunsQuery {
    dag_id: Option<String>,
    before: Option<String>,
}

/// `/runs`: newest runs across DAGs, 50 per page.
pub(super) async fn runs_page(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
    headers: HeaderMap,
    who: Who,
) -> UiResult<Response> {
    let ctx = ctx(&headers, who);
    let mut filter = RunFilter {
        limit: 50,
        ..RunFilter::default()
    };
    if let Some(d) = q.dag_id.as_deref().filter(|d| !d.is_empty()) {
        filter.dag_id = Some(read::parse_dag_id(d)?);
    }
    if let Some(b) = q.before.as_deref().filter(|b| !b.is_empty()) {
        filter.before = Some(parse_run(b)?);
    }
    let page = state
        .store
        .list_runs(filter)
        .await
        .map_err(crate::http::ApiError::from)?;
    let body = html! {
        h1 { "Runs" @if let Some(d) = &q.dag_id { " of " a href={"/dags/" (d)} { (d) } } }
        table class="runs" {
            thead { tr { th { "Run" } th { "DAG" } th { "State" } th { "Trigger" } th { "Created" } th { "Duration" } } }
            tbody {
                @for r in &page.runs {
                    tr {
                        td { a href={"/runs/" (r.id)} { code { (r.id) } } }
                        td { a href={"/dags/" (r.dag_id)} { (r.dag_id) } }
                        td { (badge(r.state.as_str())) }
                        td { (r.trigger) }
                        td { (when(Some(r.created_at))) }
                        td { (duration(r.started_at, r.ended_at)) }
                    }
                }
            }
        }
        @if let Some(next) = page.next_cursor {
            p { a href={"/runs?before=" (next) (q.dag_id.as_deref().map(|d| format!("&dag_id={d}")).unwrap_or_default())} { "Older runs →" } }
        }
    };
    Ok(ctx.page("Runs", body))
}

async fn worker_names(store: &dyn ReadStore) -> UiResult<BTreeMap<WorkerId, String>> {
    Ok(store
        .list_workers()
        .await
        .map_err(crate::http::ApiError::from)?
        .into_iter()
        .map(|w| (w.id, w.name))
        .collect())
}

/// `/runs/{id}`: the run's tasks, updated live by `app.js` polling the API.
pub(super) async fn run_page(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    who: Who,
) -> UiResult<Response> {
    let ctx = ctx(&headers, who);
    let id = parse_run(&raw)?;
    let store = state.store.as_ref();
    let api = |e| UiError::Api(crate::http::ApiError::from(e));
    let run = store.get_run(id).await.map_err(api)?;
    let tasks = store.task_instances(id).await.map_err(api)?;
    let attempts = store.run_attempts(id).await.map_err(api)?;
    let workers = worker_names(store).await?;
    let reasons = crate::http::api::task_reasons(&state, id, &tasks)
        .await
        .map_err(UiError::Api)?;
    let run_waits = if run.state == trainyard_core::state::RunState::Queued {
        state.control.run_wait_reason(id).await
    } else {
        None
    };
    let detail = read::dag_detail(&state, run.dag_id.as_str()).await.ok();
    let states: BTreeMap<String, String> = tasks
        .iter()
        .map(|t| (t.task_id.to_string(), t.state.to_string()))
        .collect();
    let params = serde_json::to_string_pretty(&run.params).unwrap_or_default();
    let now = Utc::now();
    let task_order: Vec<String> = tasks.iter().map(|t| t.task_id.to_string()).collect();
    let spans = timeline_spans(&tasks, &attempts, now);
    // Each task's metrics as its latest attempt reported them.
    let mut metrics: BTreeMap<String, BTreeMap<String, (i32, f64)>> = BTreeMap::new();
    for m in store.run_metrics(id).await.map_err(api)? {
        let slot = metrics
            .entry(m.task_id.to_string())
            .or_default()
            .entry(m.name)
            .or_insert((m.attempt, m.value));
        if m.attempt >= slot.0 {
            *slot = (m.attempt, m.value);
        }
    }
    let artifacts = store.run_artifacts(id).await.map_err(api)?;
    let any_failed = tasks
        .iter()
        .any(|t| t.state == trainyard_core::state::TaskState::Failed);
    let body = html! {
        h1 { "Run of " a href={"/dags/" (run.dag_id) "?run=" (run.id)} { (run.dag_id) } " " span id="run-state" data-run=(run.id) class={"badge st-" (run.state)} { (run.state) } }
        dl class="facts" {
            dt { "Run id" } dd { code { (run.id) } }
            dt { "Trigger" } dd { (run.trigger) }
            dt { "Logical date" } dd { (when(run.logical_date)) }
            dt { "Started" } dd id="run-started" { (when(run.started_at)) }
            dt { "Ended" } dd id="run-ended" { (when(run.ended_at)) }
            dt { "Duration" } dd id="run-duration" { (duration(run.started_at, run.ended_at.or(run.started_at.map(|_| now)))) @if run.ended_at.is_none() && run.started_at.is_some() { " so far" } }
            dt { "Params" } dd { pre class="params" { (params) } }
            @if let Some(why) = &run_waits { dt { "Waiting because" } dd class="reason" { (why) } }
        }
        @if ctx.can_operate() && !run.state.is_terminal() {
            form id="cancel-run" class="inline" method="post" action={"/runs/" (run.id) "/cancel"} { (ctx.csrf_field()) button class="danger" type="submit" { "Cancel run" } }
        }
        @if ctx.can_operate() && any_failed {
            form id="clear-failed" class="inline" method="post" action={"/runs/" (run.id) "/clear-failed"}
                data-confirm="Run every failed task of this run and its downstream tasks again?" {
                (ctx.csrf_field()) button type="submit" title="Run every failed task and its downstream tasks again" { "Clear failed" }
            }
        }
        @if let Some(d) = &detail { (svg::graph(&d.graph, &states, Some(&run.id.to_string()))) }
        h2 { "Timeline" }
        div class="timeline-wrap" id="timeline" { (svg::timeline(&task_order, &spans)) }
        h2 { "Tasks" }
        table class="tasks" id="tasks" {
            thead { tr { th { "Task" } th { "State" } th { "Attempt" } th { "Worker" } th { "GPUs" } th { "Duration" } th { "Metrics" } th { "Why (waiting, skipped or failed)" } th {} } }
            tbody {
                @for t in &tasks {
                    @let cur = attempts.iter().filter(|a| a.task_instance_id == t.id).max_by_key(|a| a.attempt);
                    tr data-task=(t.task_id) {
                        td { a href={"/runs/" (run.id) "/tasks/" (t.task_id)} { (t.task_id) } }
                        td class="state" { (badge(t.state.as_str())) }
                        td class="attempt" { (t.attempt) " / " (t.max_attempts) }
                        td class="worker" { (cur.and_then(|a| a.worker_id).and_then(|w| workers.get(&w)).map_or("", String::as_str)) }
                        td class="gpus" { (cur.map(|a| a.gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",")).unwrap_or_default()) }
                        td class="duration" { (duration(t.started_at, t.ended_at)) }
                        td class="metrics" {
                            @if let Some(ms) = metrics.get(t.task_id.as_str()) {
                                @for (name, (_, v)) in ms { span class="metric" { (name) " = " (v) } " " }
                            }
                        }
                        td class="wait muted" {
                            (reasons.get(t.task_id.as_str()).map_or("", String::as_str))
                            @if t.state == trainyard_core::state::TaskState::Failed {
                                @if let Some(e) = cur.and_then(|a| a.error.as_deref()) { span class="error" { (e) } }
                            }
                        }
                        td {
                            @if ctx.can_operate() && t.state.is_terminal() {
                                form class="inline" method="post" action={"/runs/" (run.id) "/tasks/" (t.task_id) "/clear"} {
                                    (ctx.csrf_field()) button class="small" type="submit" title="Run this task and its downstream tasks again" { "Clear" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Artifacts" }
        @if artifacts.is_empty() { p class="muted" id="no-artifacts" { "No task of this run stored outputs." } }
        @else {
            table class="artifacts" id="artifacts" {
                thead { tr { th { "Task" } th { "Attempt" } th { "Name" } th { "Size" } th { "SHA-256" } th { "Stored at" } } }
                tbody {
                    @for a in &artifacts {
                        tr {
                            td { a href={"/runs/" (run.id) "/tasks/" (a.task_id)} { (a.task_id) } }
                            td { (a.attempt) }
                            td class="name" { (artifact_name(&a.key)) }
                            td class="size" { (size(a.size)) }
                            td class="sha" { code title=(a.sha256) { (a.sha256.get(..12).unwrap_or(&a.sha256)) "…" } }
                            td class="uri" {
                                // Only web addresses are links: a browser cannot open a
                                // worker's `file://` path or an `s3://` key.
                                @if a.uri.starts_with("https://") || a.uri.starts_with("http://") {
                                    a href=(a.uri) download { "download" }
                                } @else { code { (a.uri) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(ctx.page("Run", body))
}

/// The part of an artifact key after the attempt's `out/` folder.
fn artifact_name(key: &str) -> &str {
    key.split_once("/out/").map_or(key, |(_, name)| name)
}

/// A byte count for people: B, KiB, MiB, GiB.
fn size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The timeline's bars: each attempt from its start (or assignment) to its
/// end (or `now` while it runs), and between two attempts of a task the
/// wait before the retry.
fn timeline_spans(
    tasks: &[TaskInstance],
    attempts: &[crate::store::Attempt],
    now: chrono::DateTime<Utc>,
) -> Vec<svg::Span> {
    let mut spans = Vec::new();
    for t in tasks {
        let mut mine: Vec<&crate::store::Attempt> = attempts
            .iter()
            .filter(|a| a.task_instance_id == t.id)
            .collect();
        mine.sort_by_key(|a| a.attempt);
        let mut prev_end = None;
        for a in mine {
            let start = a.started_at.unwrap_or(a.assigned_at);
            if let Some(prev) = prev_end.filter(|p| *p < start) {
                spans.push(svg::Span {
                    task: t.task_id.to_string(),
                    start: prev,
                    end: start,
                    kind: "wait".into(),
                    label: format!(
                        "{}: waited {} before attempt {}",
                        t.task_id,
                        duration(Some(prev), Some(start)),
                        a.attempt
                    ),
                });
            }
            let end = a.ended_at.unwrap_or(now);
            let kind = a.outcome.map_or("running", |o| o.as_str()).to_owned();
            spans.push(svg::Span {
                task: t.task_id.to_string(),
                start,
                end,
                label: format!(
                    "{} attempt {}: {kind}, {}",
                    t.task_id,
                    a.attempt,
                    duration(Some(start), Some(end))
                ),
                kind,
            });
            prev_end = a.ended_at;
        }
    }
    spans
}

/// `/runs/{id}/tasks/{task}`: attempts, worker and GPUs, and the log (live while running).
#[derive(Debug, Default, Deserialize)]
pub(super) struct TaskQuery {
    /// Which attempt's log to show; the latest by default.
    attempt: Option<i32>,
}

pub(super) async fn task_page(
    State(state): State<AppState>,
    Path((raw, task)): Path<(String, String)>,
    Query(q): Query<TaskQuery>,
    headers: HeaderMap,
    who: Who,
) -> UiResult<Response> {
    let ctx = ctx(&headers, who);
    let id = parse_run(&raw)?;
    let store = state.store.as_ref();
    let api = |e| UiError::Api(crate::http::ApiError::from(e));
    let run = store.get_run(id).await.map_err(api)?;
    let ti = store
        .task_instances(id)
        .await
        .map_err(api)?
        .into_iter()
        .find(|t| t.task_id.as_str() == task)
        .ok_or_else(|| UiError::NotFound(format!("run {id} has no task {task:?}")))?;
    let attempts = store.attempts(ti.id).await.map_err(api)?;
    let workers = worker_names(store).await?;
    let reason = crate::http::api::task_reasons(&state, id, std::slice::from_ref(&ti))
        .await
        .map_err(UiError::Api)?
        .remove(task.as_str());
    let latest = ti.attempt.max(1);
    let attempt = q
        .attempt
        .filter(|a| (1..=latest).contains(a))
        .unwrap_or(latest);
    let log = state
        .logs
        .read(id, &task, attempt)
        .await
        .unwrap_or_default();
    let body = html! {
        h1 { a href={"/runs/" (run.id)} { (run.dag_id) } " / " (task) " " span id="task-state" data-run=(run.id) data-task=(task) class={"badge st-" (ti.state)} { (ti.state) } }
        @if let Some(why) = &reason { p class="reason muted" { (why) } }
        h2 { "Attempts" }
        table class="attempts" {
            thead { tr { th { "#" } th { "Worker" } th { "GPUs" } th { "Outcome" } th { "Exit" } th { "Started" } th { "Duration" } th { "Error" } } }
            tbody {
                @for a in &attempts {
                    tr {
                        td { (a.attempt) }
                        td class="worker" { (a.worker_id.and_then(|w| workers.get(&w)).map_or("—", String::as_str)) }
                        td class="gpus" { @if a.gpus.is_empty() { "—" } @else { (a.gpus.iter().map(|g| format!("GPU {g}")).collect::<Vec<_>>().join(", ")) } }
                        td { @if let Some(o) = a.outcome { (badge(o.as_str())) } @else { "—" } }
                        td { (a.exit_code.map(|c| c.to_string()).unwrap_or_default()) }
                        td { (when(a.started_at)) }
                        td { (duration(a.started_at, a.ended_at)) }
                        td class="error" { (a.error.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        p { a id="back-to-run" href={"/runs/" (run.id)} { "← the whole run" } }
        h2 { "Log " small class="muted" { "attempt " (attempt) } }
        nav class="attempt-picker" aria-label="attempt" {
            @for n in 1..=latest {
                @if n == attempt { span class="current" aria-current="page" { "attempt " (n) } }
                @else { a href={"/runs/" (run.id) "/tasks/" (task) "?attempt=" (n)} { "attempt " (n) } }
                " "
            }
            a class="small" id="log-download" download={(task) "-attempt-" (attempt) ".log"}
                href={"/api/v1/runs/" (run.id) "/tasks/" (task) "/logs?attempt=" (attempt)} { "download" }
        }
        div class="log-search" {
            label for="log-search" { "Search the log " }
            input id="log-search" type="search" placeholder="text to find";
            " " span id="log-matches" class="muted" {}
        }
        // Only the latest attempt's log grows: older ones are not followed.
        @if attempt == latest {
            pre id="log" class="log" data-stream={"/api/v1/runs/" (run.id) "/tasks/" (task) "/logs/stream"}
                data-full={"/api/v1/runs/" (run.id) "/tasks/" (task) "/logs?attempt=" (attempt)} { (log) }
        } @else {
            pre id="log" class="log" { (log) }
        }
    };
    Ok(ctx.page(&format!("{task} · run"), body))
}

/// `/workers`: every worker, each GPU and what holds it.
pub(super) async fn workers_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: Who,
) -> UiResult<Response> {
    let ctx = ctx(&headers, who);
    let workers = read::workers(state.store.as_ref(), &state.control.gpu_usage().await).await?;
    let body = html! {
        h1 { "Workers" }
        @if workers.is_empty() { p class="muted" { "No worker has registered." } }
        @for w in &workers {
            section class="worker" {
                h2 { (w.name) " " (badge(&w.state)) " " small class="muted" { "last heartbeat " (when(Some(w.last_heartbeat_at))) } }
                @if w.gpus.is_empty() { p class="muted" { "CPU only" } }
                @else {
                    table class="gpus" {
                        thead { tr { th { "GPU" } th { "Model" } th { "Memory" } th { "Utilisation" } th { "Running" } } }
                        tbody {
                            @for g in &w.gpus {
                                tr class="gpu" {
                                    td { "GPU " (g.index) }
                                    td class="model" { (g.model.as_deref().unwrap_or("?")) }
                                    td { (g.memory_bytes.map(bytes).unwrap_or_default()) }
                                    td { @if let Some(u) = g.utilization_percent { (format!("{u:.0} %")) } @else { span class="muted" { "n/a" } } }
                                    td { @match &g.held_by {
                                        Some(h) => a href={"/runs/" (h.run_id) "/tasks/" (h.task_id)} { (h.dag_id) " / " (h.task_id) " #" (h.attempt) },
                                        None => span class="muted" { "idle" },
                                    } }
                                }
                            }
                        }
                    }
                }
                @if !w.running.is_empty() {
                    p { "Running: " @for h in &w.running { a href={"/runs/" (h.run_id) "/tasks/" (h.task_id)} { (h.dag_id) "/" (h.task_id) } " " } }
                }
            }
        }
    };
    Ok(ctx.page("Workers", body))
}
