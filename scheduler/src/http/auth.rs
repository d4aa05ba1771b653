//! Who may call what: bearer API tokens with two roles, UI sessions, and the
//! cross-site request checks for state-changing requests.
//!
//! - **Tokens** come from configuration as `viewer:TOKEN` / `operator:TOKEN`.
//!   They are kept only as SHA-256 digests, so a lookup compares digests and
//!   never leaks how much of a guessed token matched.
//! - **Sessions**: the UI login form takes a token and sets an `HttpOnly`,
//!   `SameSite=Strict` cookie holding a random session id (kept in memory:
//!   a restart logs users out, which is acceptable for a scheduler UI).
//! - **Open mode**: with no tokens configured everyone is an operator; the CLI
//!   refuses that on a non-loopback address unless told `--insecure-no-auth`.
//! - **CSRF**: every state-changing request that is not bearer-authenticated
//!   must come from this origin (`Origin` / `Sec-Fetch-Site`), and UI forms
//!   carry a double-submit token ([`check_form_csrf`]). Bearer calls are
//!   exempt: browsers never attach an `Authorization` header on their own.
//!   A session-cookie `POST` to `/api/` must also *say* where it comes from
//!   (`Origin`, or a `Referer` on this host): browsers send one with every
//!   `fetch` POST, and the API has no form token to fall back on.
//! - **DNS rebinding**: in open mode only requests addressed to loopback (or
//!   an `--allowed-host`) are answered ([`super::hosts`]).
//! - **Login guessing**: failed logins are limited per client address
//!   ([`super::login_limit`]).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::AppState;
use super::hosts::{AllowedHost, HostPolicy, RefusedHost};
use super::login_limit::{LoginLimit, LoginLimiter};
use crate::clock::Clock;

/// Session cookie name (HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "ty_session";
/// Double-submit CSRF cookie; forms echo it in a hidden `csrf` field.
pub const CSRF_COOKIE: &str = "ty_csrf";
/// How long a UI login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Read, and trigger, pause/resume, cancel, clear/retry, backfill.
    Operator,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("API token {0:?} is not ROLE:TOKEN with ROLE viewer or operator")]
    BadToken(String),
    #[error("API token for {0} is shorter than 16 characters")]
    ShortToken(Role),
    #[error(
        "the HTTP API would listen on {0}, beyond loopback, without authentication; \
         give --api-token operator:TOKEN (and viewer:TOKEN), or --insecure-no-auth to accept the risk"
    )]
    OpenBeyondLoopback(SocketAddr),
}

/// One configured token: `viewer:TOKEN` or `operator:TOKEN`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub role: Role,
    pub token: String,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "ApiToken({}:***)", self.role)
    }
}

impl FromStr for ApiToken {
    type Err = AuthError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let (role, token) = raw
            .split_once(':')
            .ok_or_else(|| AuthError::BadToken(redacted(raw)))?;
        let role = match role.trim() {
            "viewer" => Role::Viewer,
            "operator" => Role::Operator,
            _ => return Err(AuthError::BadToken(redacted(raw))),
        };
        let token = token.trim();
        if token.len() < 16 {
            return Err(AuthError::ShortToken(role));
        }
        Ok(Self {
            role,
            token: token.to_owned(),
        })
    }
}

fn redacted(raw: &str) -> String {
    match raw.split_once(':') {
        Some((role, _)) => format!("{role}:***"),
        None => "***".to_owned(),
    }
}

/// Parses a comma- or whitespace-separated list (`TRAINYARD_API_TOKENS`).
pub fn parse_token_list(raw: &str) -> Result<Vec<ApiToken>, AuthError> {
    raw.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(ApiToken::from_str)
        .collect()
}

type Digest32 = [u8; 32];

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

struct Session {
    role: Role,
    expires: Instant,
}

struct Inner {
    /// Token digest → role.
    tokens: HashMap<Digest32, Role>,
    /// Session id digest → session. Shared by every request (hence the lock).
    sessions: Mutex<HashMap<Digest32, Session>>,
}

/// Authentication settings, the live UI sessions, the hosts open mode
/// answers and the failed-login limit; cheap to clone.
#[derive(Clone)]
pub struct AuthConfig {
    inner: Arc<Inner>,
    /// Which `Host`s open mode answers (loopback plus `--allowed-host`).
    hosts: Arc<HostPolicy>,
    /// Failed logins per client address, shared by every request.
    logins: Arc<LoginLimiter>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &self.inner.tokens.len())
            .field("allowed_hosts", &self.hosts.allowed())
            .field("login_limit", &self.logins.limit())
            .finish_non_exhaustive()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self::open()
    }
}

impl AuthConfig {
    /// No authentication: every caller is an operator (loopback standalone).
    pub fn open() -> Self {
        Self::with_tokens(Vec::new())
    }

    /// Requires one of `tokens` on every request but the public ones;
    /// an empty list means [`AuthConfig::open`].
    pub fn with_tokens(tokens: Vec<ApiToken>) -> Self {
        let tokens = tokens
            .into_iter()
            .map(|t| (digest(&t.token), t.role))
            .collect();
        Self {
            inner: Arc::new(Inner {
                tokens,
                sessions: Mutex::new(HashMap::new()),
            }),
            hosts: Arc::default(),
            logins: Arc::default(),
        }
    }

    /// Open mode also answers requests addressed to these hosts (besides
    /// loopback); ignored with tokens.
    pub fn with_allowed_hosts(mut self, hosts: Vec<AllowedHost>) -> Self {
        self.hosts = Arc::new(HostPolicy::new(hosts));
        self
    }

    /// Failed logins allowed per client address, timed by `clock`.
    pub fn with_login_limit(mut self, limit: LoginLimit, clock: Arc<dyn Clock>) -> Self {
        self.logins = Arc::new(LoginLimiter::new(limit, clock));
        self
    }

    pub fn login_limiter(&self) -> &LoginLimiter {
        &self.logins
    }

    pub fn is_required(&self) -> bool {
        !self.inner.tokens.is_empty()
    }

    /// Refuses to serve without authentication beyond loopback unless the
    /// operator explicitly accepted it.
    pub fn check_bind(&self, addr: SocketAddr, insecure_no_auth: bool) -> Result<(), AuthError> {
        if self.is_required() || insecure_no_auth || addr.ip().is_loopback() {
            Ok(())
        } else {
            Err(AuthError::OpenBeyondLoopback(addr))
        }
    }

    pub fn token_role(&self, token: &str) -> Option<Role> {
        self.inner.tokens.get(&digest(token)).copied()
    }

    /// Starts a UI session for a valid token; returns the session id.
    pub fn login(&self, token: &str) -> Option<String> {
        let role = self.token_role(token)?;
        let id = random_token();
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            digest(&id),
            Session {
                role,
                expires: now + SESSION_TTL,
            },
        );
        Some(id)
    }

    pub fn logout(&self, session: &str) {
        self.sessions().remove(&digest(session));
    }

    fn session_role(&self, session: &str) -> Option<Role> {
        let sessions = self.sessions();
        sessions
            .get(&digest(session))
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.role)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<Digest32, Session>> {
        // A panic while holding the lock leaves a plain map behind; keep using it.
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// 256 random bits, hex (two v4 UUIDs from the OS RNG).
pub fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for a strict, HttpOnly cookie valid on the whole site.
pub fn set_cookie(name: &str, value: &str, max_age: Option<Duration>) -> HeaderValue {
    let age = max_age.map_or(String::new(), |d| format!("; Max-Age={}", d.as_secs()));
    let raw = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{age}");
    HeaderValue::from_str(&raw).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// Who is calling, as the guard found out; handlers read it from extensions.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub role: Role,
    /// True when the credential is a bearer token (CSRF checks do not apply).
    pub bearer: bool,
    /// True when no authentication is configured.
    pub open: bool,
}

/// Requests anyone may make: probes, the login page and static assets (the
/// favicon too: browsers ask for it on the login page).
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/login" | "/logout" | "/favicon.ico"
    ) || path.starts_with("/static/")
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The host the request is addressed to: `Host`, else the request line's
/// authority (HTTP/2's `:authority`).
fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// `scheme://host[:port]` of an `Origin` or `Referer` value → `host[:port]`.
fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    Some(rest.split(['/', '?', '#']).next().unwrap_or(rest))
}

/// Whether a browser request comes from this site. Non-browser clients send
/// neither header and pass; browsers always send `Origin` on a cross-site POST.
fn same_origin(uri: &Uri, headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = request_host(uri, headers) else {
        return false;
    };
    url_host(origin) == Some(host)
}

/// Whether the request names its origin and it is this host: `Origin`, or
/// when a browser left that out, a `Referer` on this host.
fn names_same_origin(uri: &Uri, headers: &HeaderMap) -> bool {
    let Some(host) = request_host(uri, headers) else {
        return false;
    };
    let named = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    named.and_then(url_host) == Some(host)
}

/// Checks a UI form's `csrf` field against the double-submit cookie.
pub fn check_form_csrf(headers: &HeaderMap, field: &str) -> bool {
    match cookie(headers, CSRF_COOKIE) {
        Some(c) => !c.is_empty() && digest(c) == digest(field),
        None => false,
    }
}

fn deny(status: StatusCode, code: &str, message: &str, path: &str) -> Response {
    if path.starts_with("/api/") || status == StatusCode::FORBIDDEN {
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"trainyard\""),
            );
        }
        resp
    } else {
        // A browser page: show the login form with the 401.
        let page = super::ui::login_page(Some(message), path);
        (status, page).into_response()
    }
}

/// 421 for a request addressed to a host open mode does not answer: JSON
/// under `/api/`, plain text elsewhere (a person reads it in the browser).
fn misdirected(refused: &RefusedHost, path: &str) -> Response {
    let message = refused.to_string();
    if path.starts_with("/api/") {
        let body =
            serde_json::json!({ "error": { "code": "misdirected_request", "message": message } });
        (StatusCode::MISDIRECTED_REQUEST, axum::Json(body)).into_response()
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            message,
        )
            .into_response()
    }
}

/// Probes answer whatever the host: they carry nothing a page could use, and
/// load balancers and kubelets send their own idea of the host.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz")
}

/// The auth and CSRF middleware in front of every route.
pub async fn guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let headers = req.headers();
    let auth = &state.auth;
    if !auth.is_required()
        && !is_probe(&path)
        && let Err(refused) = auth.hosts.check(req.uri(), headers)
    {
        tracing::debug!(host = %refused.shown, %path, "request for a host open mode does not answer");
        return misdirected(&refused, &path);
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);

    let caller = if let Some(token) = bearer {
        match auth.token_role(token) {
            Some(role) => Some(Caller {
                role,
                bearer: true,
                open: false,
            }),
            None if auth.is_required() => {
                return deny(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "invalid API token",
                    &path,
                );
            }
            None => None,
        }
    } else {
        cookie(headers, SESSION_COOKIE)
            .and_then(|s| auth.session_role(s))
            .map(|role| Caller {
                role,
                bearer: false,
                open: false,
            })
    };
    let caller = match caller {
        Some(c) => Some(c),
        None if !auth.is_required() => Some(Caller {
            role: Role::Operator,
            bearer: false,
            open: true,
        }),
        None => None,
    };

    if !is_safe(req.method()) {
        let from_bearer = caller.is_some_and(|c| c.bearer);
        if !from_bearer && !same_origin(req.uri(), headers) {
            return deny(
                StatusCode::FORBIDDEN,
                "cross_site_request",
                "cross-site request refused",
                &path,
            );
        }
        let from_session = caller.is_some_and(|c| !c.bearer && !c.open);
        if from_session && path.starts_with("/api/") && !names_same_origin(req.uri(), headers) {
            return deny(
                StatusCode::FORBIDDEN,
                "cross_site_request",
                "a state-changing API request with a session cookie must name its origin: \
                 browsers send `Origin` with it; scripts should send `Authorization: Bearer TOKEN` instead",
                &path,
            );
        }
    }
    if is_public(&path) {
        if let Some(c) = caller {
            req.extensions_mut().insert(c);
        }
        return next.run(req).await;
    }
    let Some(caller) = caller else {
        return deny(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "authentication required: send `Authorization: Bearer TOKEN` or log in",
            &path,
        );
    };
    if !is_safe(req.method()) && caller.role < Role::Operator {
        return deny(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this needs the operator role; your token is a viewer token",
            &path,
        );
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}
