//! A small HTTP client for the scheduler's `/api/v1`, shared by the client
//! commands (`trigger`, `runs`, `logs`, `backfill`).

use anyhow::{Context, anyhow};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where the scheduler's HTTP API is.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// The scheduler's HTTP address.
    #[arg(
        long,
        env = "TRAINYARD_SERVER",
        default_value = "http://127.0.0.1:8080",
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
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(args: &ServerArgs) -> anyhow::Result<Self> {
        let mut base = args.server.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            base = format!("http://{base}");
        }
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
            base,
            token: args.token.clone(),
            http: http.build()?,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    /// Sends, and turns a non-2xx answer into an error carrying the API's message.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the trainyard server at {} (is it running? set --server or TRAINYARD_SERVER)", self.base))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned());
        Err(anyhow!("{} ({})", message, status_words(status)))
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

fn status_words(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}
