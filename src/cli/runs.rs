//! Client commands that talk to a running scheduler: `trigger`, `backfill`,
//! `runs list|show`, `logs`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use trainyard_core::dag::{DagSpec, cli_params_to_json};

use super::client::{Client, ServerArgs};

/// How often `--wait` and `--follow` look at the run again when the server
/// cannot tell them (an older server, log streams refused by its limits).
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// The DAG to run.
    dag: String,
    /// A param for this run, `NAME=VALUE`; repeat for several. Values are
    /// checked against the DAG's declared params and their types.
    #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Wait for the run to end; exit 0 if it succeeded, 1 otherwise.
    #[arg(long)]
    wait: bool,
    /// Idempotency key: triggering twice with the same key returns the first run.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The DAG to backfill.
    dag: String,
    /// First logical date (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long, value_parser = parse_time)]
    from: DateTime<Utc>,
    /// Last logical date, inclusive.
    #[arg(long, value_parser = parse_time)]
    to: DateTime<Utc>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List recent runs, newest first.
    List {
        /// Only runs of this DAG.
        #[arg(long)]
        dag: Option<String>,
        /// Only runs in these states (comma-separated: queued,running,success,failed,cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one run: its state and every task's state, attempts, worker and GPUs.
    Show {
        run_id: String,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    run_id: String,
    task_id: String,
    /// Which attempt (default: the latest).
    #[arg(long)]
    attempt: Option<i32>,
    /// Keep printing new lines until the task ends.
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    server: ServerArgs,
}

fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("{raw:?} is neither RFC 3339 nor YYYY-MM-DD"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "success" | "failed" | "cancelled")
}

pub fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = Client::new(&args.server)?;
        let mut params = serde_json::Map::new();
        if !args.params.is_empty() {
            // Typed conversion needs the declared params: `--param epochs=3` is an
            // integer for one DAG and a string for another.
            let detail = client
                .get_json(&format!("/api/v1/dags/{}", args.dag))
                .await?;
            let spec: DagSpec =
                serde_json::from_value(detail["spec"].clone()).with_context(|| {
                    format!("DAG {} has no loadable version on the server", args.dag)
                })?;
            params = cli_params_to_json(&spec.params, &args.params)?;
        }
        let mut req = client
            .request(Method::POST, &format!("/api/v1/dags/{}/runs", args.dag))
            .json(&json!({ "params": params }));
        if let Some(key) = &args.idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        let created: Value = client.send(req).await?.json().await?;
        let run_id = created["run_id"].as_str().unwrap_or_default().to_owned();
        println!("{run_id}");
        for warning in created["warnings"].as_array().into_iter().flatten() {
            eprintln!("warning: {}", warning.as_str().unwrap_or_default());
        }
        if !args.wait {
            return Ok(ExitCode::SUCCESS);
        }
        let detail = wait_for_end(&client, &run_id).await?;
        let state = text(&detail["run"]["state"]);
        eprintln!("run {run_id} {state}");
        print_tasks(&detail, &mut std::io::stderr());
        Ok(if state == "success" {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

/// How long one `?wait_for_end` long-poll asks the server to hold on.
const LONG_POLL: Duration = Duration::from_secs(30);

/// The run's detail once it has ended. Each request is a long-poll the
/// server answers the moment the run ends (`?wait_for_end`), so the CLI
/// returns as soon as the end is committed, with no polling interval.
pub(crate) async fn wait_for_end(client: &Client, run_id: &str) -> anyhow::Result<Value> {
    let path = format!(
        "/api/v1/runs/{run_id}?wait_for_end={}s",
        LONG_POLL.as_secs()
    );
    loop {
        let asked = std::time::Instant::now();
        let detail = client.get_json(&path).await?;
        if is_terminal(detail["run"]["state"].as_str().unwrap_or_default()) {
            return Ok(detail);
        }
        if asked.elapsed() < LONG_POLL / 2 {
            // Answered early with the run unfinished: a server that does not
            // know `wait_for_end` yet. Do not hammer it.
            tokio::time::sleep(POLL).await;
        }
    }
}

pub fn backfill(args: BackfillArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = Client::new(&args.server)?;
        let body = json!({ "from": args.from, "to": args.to });
        let created = client
            .post_json(&format!("/api/v1/dags/{}/backfill", args.dag), &body)
            .await?;
        let runs = created["run_ids"].as_array().cloned().unwrap_or_default();
        for run in &runs {
            println!("{}", run.as_str().unwrap_or_default());
        }
        eprintln!("created {} backfill runs", runs.len());
        Ok(ExitCode::SUCCESS)
    })
}

pub fn runs(cmd: RunsCommand) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        match cmd {
            RunsCommand::List {
                dag,
                state,
                limit,
                json,
                server,
            } => {
                let client = Client::new(&server)?;
                let mut query = vec![format!("limit={limit}")];
                if let Some(dag) = dag {
                    query.push(format!("dag_id={dag}"));
                }
                if let Some(state) = state {
                    query.push(format!("state={state}"));
                }
                let page = client
                    .get_json(&format!("/api/v1/runs?{}", query.join("&")))
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&page)?);
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{:<36}  {:<20}  {:<9}  {:<9}  {:<20}  CREATED",
                    "RUN", "DAG", "STATE", "TRIGGER", "LOGICAL DATE"
                );
                for run in page["runs"].as_array().into_iter().flatten() {
                    println!(
                        "{:<36}  {:<20}  {:<9}  {:<9}  {:<20}  {}",
                        text(&run["id"]),
                        text(&run["dag_id"]),
                        text(&run["state"]),
                        text(&run["trigger"]),
                        short_time(&run["logical_date"]),
                        short_time(&run["created_at"]),
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            RunsCommand::Show {
                run_id,
                json,
                server,
            } => {
                let client = Client::new(&server)?;
                let detail = client.get_json(&format!("/api/v1/runs/{run_id}")).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&detail)?);
                    return Ok(ExitCode::SUCCESS);
                }
                let run = &detail["run"];
                println!(
                    "run {}  dag {}  state {}",
                    text(&run["id"]),
                    text(&run["dag_id"]),
                    text(&run["state"])
                );
                println!(
                    "trigger {}  logical date {}  started {}  ended {}",
                    text(&run["trigger"]),
                    short_time(&run["logical_date"]),
                    short_time(&run["started_at"]),
                    short_time(&run["ended_at"]),
                );
                if let Some(why) = run["wait_reason"].as_str() {
                    println!("waiting: {why}");
                }
                print_tasks(&detail, &mut std::io::stdout());
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn print_tasks(detail: &Value, out: &mut dyn std::io::Write) {
    let _ = writeln!(
        out,
        "{:<24}  {:<16}  {:>7}  {:<20}  {:<8}  NOTE",
        "TASK", "STATE", "ATTEMPT", "WORKER", "GPUS"
    );
    for task in detail["tasks"].as_array().into_iter().flatten() {
        let gpus: Vec<String> = task["gpus"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| g.to_string())
            .collect();
        let note = task["wait_reason"]
            .as_str()
            .or_else(|| task["skip_reason"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                task["attempts"]
                    .as_array()
                    .and_then(|a| a.last())
                    .and_then(|a| a["error"].as_str())
                    .unwrap_or_default()
                    .to_owned()
            });
        let _ = writeln!(
            out,
            "{:<24}  {:<16}  {:>3}/{:<3}  {:<20}  {:<8}  {}",
            text(&task["task_id"]),
            text(&task["state"]),
            task["attempt"],
            task["max_attempts"],
            text(&task["worker"]),
            if gpus.is_empty() {
                "-".to_owned()
            } else {
                gpus.join(",")
            },
            note
        );
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short_time(v: &Value) -> String {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = Client::new(&args.server)?;
        let base = format!("/api/v1/runs/{}/tasks/{}/logs", args.run_id, args.task_id);
        if !args.follow {
            let path = match args.attempt {
                Some(a) => format!("{base}?attempt={a}"),
                None => base,
            };
            let text = client
                .send(client.request(Method::GET, &path))
                .await?
                .text()
                .await?;
            print!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
        follow(&client, &args, &base).await
    })
}

/// Prints the log so far, then whatever is appended, until the task reaches a
/// final state. The server's live stream (`…/logs/stream`, Server-Sent
/// Events) says when something was written or the task ended; each time,
/// the log is read again and what is new is printed, so a line shows as soon
/// as it is stored, with no polling interval, and nothing is printed twice
/// or lost between the stream and the stored log. Where the server refuses
/// a stream (its follower limits), the log is re-read every 200 ms instead.
async fn follow(client: &Client, args: &LogsArgs, base: &str) -> anyhow::Result<ExitCode> {
    if args.attempt.is_some() {
        bail!("--attempt cannot be combined with --follow (it follows the latest attempt)");
    }
    let mut printed = Printed::default();
    loop {
        // Subscribed before the read: whatever is written after it wakes us.
        let stream = client
            .send(client.request(Method::GET, &format!("{base}/stream")))
            .await;
        printed.catch_up(client, base).await?;
        let Ok(mut stream) = stream else {
            // Refused (too many streams) or not served: read again shortly.
            if task_finished(client, args).await? {
                printed.catch_up(client, base).await?;
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(POLL).await;
            continue;
        };
        let mut events = SseEvents::default();
        loop {
            let chunk = match stream.chunk().await {
                Ok(Some(c)) => c,
                // The stream closed (server restart, proxy): open a new one.
                Ok(None) | Err(_) => break,
            };
            events.push(&chunk);
            let mut ended = false;
            while let Some(event) = events.next_event() {
                ended |= event == "end";
            }
            printed.catch_up(client, base).await?;
            if ended {
                return Ok(ExitCode::SUCCESS);
            }
        }
        if task_finished(client, args).await? {
            printed.catch_up(client, base).await?;
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// What `--follow` has printed: the attempt and how many bytes of its log.
#[derive(Default)]
struct Printed {
    attempt: Option<String>,
    bytes: usize,
}

impl Printed {
    /// Reads the latest attempt's log and prints what is new.
    async fn catch_up(&mut self, client: &Client, base: &str) -> anyhow::Result<()> {
        let resp = client.send(client.request(Method::GET, base)).await?;
        let attempt = resp
            .headers()
            .get("x-trainyard-attempt")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if attempt != self.attempt {
            // A retry started: its log is a new file.
            if self.attempt.is_some() {
                println!("--- attempt {} ---", attempt.as_deref().unwrap_or("?"));
            }
            self.attempt = attempt;
            self.bytes = 0;
        }
        let text = resp.text().await?;
        if let Some(new) = text.get(self.bytes..) {
            print!("{new}");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            self.bytes = text.len();
        }
        Ok(())
    }
}

/// Whether the followed task (or its run) has reached a final state.
async fn task_finished(client: &Client, args: &LogsArgs) -> anyhow::Result<bool> {
    let detail = client
        .get_json(&format!("/api/v1/runs/{}", args.run_id))
        .await?;
    Ok(detail["tasks"].as_array().into_iter().flatten().any(|t| {
        t["task_id"] == args.task_id.as_str()
            && matches!(
                t["state"].as_str(),
                Some("success" | "failed" | "skipped" | "upstream_failed" | "cancelled")
            )
    }) || is_terminal(detail["run"]["state"].as_str().unwrap_or_default()))
}

/// Server-Sent Events split out of a byte stream: yields each event's name
/// (`message` when it has none); the data is not needed here.
#[derive(Default)]
struct SseEvents {
    buf: Vec<u8>,
}

impl SseEvents {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next_event(&mut self) -> Option<String> {
        let text = &self.buf;
        let end = text.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8_lossy(&text[..end]).into_owned();
        self.buf.drain(..end + 2);
        let name = block
            .lines()
            .find_map(|l| l.strip_prefix("event:"))
            .map_or("message", str::trim)
            .to_owned();
        Some(name)
    }
}
