//! The page frame (header, navigation, assets), the login page, and small
//! pieces every page uses. maud escapes every interpolated value, so text a
//! DAG author or a task wrote can never become markup.

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::http::auth::{self, CSRF_COOKIE, Caller};

/// What a page needs from the request: the CSRF token for its forms and who
/// is looking (for the header's login state).
pub struct Ctx {
    pub csrf: String,
    /// Set when the CSRF cookie was missing and a new one must be sent.
    new_cookie: bool,
    pub caller: Option<Caller>,
}

impl Ctx {
    pub fn new(headers: &HeaderMap, caller: Option<Caller>) -> Self {
        match auth::cookie(headers, CSRF_COOKIE).filter(|c| c.len() >= 32) {
            Some(c) => Self {
                csrf: c.to_owned(),
                new_cookie: false,
                caller,
            },
            None => Self {
                csrf: auth::random_token(),
                new_cookie: true,
                caller,
            },
        }
    }

    /// For pages without forms (errors): sends no CSRF cookie, so the one
    /// the browser already holds stays valid.
    pub fn without_forms() -> Self {
        Self {
            csrf: String::new(),
            new_cookie: false,
            caller: None,
        }
    }

    /// The hidden form field carrying the double-submit token.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    pub fn can_operate(&self) -> bool {
        self.caller
            .is_some_and(|c| c.role >= crate::http::Role::Operator)
    }

    /// A full page with this context's cookie, if it needs one.
    pub fn page(&self, title: &str, body: Markup) -> Response {
        let mut resp = Html(frame(title, self.caller, body).into_string()).into_response();
        if self.new_cookie {
            resp.headers_mut().append(
                header::SET_COOKIE,
                auth::set_cookie(CSRF_COOKIE, &self.csrf, None),
            );
        }
        resp.headers_mut().insert(
            "content-security-policy",
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
            ),
        );
        resp
    }
}

fn frame(title: &str, caller: Option<Caller>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Trainyard" }
                link rel="icon" type="image/svg+xml" href="/static/favicon.svg";
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                header class="top" {
                    a class="brand" href="/" { "Trainyard" }
                    nav {
                        a href="/" { "DAGs" }
                        a href="/runs" { "Runs" }
                        a href="/workers" { "Workers" }
                        a href="/api/v1/openapi.json" { "API" }
                    }
                    @if let Some(c) = caller.filter(|c| !c.open) {
                        form class="who" method="post" action="/logout" {
                            span { (c.role) }
                            button type="submit" class="link" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// Where a login may send the browser next: a path on this site, else `/`.
///
/// Browsers are lenient with what follows a leading `/`: `//host`, `/\host`
/// and `\\host` all leave the site, tabs and newlines are dropped before
/// parsing (`/<TAB>/host` is `//host`), and `%5C`/`%2F` come back as `\` and
/// `/` once a server or proxy decodes them. So only plain visible ASCII is
/// kept, no backslash at all, and the path must not start with two slashes
/// before or after percent-decoding.
pub fn safe_next(next: &str) -> &str {
    const MAX: usize = 2048;
    let plain = next.len() <= MAX
        && next.starts_with('/')
        && next.bytes().all(|b| b.is_ascii_graphic())
        && !next.contains('\\');
    if !plain {
        return "/";
    }
    // Decode until nothing changes (double encoding), then look again.
    let mut decoded = next.to_owned();
    for _ in 0..4 {
        let again = percent_encoding::percent_decode_str(&decoded)
            .decode_utf8_lossy()
            .into_owned();
        if again == decoded {
            break;
        }
        decoded = again;
    }
    let leaves = decoded.starts_with("//")
        || decoded.contains('\\')
        || decoded.chars().any(|c| c.is_control() || c.is_whitespace());
    let path = next.split(['?', '#']).next().unwrap_or(next);
    if leaves || path == "/login" || path == "/logout" {
        "/"
    } else {
        next
    }
}

/// The login form, also the body of a 401 for browser pages.
pub fn login_page(message: Option<&str>, next: &str) -> Html<String> {
    let next = safe_next(next);
    Html(
        frame(
            "Log in",
            None,
            html! {
                section class="login" {
                    h1 { "Log in" }
                    @if let Some(m) = message { p class="error" { (m) } }
                    form method="post" action="/login" {
                        input type="hidden" name="next" value=(next);
                        label for="token" { "API token" }
                        input id="token" type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Log in" }
                    }
                    p class="muted" { "Use a viewer or operator token given to the scheduler with --api-token." }
                }
            },
        )
        .into_string(),
    )
}

/// A state as a coloured badge.
pub fn badge(state: &str) -> Markup {
    html! { span class={"badge st-" (state)} { (state) } }
}

pub fn when(t: Option<DateTime<Utc>>) -> Markup {
    html! {
        @match t {
            Some(t) => time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S")) },
            None => span class="muted" { "—" },
        }
    }
}

pub fn duration(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => {
            let ms = (e - s).num_milliseconds().max(0);
            if ms < 1000 {
                format!("{ms} ms")
            } else if ms < 120_000 {
                format!("{:.1} s", ms as f64 / 1000.0)
            } else {
                format!("{} min", ms / 60_000)
            }
        }
        _ => String::new(),
    }
}

pub fn bytes(n: u64) -> String {
    const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
    if n as f64 >= GIB {
        format!("{:.0} GiB", n as f64 / GIB)
    } else {
        format!("{:.0} MiB", n as f64 / (1024.0 * 1024.0))
    }
}
