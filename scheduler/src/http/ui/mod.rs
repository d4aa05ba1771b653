//! The web UI: server-rendered HTML (maud, escaped by default) with a little
//! JavaScript for live updates, and its CSS/JS embedded in the binary from
//! the repository's `ui/static/` with `include_str!` (nothing is read from
//! disk at run time).
//!
//! Pages live in `pages.rs`, charts and graphs in `svg.rs`, the frame and the
//! login form in `layout.rs`; this file holds the routes, the login/logout
//! handlers and the state-changing form posts (each checks the CSRF token).

mod layout;
mod pages;
mod svg;

use std::str::FromStr;

use axum::Form;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::Map;
use trainyard_core::dag::{DagSpec, ParamValue};
use trainyard_core::ids::RunId;

pub use layout::login_page;

use super::auth::{self, Caller, SESSION_COOKIE};
use super::client::ClientAddr;
use super::read::{self, parse_dag_id};
use super::routes::RouteTable;
use super::{ApiError, AppState, TriggerRequest};

const APP_CSS: &str = include_str!("../../../../ui/static/app.css");
const APP_JS: &str = include_str!("../../../../ui/static/app.js");
const FAVICON: &str = include_str!("../../../../ui/static/favicon.svg");

/// Adds the UI's pages, forms, login and assets to the route table.
pub(in crate::http) fn routes(t: RouteTable) -> RouteTable {
    t.get("/static/app.css", css)
        .get("/static/app.js", js)
        .get("/static/favicon.svg", favicon)
        // Browsers ask for this path whatever the page links; answering it
        // keeps a fresh profile's first request from being a 404.
        .get("/favicon.ico", favicon)
        .get("/login", login_form)
        .post("/login", login)
        .post("/logout", logout)
        .get("/", pages::dag_list)
        .get("/dags/{dag_id}", pages::dag_page)
        .get("/dags/{dag_id}/grid", pages::grid_page)
        .get("/dags/{dag_id}/trigger", pages::trigger_page)
        .post("/dags/{dag_id}/trigger", trigger)
        .post("/dags/{dag_id}/pause", pause)
        .post("/dags/{dag_id}/resume", resume)
        .get("/runs", pages::runs_page)
        .get("/runs/{run_id}", pages::run_page)
        .post("/runs/{run_id}/cancel", cancel_run)
        .get("/runs/{run_id}/tasks/{task_id}", pages::task_page)
        .post("/runs/{run_id}/tasks/{task_id}/clear", clear_task)
        .post("/runs/{run_id}/clear-failed", clear_failed)
        .get("/workers", pages::workers_page)
}

async fn css() -> Response {
    asset(APP_CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

async fn favicon() -> Response {
    asset(FAVICON, "image/svg+xml")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Unknown paths: JSON under `/api/`, a short page elsewhere.
pub(in crate::http) async fn not_found(req: Request) -> Response {
    if req.uri().path().starts_with("/api/") {
        return ApiError::not_found(format!("no route {}", req.uri().path())).into_response();
    }
    (
        StatusCode::NOT_FOUND,
        UiError::NotFound("page not found".into()),
    )
        .into_response()
}

/// Errors of UI pages and forms: shown as a page, never as raw internals.
#[derive(Debug, thiserror::Error)]
pub(super) enum UiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the form expired or came from another site; reload the page and try again")]
    Csrf,
    #[error("{0}")]
    Api(#[from] ApiError),
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Csrf => StatusCode::FORBIDDEN,
            UiError::Api(e) => e.status(),
        };
        let body = maud::html! {
            section class="error-page" {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p { (self.to_string()) }
                p { a href="/" { "Back to the DAGs" } }
            }
        };
        // An error page has no forms, so it never sets the CSRF cookie: a
        // new token here would replace the one the user's open pages carry
        // and their next form post would fail as "expired".
        let ctx = layout::Ctx::without_forms();
        let mut resp = ctx.page("Error", body);
        *resp.status_mut() = status;
        resp
    }
}

pub(super) type UiResult<T> = Result<T, UiError>;

async fn login_form(headers: HeaderMap) -> Response {
    let next = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| {
            r.find("://")
                .and_then(|i| r[i + 3..].find('/').map(|j| r[i + 3 + j..].to_owned()))
        })
        .unwrap_or_else(|| "/".to_owned());
    login_page(None, &next).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

/// Logs in with a token. Attempts count against the client address's
/// failed-login limit (429 with `Retry-After` when it is spent); a right
/// token gives its attempt back.
async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    Form(form): Form<LoginForm>,
) -> Response {
    let limiter = state.auth.login_limiter();
    let attempt = match limiter.begin(client.key()) {
        Ok(attempt) => attempt,
        Err(refused) => {
            tracing::warn!(client = %client.key(), retry_after_s = refused.retry_after.as_secs(), "login refused: too many failures");
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                login_page(Some(&refused.to_string()), &form.next),
            )
                .into_response();
            let secs = refused.retry_after.as_secs().max(1).to_string();
            if let Ok(v) = header::HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return resp;
        }
    };
    match state.auth.login(form.token.trim()) {
        Some(session) => {
            limiter.succeeded(attempt);
            let mut resp = Redirect::to(layout::safe_next(&form.next)).into_response();
            resp.headers_mut().append(
                header::SET_COOKIE,
                auth::set_cookie(SESSION_COOKIE, &session, None),
            );
            resp
        }
        None => {
            tracing::info!(client = %client.key(), "login with a wrong token");
            (
                StatusCode::UNAUTHORIZED,
                login_page(Some("That token is not valid."), &form.next),
            )
                .into_response()
        }
    }
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(session) = auth::cookie(&headers, SESSION_COOKIE) {
        state.auth.logout(session);
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        auth::set_cookie(SESSION_COOKIE, "", Some(std::time::Duration::ZERO)),
    );
    resp
}

/// A form post with only the CSRF field.
#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

fn check_csrf(headers: &HeaderMap, field: &str) -> UiResult<()> {
    if auth::check_form_csrf(headers, field) {
        Ok(())
    } else {
        Err(UiError::Csrf)
    }
}

/// Converts the trigger form's text fields to typed params by the DAG's
/// declarations: `p.NAME=VALUE` pairs, each parsed as its declared type.
pub(super) fn form_params(
    spec: &DagSpec,
    fields: &[(String, String)],
) -> Result<Map<String, serde_json::Value>, String> {
    let mut out = Map::new();
    for (key, raw) in fields {
        let Some(name) = key.strip_prefix("p.") else {
            continue;
        };
        let declared = spec
            .params
            .get(name)
            .ok_or_else(|| format!("unknown param `{name}`"))?;
        // An empty field means "use the default".
        if raw.trim().is_empty() && !matches!(declared, ParamValue::String(_)) {
            continue;
        }
        let value = ParamValue::parse_cli(declared, raw.trim()).map_err(|e| e.to_string())?;
        out.insert(name.to_owned(), value.to_json());
    }
    Ok(out)
}

async fn trigger(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    caller: Option<axum::Extension<Caller>>,
    Form(fields): Form<Vec<(String, String)>>,
) -> UiResult<Response> {
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    check_csrf(&headers, csrf)?;
    let detail = read::dag_detail(&state, &raw).await?;
    let spec: DagSpec = detail
        .spec
        .and_then(|s| serde_json::from_value(s).ok())
        .ok_or_else(|| UiError::BadRequest(format!("DAG {raw} has no loadable version")))?;
    let params = match form_params(&spec, &fields) {
        Ok(p) => p,
        Err(message) => {
            let ctx = layout::Ctx::new(&headers, caller.map(|c| c.0));
            let mut resp = pages::trigger_form(&ctx, &spec, &fields, Some(&message));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(resp);
        }
    };
    let dag = parse_dag_id(&raw)?;
    let run = state
        .control
        .trigger(
            &dag,
            TriggerRequest {
                params,
                idempotency_key: None,
                logical_date: None,
            },
        )
        .await?;
    Ok(Redirect::to(&format!("/runs/{run}")).into_response())
}

async fn set_paused(
    state: AppState,
    raw: String,
    headers: HeaderMap,
    form: CsrfForm,
    paused: bool,
) -> UiResult<Response> {
    check_csrf(&headers, &form.csrf)?;
    let dag = parse_dag_id(&raw)?;
    state.control.set_paused(&dag, paused).await?;
    Ok(Redirect::to(back(&headers, &format!("/dags/{raw}")).as_str()).into_response())
}

/// Where to go after a form post: the page it came from (same site), or `fallback`.
fn back(headers: &HeaderMap, fallback: &str) -> String {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| {
            let rest = r
                .strip_prefix("http://")
                .or_else(|| r.strip_prefix("https://"))?;
            let (h, path) = rest.split_at(rest.find('/')?);
            (Some(h) == host).then(|| path.to_owned())
        })
        .unwrap_or_else(|| fallback.to_owned())
}

async fn pause(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    set_paused(state, raw, headers, form, true).await
}

async fn resume(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    set_paused(state, raw, headers, form, false).await
}

fn parse_run(raw: &str) -> UiResult<RunId> {
    RunId::from_str(raw).map_err(|e| UiError::BadRequest(format!("bad run id {raw:?}: {e}")))
}

async fn cancel_run(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    check_csrf(&headers, &form.csrf)?;
    let run = parse_run(&raw)?;
    state.control.cancel_run(run).await?;
    Ok(Redirect::to(&format!("/runs/{run}")).into_response())
}

#[derive(Deserialize)]
struct ClearForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    downstream: Option<String>,
}

async fn clear_task(
    State(state): State<AppState>,
    Path((raw, task)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ClearForm>,
) -> UiResult<Response> {
    check_csrf(&headers, &form.csrf)?;
    let run = parse_run(&raw)?;
    let downstream = form.downstream.as_deref() != Some("false");
    state.control.clear_task(run, &task, downstream).await?;
    Ok(Redirect::to(&format!("/runs/{run}")).into_response())
}

/// Clears every failed task of a run with its downstream tasks (which brings
/// back the `upstream_failed` ones too): the engine's per-task clear, once
/// per failed task. There is no "mark success/failed": the engine has no
/// command that sets a task's state from outside.
async fn clear_failed(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> UiResult<Response> {
    check_csrf(&headers, &form.csrf)?;
    let run = parse_run(&raw)?;
    let tasks = state
        .store
        .task_instances(run)
        .await
        .map_err(ApiError::from)?;
    for t in tasks
        .iter()
        .filter(|t| t.state == trainyard_core::state::TaskState::Failed)
    {
        state
            .control
            .clear_task(run, t.task_id.as_str(), true)
            .await?;
    }
    Ok(Redirect::to(&format!("/runs/{run}")).into_response())
}
