//! A small HTTP client for the scheduler's `/api/v1`, shared by the client
//! commands (`trigger`, `runs`, `logs`, `backfill`).
//!
//! `--server` may name several scheduler replicas (comma-separated). A
//! request goes to the one that answered last (the first at start), and
//! moves on to the next when a replica cannot be reached or answers 503 (a
//! standby refusing a command only the leader runs, or a replica whose
//! database is away); the replica that answered is remembered for the rest
//! of the process. A request whose sending may have reached a replica
//! (anything but a refused connection) is not sent again elsewhere unless
//! it is a GET, so a trigger is never made twice. When no replica answers,
//! the error names every URL tried and what each said.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, anyhow};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where the scheduler's HTTP API is.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The scheduler's HTTP address; with several replicas, every
    /// replica's address, comma-separated (tried in turn).
    #[arg(
        long,
        env = "TRAINYARD_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL[,URL…]",
        global = true
    )]
    pub server: String,
    /// API token (bearer) for the HTTP API, when the server requires one
    /// (`--api-token` on the scheduler; not a worker join token).
    #[arg(long, env = "TRAINYARD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate, for an
    /// `https://` server whose certificate is not from a public CA.
    #[arg(long, env = "TRAINYARD_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
}

pub struct Client {
    /// The replicas' base URLs, as given (scheme added, no trailing `/`).
    bases: Vec<String>,
    /// The replica that answered last: tried first.
    active: AtomicUsize,
    token: Option<String>,
    http: reqwest::Client,
}

/// Requests are built against this base and re-aimed at a replica when
/// sent ([`Client::send`]), so one builder serves every replica.
const PLACEHOLDER: &str = "http://trainyard-server";

/// What one replica said, for the error that lists them all.
struct Attempt {
    url: String,
    said: String,
    /// It answered (a 503); else it could not be reached.
    answered: bool,
}

fn base_url(raw: &str) -> anyhow::Result<String> {
    let raw = raw.trim().trim_end_matches('/');
    if raw.is_empty() {
        return Err(anyhow!(
            "--server has an empty entry; give one URL or several comma-separated \
             (e.g. http://sched-a:8080,http://sched-b:8080)"
        ));
    }
    let base = if raw.starts_with("http://") || raw.starts_with("https://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    reqwest::Url::parse(&base).with_context(|| format!("--server URL {raw:?} is not valid"))?;
    Ok(base)
}

impl Client {
    pub fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        let bases = args
            .server
            .split(',')
            .map(base_url)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("trainyard-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-cert {} is not a PEM certificate", path.display()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Self {
            bases,
            active: AtomicUsize::new(0),
            token: args.token.clone(),
            http: http.build()?,
        })
    }

    /// The base URL of the replica that answered last (the first before
    /// any answered), for links a person opens (the UI's run page).
    pub fn base(&self) -> &str {
        let i = self
            .active
            .load(Ordering::Relaxed)
            .min(self.bases.len() - 1);
        &self.bases[i]
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{PLACEHOLDER}{path}"));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Sends to the replica that answered last, then the others in order
    /// (see the module docs), and turns a non-2xx answer into an error
    /// carrying the API's message.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let req = req.build()?;
        let rel = req
            .url()
            .as_str()
            .strip_prefix(PLACEHOLDER)
            .unwrap_or("/")
            .to_owned();
        let resendable = req.method() == Method::GET;
        let first = self
            .active
            .load(Ordering::Relaxed)
            .min(self.bases.len() - 1);
        let order = (0..self.bases.len()).map(|i| (first + i) % self.bases.len());
        let mut tried: Vec<Attempt> = Vec::new();
        for i in order {
            let base = &self.bases[i];
            let Some(mut attempt) = req.try_clone() else {
                return Err(anyhow!(
                    "this request cannot be sent (its body cannot be copied)"
                ));
            };
            *attempt.url_mut() = reqwest::Url::parse(&format!("{base}{rel}"))
                .with_context(|| format!("{base}{rel} is not a valid URL"))?;
            match self.http.execute(attempt).await {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    let said = error_text(resp).await;
                    tried.push(Attempt {
                        url: base.clone(),
                        said,
                        answered: true,
                    });
                }
                Ok(resp) => {
                    self.active.store(i, Ordering::Relaxed);
                    if resp.status().is_success() {
                        return Ok(resp);
                    }
                    return Err(anyhow!("{}", error_text(resp).await));
                }
                // Nothing reached the replica: safe to send elsewhere.
                Err(e) if e.is_connect() || resendable => tried.push(Attempt {
                    url: base.clone(),
                    said: format!("cannot reach it: {}", error_chain(&e)),
                    answered: false,
                }),
                Err(e) => {
                    return Err(anyhow!(
                        "the request to {base} failed after it was sent: {} (not sent to another \
                         --server URL, so it cannot take effect twice; check whether it did)",
                        error_chain(&e)
                    ));
                }
            }
        }
        Err(no_replica_answered(&tried))
    }

    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self.send(self.request(Method::GET, path)).await?;
        resp.json()
            .await
            .context("the server sent a body that is not JSON")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .send(self.request(Method::POST, path).json(body))
            .await?;
        resp.json()
            .await
            .context("the server sent a body that is not JSON")
    }
}

/// The API's error message and the status, from an error answer.
async fn error_text(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    format!("{} ({})", message, status_words(status))
}

/// reqwest's error with its causes (the cause says "connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

fn no_replica_answered(tried: &[Attempt]) -> anyhow::Error {
    match tried {
        [one] if one.answered => anyhow!("{}", one.said),
        [one] => anyhow!(
            "cannot reach the trainyard server at {} ({}; is it running? set --server or \
             TRAINYARD_SERVER, several replicas comma-separated)",
            one.url,
            one.said.trim_start_matches("cannot reach it: ")
        ),
        _ => {
            let each: Vec<String> = tried
                .iter()
                .map(|a| format!("{}: {}", a.url, a.said))
                .collect();
            anyhow!(
                "no trainyard server in --server answered the request ({}); is the leader \
                 running?",
                each.join("; ")
            )
        }
    }
}

fn status_words(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}
