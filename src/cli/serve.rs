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
use trainyard_core::resources::ByteSize;
use trainyard_scheduler::app::{SchedulerApp, SchedulerConfig};
use trainyard_scheduler::logs::FollowLimits;
use trainyard_worker::agent::{Agent, AgentOptions, IdentityFile};
use trainyard_worker::exec::WatchdogCommand;
use trainyard_worker::gpu::{self, DiscoveryOptions, GpuSource, GpuSpec, UsageSampler};
use trainyard_worker::host::HostResources;

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
    #[arg(long, env = "TRAINYARD_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A worker silent this long is declared lost and its tasks are retried elsewhere.
    #[arg(long, env = "TRAINYARD_LOST_WORKER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub lost_worker_timeout: Duration,
    /// A named pool and its slot count, `NAME=SLOTS`; repeat for several.
    #[arg(long = "pool", value_name = "NAME=SLOTS", value_parser = parse_pool)]
    pub pools: Vec<(String, u32)>,
    /// Most missed cron slots created per DAG when catchup is on.
    #[arg(long, env = "TRAINYARD_CATCHUP_LIMIT", default_value_t = 100)]
    pub catchup_limit: usize,
    /// API token `ROLE:TOKEN` (role `viewer` or `operator`, token ≥ 16 chars); repeat
    /// for several. With any token, every request but /healthz, /readyz, login and
    /// static assets needs one (bearer header or UI login).
    #[arg(long = "api-token", value_name = "ROLE:TOKEN", value_parser = parse_api_token)]
    pub api_tokens: Vec<trainyard_scheduler::http::ApiToken>,
    /// More tokens, comma-separated `ROLE:TOKEN` (kept out of the process list).
    #[arg(
        long,
        env = "TRAINYARD_API_TOKENS",
        hide_env_values = true,
        value_name = "LIST"
    )]
    pub api_tokens_list: Option<String>,
    /// Serve the API and UI, or the worker endpoint, without authentication
    /// on a non-loopback address.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Worker join token (≥ 16 chars; workers pass it as their `--token`);
    /// repeat for several (e.g. while rotating). With any token, a worker
    /// without one is refused. Kept only as a SHA-256 digest.
    #[arg(
        long = "worker-token",
        env = "TRAINYARD_WORKER_TOKENS",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "TOKEN"
    )]
    pub worker_tokens: Vec<String>,
    /// PEM certificate (chain) to serve HTTP and gRPC over TLS; needs --tls-key.
    #[arg(
        long,
        env = "TRAINYARD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "TRAINYARD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// PEM CA: workers must present a client certificate it signed (mTLS on
    /// the worker endpoint); needs --tls-cert.
    #[arg(
        long,
        env = "TRAINYARD_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub client_ca: Option<PathBuf>,
    /// Most GPUs one worker may register (a worker claiming more is refused).
    #[arg(long, env = "TRAINYARD_MAX_WORKER_GPUS", default_value_t = 64)]
    pub max_worker_gpus: u32,
    /// Without API tokens the HTTP server answers only requests addressed to
    /// localhost, 127.0.0.1 or [::1] (a guard against DNS rebinding); this
    /// also allows HOST (a name or address, optionally with `:PORT`; `*`
    /// allows any host). Repeat for several; the env var is comma-separated.
    /// Not needed with API tokens.
    #[arg(
        long = "allowed-host",
        env = "TRAINYARD_ALLOWED_HOSTS",
        value_name = "HOST",
        value_delimiter = ',',
        value_parser = parse_allowed_host
    )]
    pub allowed_hosts: Vec<trainyard_scheduler::http::AllowedHost>,
    /// Most live log streams (`…/logs/stream`, the UI's log tail) served at once.
    #[arg(long, env = "TRAINYARD_MAX_LOG_FOLLOWERS", default_value_t = FollowLimits::default().total, value_name = "N")]
    pub max_log_followers: usize,
    /// Most live log streams one client address may hold open at once.
    #[arg(long, env = "TRAINYARD_MAX_LOG_FOLLOWERS_PER_CLIENT", default_value_t = FollowLimits::default().per_client, value_name = "N")]
    pub max_log_followers_per_client: usize,
    /// Where artifacts and archived logs are kept: `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`, `file:///dir` or a path
    /// (default: `<data dir>/artifacts`). Credentials and endpoints come from
    /// the usual env (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ALLOW_HTTP`, `GOOGLE_*`,
    /// `AZURE_*`). Workers are told this URL when they register.
    #[arg(long, env = "TRAINYARD_ARTIFACTS", value_name = "URL")]
    pub artifacts: Option<String>,
    /// HA on PostgreSQL: how long the leader lease lasts once taken or
    /// renewed (renewed every third of it). A frozen or partitioned leader
    /// loses leadership within this plus a third of it (8 s by default),
    /// and a standby takes over. At least 1s.
    #[arg(
        long,
        env = "TRAINYARD_LEADER_LEASE",
        default_value = "6s",
        value_parser = parse_lease
    )]
    pub leader_lease: Duration,
    /// HA group: the replicas that elect one leader among them (one lease
    /// row). Default: `<database>.<schema>` of the connection, so two
    /// installations in one database (different schemas) never share one.
    #[arg(long, env = "TRAINYARD_HA_GROUP", value_name = "NAME", value_parser = parse_ha_group)]
    pub ha_group: Option<String>,
    /// The worker gRPC URL this replica writes into the lease while it
    /// leads, so standbys can point workers at it (default:
    /// `http(s)://<--grpc address>`, none when that is 0.0.0.0 or ::).
    #[arg(long, env = "TRAINYARD_ADVERTISE_GRPC", value_name = "URL")]
    pub advertise_grpc: Option<String>,
    /// How long a finished run is kept after it ended, e.g. `30d`, `12h`:
    /// then its history (tasks, attempts, events, metrics, lineage), its
    /// artifacts and archived logs in the artifact store and its local logs
    /// are pruned by a background task. `0` keeps everything forever. Never
    /// pruned: active runs, a DAG's latest successful and latest scheduled
    /// run, and runs whose artifacts another run consumed.
    #[arg(
        long,
        env = "TRAINYARD_RETENTION",
        default_value = "30d",
        value_name = "DURATION",
        value_parser = parse_retention
    )]
    pub retention: Duration,
    #[command(flatten)]
    pub dag_limits: super::dag::DagLimitArgs,
    /// Most bytes of code (the DAG folder's non-TOML files) shipped with
    /// each DAG version to the workers, e.g. 64MiB; `0` ships none (tasks
    /// then run in each worker's working directory). A folder over it ships
    /// none and says so in the log.
    #[arg(
        long,
        env = "TRAINYARD_DAG_CODE_MAX_BYTES",
        default_value = "64MiB",
        value_name = "SIZE",
        value_parser = super::dag::parse_size
    )]
    pub dag_code_max_bytes: trainyard_core::resources::ByteSize,
    /// Leave files matching GLOB (relative to the DAG folder, e.g.
    /// `data/**` or `*.csv`) out of the code shipped with DAG versions.
    /// Repeat for several; the env var is comma-separated. Hidden files,
    /// `__pycache__/` and `*.pyc` are always left out.
    #[arg(
        long = "dag-code-exclude",
        env = "TRAINYARD_DAG_CODE_EXCLUDE",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub dag_code_exclude: Vec<String>,
}

fn parse_lease(raw: &str) -> Result<Duration, String> {
    let lease = parse_duration(raw)?;
    if lease < Duration::from_secs(1) {
        return Err(format!(
            "{raw:?} is too short for a leader lease: renewals every third of it need \
             database round trips; use at least 1s (default 6s)"
        ));
    }
    Ok(lease)
}

fn parse_ha_group(raw: &str) -> Result<String, String> {
    let group = raw.trim();
    if group.is_empty() || group.len() > 200 {
        return Err(format!(
            "{raw:?} is not an HA group name: use 1 to 200 characters, e.g. `prod`"
        ));
    }
    Ok(group.to_owned())
}

/// A duration, or `0` for "keep forever".
fn parse_retention(raw: &str) -> Result<Duration, String> {
    if raw.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(raw)
}

fn parse_allowed_host(raw: &str) -> Result<trainyard_scheduler::http::AllowedHost, String> {
    raw.parse()
        .map_err(|e: trainyard_scheduler::http::BadAllowedHost| e.to_string())
}

fn parse_api_token(raw: &str) -> Result<trainyard_scheduler::http::ApiToken, String> {
    raw.parse()
        .map_err(|e: trainyard_scheduler::http::AuthError| e.to_string())
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
        config.dag_limits = self.dag_limits.limits();
        config.dag_code = (self.dag_code_max_bytes.bytes() > 0).then(|| {
            trainyard_scheduler::app::DagCodeConfig {
                max_bytes: self.dag_code_max_bytes,
                exclude: self.dag_code_exclude.clone(),
            }
        });
        config.heartbeat_interval = self.heartbeat_interval;
        config.lost_worker_timeout = self.lost_worker_timeout;
        config.pools = self.pools.iter().cloned().collect::<BTreeMap<_, _>>();
        config.catchup_limit = self.catchup_limit;
        config.artifacts_url = self.artifacts.clone();
        config.retention = self.retention;
        let mut tokens = self.api_tokens.clone();
        if let Some(list) = &self.api_tokens_list {
            tokens.extend(trainyard_scheduler::http::parse_token_list(list)?);
        }
        config.auth = trainyard_scheduler::http::AuthConfig::with_tokens(tokens)
            .with_allowed_hosts(self.allowed_hosts.clone());
        config.log_follow_limits = FollowLimits {
            total: self.max_log_followers.max(1),
            per_client: self.max_log_followers_per_client.max(1),
            ..FollowLimits::default()
        };
        config.worker_auth =
            trainyard_scheduler::grpc::WorkerAuth::with_tokens(&self.worker_tokens)?;
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(trainyard_scheduler::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            }),
            _ => None,
        };
        config.max_worker_gpus = self.max_worker_gpus;
        config.leader_lease = self.leader_lease;
        config.ha_group = self.ha_group.clone();
        config.advertise_grpc = self.advertise_grpc.clone();
        Ok(config)
    }

    /// `https`/`http`, for the addresses printed at start.
    pub fn scheme(&self) -> &'static str {
        if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Refuses an unauthenticated worker endpoint beyond loopback (unless
    /// join tokens, mTLS or --insecure-no-auth).
    pub fn check_worker_auth(
        &self,
        config: &SchedulerConfig,
        grpc: &TcpListener,
    ) -> anyhow::Result<()> {
        config.worker_auth.check_bind(
            grpc.local_addr()?,
            self.client_ca.is_some(),
            self.insecure_no_auth,
        )?;
        Ok(())
    }

    /// Refuses an unauthenticated HTTP API beyond loopback (unless --insecure-no-auth).
    pub fn check_http_auth(
        &self,
        config: &SchedulerConfig,
        http: &TcpListener,
    ) -> anyhow::Result<()> {
        config
            .auth
            .check_bind(http.local_addr()?, self.insecure_no_auth)?;
        Ok(())
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

#[derive(Debug, Args)]
pub struct SchedulerCmd {
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    /// Once serving, write the bound addresses here as JSON
    /// (`{"http": "...", "grpc": "..."}`); for scripts and tests that use port 0.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
}

/// Settings of one worker (`trainyard worker`; `standalone` shares some).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The scheduler's gRPC address (`https://…` when it serves TLS); for
    /// several replicas on one PostgreSQL, every replica's address,
    /// comma-separated: the worker registers with whichever leads, moves on
    /// when a standby answers "not the leader", and follows a failover.
    #[arg(
        long,
        env = "TRAINYARD_SCHEDULER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL[,URL…]"
    )]
    pub scheduler: String,
    /// Worker join token: one of the scheduler's `--worker-token` values
    /// (not an API token), sent on every call.
    #[arg(
        long,
        env = "TRAINYARD_WORKER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// PEM CA that signed the scheduler's certificate (`https://` URLs).
    #[arg(long, env = "TRAINYARD_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// This worker's PEM client certificate, for a scheduler that requires
    /// mTLS (`--client-ca`); needs --key.
    #[arg(
        long,
        env = "TRAINYARD_WORKER_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(
        long,
        env = "TRAINYARD_WORKER_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// Name shown in the UI (default: the hostname). The worker's id and
    /// session credential are kept per name in the work dir, so a restart
    /// is the same worker; two live workers may not share a name and work dir.
    #[arg(long, env = "TRAINYARD_WORKER_NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub resources: WorkerResourceArgs,
    /// Pools/queues this worker serves, comma-separated (default: the default pool).
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Labels, `KEY=VALUE`; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Root of the per-attempt working folders (outputs, inputs, metrics).
    #[arg(long, env = "TRAINYARD_WORK_DIR", default_value = ".trainyard/work")]
    pub work_dir: PathBuf,
    /// On SIGTERM, how long running tasks may take to finish before they are cancelled.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// This worker's own artifact store URL, overriding the one the scheduler
    /// announces (e.g. another endpoint for the same bucket); credentials come
    /// from this worker's env (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    #[arg(long, env = "TRAINYARD_ARTIFACTS", value_name = "URL")]
    pub artifacts: Option<String>,
    #[command(flatten)]
    pub task_env: TaskEnvArgs,
    #[command(flatten)]
    pub work_dirs: WorkDirArgs,
}

/// What is kept of finished attempts' folders (`worker` and `standalone`).
#[derive(Debug, Clone, Args)]
pub struct WorkDirArgs {
    /// How long a failed attempt's folder (outputs, inputs, metrics file)
    /// is kept in the work dir to debug from before a periodic sweep
    /// removes it, e.g. `24h`, `30m`, `0s`. A successful attempt's folder
    /// is removed as soon as its outputs are in the artifact store.
    #[arg(
        long,
        env = "TRAINYARD_KEEP_FAILED_WORK_DIRS",
        default_value = "24h",
        value_name = "DURATION",
        value_parser = parse_duration
    )]
    pub keep_failed_work_dirs: Duration,
}

/// How tasks' environments are built (`worker` and `standalone`).
#[derive(Debug, Clone, Args)]
pub struct TaskEnvArgs {
    /// Give every task this worker's whole environment. Without it a task
    /// starts from a clean one: only PATH, HOME, LANG, TZ and the CUDA_* /
    /// NVIDIA_* variables of the worker, plus what Trainyard sets and the
    /// DAG's `env` (a task's `inherit_env = true` opts in alone).
    #[arg(
        long,
        env = "TRAINYARD_INHERIT_ENV",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub inherit_env: bool,
}

/// What a worker offers: GPUs, CPUs, memory, task slots.
#[derive(Debug, Clone, Args)]
pub struct WorkerResourceArgs {
    /// GPUs: `auto` (NVML or nvidia-smi), `none`, or a declared inventory such
    /// as `4xA100-80GB`, `2xH100-80GB,1xL4-24GB` or `H100:80GiB,H100:80GiB`.
    #[arg(long, env = "TRAINYARD_GPUS", default_value = "auto")]
    pub gpus: String,
    /// Tasks run at once.
    #[arg(long, default_value_t = 8)]
    pub slots: u32,
    /// CPUs offered (default: what the OS reports).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory offered, e.g. 64GiB (default: what the OS reports).
    #[arg(long)]
    pub memory: Option<String>,
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}

/// Writes `{"http": ..., "grpc": ...}` atomically (rename), ending in a newline.
fn write_ready_file(path: &std::path::Path, app: &SchedulerApp) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "http": app.http_addr.to_string(),
        "grpc": app.grpc_addr.to_string(),
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{body}\n"))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn scheduler(cmd: SchedulerCmd) -> anyhow::Result<ExitCode> {
    let args = cmd.scheduler;
    super::runtime_multi()?.block_on(async {
        let config = args.config()?;
        let shutdown = CancellationToken::new();
        cancel_on_signals(shutdown.clone());
        let http = bind(&args.http, "HTTP API").await?;
        args.check_http_auth(&config, &http)?;
        let grpc = bind(&args.grpc, "worker gRPC endpoint").await?;
        args.check_worker_auth(&config, &grpc)?;
        let app = SchedulerApp::start(config, http, grpc, shutdown.clone()).await?;
        let scheme = args.scheme();
        eprintln!(
            "trainyard scheduler: API and UI on {scheme}://{}, workers connect to {scheme}://{}",
            app.http_addr, app.grpc_addr
        );
        if let Some(path) = &cmd.ready_file {
            write_ready_file(path, &app)?;
        }
        app.wait().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Discovers GPUs and host resources and builds the agent's options.
async fn agent_options(
    scheduler_url: &str,
    name: Option<String>,
    resources: &WorkerResourceArgs,
    work_dir: PathBuf,
) -> anyhow::Result<AgentOptions> {
    let spec: GpuSpec = resources.gpus.parse()?;
    let (gpus, source, warning) = gpu::discover_with(&spec, &DiscoveryOptions::default()).await;
    if let Some(err) = warning {
        tracing::warn!("GPU discovery failed, running CPU-only: {err}");
    }
    let memory = match &resources.memory {
        Some(raw) => Some(
            ByteSize::parse(raw)
                .map_err(|e| anyhow!("--memory {raw:?}: {e}"))?
                .bytes(),
        ),
        None => None,
    };
    let host = HostResources::detect(resources.cpus, memory);
    tracing::info!(
        gpus = gpus.len(),
        source = ?source,
        models = ?gpus.iter().map(|g| g.model.as_str()).collect::<Vec<_>>(),
        cpus = host.cpus,
        memory_bytes = host.memory_bytes,
        "worker resources"
    );
    let mut opts = AgentOptions::new(scheduler_url, work_dir);
    if let Some(name) = name {
        opts.name = name;
    }
    opts.slots = resources.slots.max(1);
    opts.usage_sampler = matches!(source, GpuSource::Nvml | GpuSource::NvidiaSmi)
        .then(|| UsageSampler::new(source, DiscoveryOptions::default()));
    opts.gpus = gpus;
    opts.cpus = host.cpus;
    opts.memory_bytes = host.memory_bytes;
    Ok(opts)
}

/// This binary as the worker's task watchdog (`main` dispatches to it);
/// without it a killed worker's tasks' children could live on.
fn task_watchdog() -> Option<WatchdogCommand> {
    WatchdogCommand::this_binary()
        .map_err(|e| tracing::warn!("cannot find this executable to run the task watchdog: {e}"))
        .ok()
}

/// The worker's TLS settings from `--ca-cert`, `--cert`, `--key`.
fn worker_tls(args: &WorkerArgs) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    if args.ca_cert.is_none() && args.cert.is_none() {
        return Ok(None);
    }
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
    };
    let mut tls = tonic::transport::ClientTlsConfig::new();
    tls = match &args.ca_cert {
        Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read(
            "--ca-cert",
            ca,
        )?)),
        None => tls.with_webpki_roots(),
    };
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            read("--cert", cert)?,
            read("--key", key)?,
        ));
    }
    Ok(Some(tls))
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    super::runtime_multi()?.block_on(async {
        std::fs::create_dir_all(&args.work_dir)
            .with_context(|| format!("cannot create {}", args.work_dir.display()))?;
        let work_dir = std::fs::canonicalize(&args.work_dir)?;
        let mut opts = agent_options(
            &args.scheduler,
            args.name.clone(),
            &args.resources,
            work_dir.clone(),
        )
        .await?;
        opts.queues = args.queues.clone();
        opts.labels = args.labels.iter().cloned().collect();
        opts.drain_grace = args.drain_grace;
        opts.artifact_url = args.artifacts.clone();
        opts.join_token = args.token.clone();
        opts.inherit_env = args.task_env.inherit_env;
        opts.keep_failed_work_dirs = args.work_dirs.keep_failed_work_dirs;
        opts.tls = worker_tls(&args)?;
        let identity = match IdentityFile::open(&work_dir, &opts.name) {
            Ok(identity) => identity,
            Err(e) => {
                eprintln!("trainyard worker: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        opts.identity = Some(std::sync::Arc::new(identity));
        opts.watchdog = task_watchdog();
        let agent = match Agent::build(opts) {
            Ok(agent) => agent,
            Err(e) => {
                eprintln!("trainyard worker: {e}");
                return Ok(ExitCode::from(2));
            }
        };
        let handle = agent.handle();
        // SIGTERM/SIGINT drain: no new work, running tasks finish (up to the grace).
        let shutdown = CancellationToken::new();
        cancel_on_signals(shutdown.clone());
        {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                handle.drain();
            });
        }
        match agent.run(std::future::pending::<()>()).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            // Refused (wrong join token or credential, protocol, a bad
            // registration): retrying cannot help, so say why and stop.
            Err(e) => {
                eprintln!("trainyard worker: {e}");
                Ok(ExitCode::from(2))
            }
        }
    })
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub scheduler: SchedulerArgs,
    /// Workers started in this process (each gets --slots slots and --gpus GPUs).
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    #[command(flatten)]
    pub resources: WorkerResourceArgs,
    #[command(flatten)]
    pub task_env: TaskEnvArgs,
    #[command(flatten)]
    pub work_dirs: WorkDirArgs,
    /// Write the bound addresses here as JSON once serving.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Trigger one run of this DAG, wait for it, print each task's outcome and
    /// exit: 0 if the run succeeded, 1 otherwise (e.g. `--run churn_retrain`).
    #[arg(long, value_name = "DAG")]
    pub run: Option<String>,
    /// A param for `--run`, `NAME=VALUE`; repeat for several.
    #[arg(
        long = "param",
        short = 'p',
        value_name = "NAME=VALUE",
        requires = "run"
    )]
    pub params: Vec<String>,
}

pub fn standalone(args: StandaloneArgs) -> anyhow::Result<ExitCode> {
    if args.scheduler.tls_cert.is_some() {
        anyhow::bail!(
            "standalone serves plaintext on loopback for one machine; for TLS run \
             `trainyard scheduler --tls-cert … --tls-key …` and `trainyard worker` (see README, \
             \"Running it for real\")"
        );
    }
    super::runtime_multi()?.block_on(async {
        let config = args.scheduler.config()?;
        // Stop order: workers drain first (their last results reach the
        // scheduler), then the scheduler stops.
        let stop_workers = CancellationToken::new();
        let shutdown = CancellationToken::new();
        cancel_on_signals(stop_workers.clone());
        let http = bind(&args.scheduler.http, "HTTP API").await?;
        args.scheduler.check_http_auth(&config, &http)?;
        let grpc = bind(&args.scheduler.grpc, "worker gRPC endpoint").await?;
        args.scheduler.check_worker_auth(&config, &grpc)?;
        let app = SchedulerApp::start(config, http, grpc, shutdown.clone()).await?;
        let grpc_url = format!("http://{}", app.grpc_addr);
        // In-process workers join with the scheduler's own first token.
        let join_token = args.scheduler.worker_tokens.first().cloned();
        let work_root = args.scheduler.data_dir.join("work");
        std::fs::create_dir_all(&work_root)?;
        let work_root = std::fs::canonicalize(&work_root)?;
        let workers = args.workers.max(1);
        let mut agents = tokio::task::JoinSet::new();
        for i in 0..workers {
            let name = format!("standalone-{i}");
            let mut opts =
                agent_options(&grpc_url, Some(name), &args.resources, work_root.clone()).await?;
            // Workers of one process share the host: each gets an even share.
            opts.cpus = (opts.cpus / workers).max(1);
            opts.memory_bytes /= u64::from(workers);
            opts.join_token = join_token.clone();
            opts.inherit_env = args.task_env.inherit_env;
            opts.keep_failed_work_dirs = args.work_dirs.keep_failed_work_dirs;
            opts.watchdog = task_watchdog();
            let agent = Agent::build(opts)?;
            let handle = agent.handle();
            let token = stop_workers.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                handle.drain();
            });
            agents.spawn(async move {
                if let Err(err) = agent.run(std::future::pending::<()>()).await {
                    tracing::error!(error = %err, "worker stopped");
                }
            });
        }
        if args.run.is_none() {
            eprintln!(
                "trainyard standalone: UI and API on http://{} ({workers} worker(s)); try `{}`",
                app.http_addr,
                trigger_hint(app.http_addr)
            );
        }
        if let Some(path) = &args.ready_file {
            write_ready_file(path, &app)?;
        }
        if let Some(dag) = &args.run {
            let outcome = super::run_once::run_once(&app, dag, &args.params).await;
            stop_workers.cancel();
            while agents.join_next().await.is_some() {}
            shutdown.cancel();
            app.wait().await;
            return outcome;
        }
        while agents.join_next().await.is_some() {}
        shutdown.cancel();
        app.wait().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The command a person runs next, naming this server unless it is the
/// CLI's default (`--server http://127.0.0.1:8080`).
fn trigger_hint(http: std::net::SocketAddr) -> String {
    let default: std::net::SocketAddr = ([127, 0, 0, 1], 8080).into();
    if http == default {
        "trainyard trigger churn_retrain --wait".to_owned()
    } else {
        format!("trainyard trigger churn_retrain --wait --server http://{http}")
    }
}

#[cfg(test)]
mod tests {
    use super::trigger_hint;

    #[test]
    fn the_hint_names_the_server_unless_it_is_the_default() {
        assert_eq!(
            trigger_hint(([127, 0, 0, 1], 8080).into()),
            "trainyard trigger churn_retrain --wait"
        );
        assert_eq!(
            trigger_hint(([127, 0, 0, 1], 9090).into()),
            "trainyard trigger churn_retrain --wait --server http://127.0.0.1:9090"
        );
    }
}
