//! Long-running processes: `trainyard scheduler`, `trainyard worker` and
//! `trainyard standalone` (a scheduler and N workers in one process, talking
//! over loopback gRPC exactly as separate processes do).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trainyard_scheduler::app::{SchedulerApp, SchedulerConfig};

/// Settings shared by `scheduler` and `standalone`.
#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    /// Database URL: `sqlite:PATH` (default: a file in the data dir) or `postgres://user@host/db`.
    #[arg(long, env = "TRAINYARD_DB")]
    pub db: Option<String>,
    /// Folder of DAG files to load and watch for changes.
    #[arg(long, env = "TRAINYARD_DAGS", default_value = "dags")]
    pub dags: PathBuf,
    /// Where the database (SQLite), logs and artifacts are kept.
    #[arg(long, env = "TRAINYARD_DATA_DIR", default_value = ".trainyard")]
    pub data_dir: PathBuf,
    /// Address of the HTTP API and web UI.
    #[arg(long, env = "TRAINYARD_HTTP", default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Address workers connect to (gRPC).
    #[arg(long, env = "TRAINYARD_GRPC", default_value = "127.0.0.1:50051")]
    pub grpc: String,
    /// How often workers send heartbeats (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A worker silent this long is declared lost and its tasks are retried elsewhere.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub lost_worker_timeout: Duration,
    /// A named pool and its slot count, `NAME=SLOTS`; repeat for several.
    #[arg(long = "pool", value_name = "NAME=SLOTS", value_parser = parse_pool)]
    pub pools: Vec<(String, u32)>,
    /// Most missed cron slots created per DAG when catchup is on.
    #[arg(long, default_value_t = 100)]
    pub catchup_limit: usize,
}

pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    trainyard_core::dag::units::parse_duration(raw).map_err(|e| e.to_string())
}

fn parse_pool(raw: &str) -> Result<(String, u32), String> {
    let (name, slots) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?} is not NAME=SLOTS"))?;
    let slots = slots
        .parse()
        .map_err(|_| format!("pool {name}: {slots:?} is not a slot count"))?;
    Ok((name.to_owned(), slots))
}

impl SchedulerArgs {
    pub fn config(&self) -> anyhow::Result<SchedulerConfig> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create the data dir {}", self.data_dir.display()))?;
        let db = match &self.db {
            Some(db) => db.clone(),
            None => format!("sqlite:{}", self.data_dir.join("trainyard.db").display()),
        };
        super::ensure_sqlite_dir(&db)?;
        let mut config = SchedulerConfig::new(db, &self.data_dir);
        config.dags_dir = Some(self.dags.clone());
        config.heartbeat_interval = self.heartbeat_interval;
        config.lost_worker_timeout = self.lost_worker_timeout;
        config.pools = self.pools.iter().cloned().collect::<BTreeMap<_, _>>();
        config.catchup_limit = self.catchup_limit;
        Ok(config)
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

pub async fn bind(addr: &str, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow!("cannot listen on {addr} for the {what}: {e}"))
}

pub fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    super::runtime_multi()?.block_on(async {
        let config = args.config()?;
        let shutdown = CancellationToken::new();
        cancel_on_signals(shutdown.clone());
        let http = bind(&args.http, "HTTP API").await?;
        let app = SchedulerApp::start(config, http, shutdown.clone()).await?;
        eprintln!(
            "trainyard scheduler: API and UI on http://{}",
            app.http_addr
        );
        app.wait().await;
        Ok(ExitCode::SUCCESS)
    })
}
