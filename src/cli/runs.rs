//! Client commands that talk to a running scheduler: `trigger`, `backfill`,
//! `runs list|show|cancel|clear`, `logs`.
//!
//! Wherever a run id is taken, a unique prefix of it or `latest` (with
//! `--dag`, that DAG's latest) works too (see `refs.rs`). Times are printed
//! in UTC and labelled so; `backfill` reads bare dates in the DAG's own
//! timezone.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use trainyard_core::dag::{DagSpec, cli_params_to_json};

use super::client::{Client, ServerArgs};
use super::refs;

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
    /// First logical date: RFC 3339 (`2026-01-01T00:00:00Z`) or a day
    /// (`2026-01-01`), which starts at midnight in the DAG's timezone.
    #[arg(long, value_parser = parse_when)]
    from: When,
    /// Last logical date, inclusive: RFC 3339, or a day, which includes
    /// every slot of that day in the DAG's timezone.
    #[arg(long, value_parser = parse_when)]
    to: When,
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
        /// Run id, a unique prefix of one, or `latest`.
        run_id: String,
        /// With `latest` or a prefix: only runs of this DAG.
        #[arg(long)]
        dag: Option<String>,
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Cancel a run: every unfinished task is cancelled (running ones are
    /// stopped on their worker).
    Cancel {
        /// Run id, a unique prefix of one, or `latest`.
        run_id: String,
        /// With `latest` or a prefix: only runs of this DAG.
        #[arg(long)]
        dag: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Clear a task of a run so it runs again, with every task downstream
    /// of it (`--only` for the task alone); the run becomes active again.
    Clear {
        /// Run id, a unique prefix of one, or `latest`.
        run_id: String,
        /// The task to run again.
        task_id: String,
        /// Clear only this task, not its downstream tasks.
        #[arg(long)]
        only: bool,
        /// With `latest` or a prefix: only runs of this DAG.
        #[arg(long)]
        dag: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Run id, a unique prefix of one, or `latest`.
    run_id: String,
    task_id: String,
    /// With `latest` or a prefix: only runs of this DAG.
    #[arg(long)]
    dag: Option<String>,
    /// Which attempt (default: the latest).
    #[arg(long)]
    attempt: Option<i32>,
    /// Keep printing new lines until the task ends.
    #[arg(long, short = 'f')]
    follow: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// A `--from`/`--to` as typed: an instant, or a day whose bounds depend on
/// the DAG's timezone (known only once the DAG is fetched).
#[derive(Debug, Clone, Copy)]
enum When {
    At(DateTime<Utc>),
    Day(NaiveDate),
}

fn parse_when(raw: &str) -> Result<When, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(When::At(t.with_timezone(&Utc)));
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map(When::Day)
        .map_err(|_| {
            format!("{raw:?} is neither RFC 3339 (2026-01-01T00:00:00Z) nor a day (2026-01-01)")
        })
}

/// Midnight starting `day` in `tz` (the first instant of the day when a
/// DST change makes midnight ambiguous or skips it).
fn day_start(day: NaiveDate, tz: chrono_tz::Tz) -> anyhow::Result<DateTime<Utc>> {
    let mut t = day
        .and_hms_opt(0, 0, 0)
        .ok_or_else(|| anyhow::anyhow!("{day} has no midnight"))?;
    // A skipped midnight (DST gap) starts the day at the first hour that exists.
    for _ in 0..3 {
        if let Some(at) = tz.from_local_datetime(&t).earliest() {
            return Ok(at.with_timezone(&Utc));
        }
        t += chrono::Duration::hours(1);
    }
    bail!("{day} has no start in timezone {tz}")
}

/// The instants `[from, to]` a backfill covers in the DAG's timezone: a day
/// as `--to` runs to the last instant before the next day starts.
fn backfill_range(
    from: When,
    to: When,
    tz: chrono_tz::Tz,
) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    let from = match from {
        When::At(t) => t,
        When::Day(d) => day_start(d, tz)?,
    };
    let to = match to {
        When::At(t) => t,
        When::Day(d) => {
            let next = d
                .succ_opt()
                .ok_or_else(|| anyhow::anyhow!("{d} is the last day there is"))?;
            day_start(next, tz)? - chrono::Duration::milliseconds(1)
        }
    };
    Ok((from, to))
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
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
            let detail = refs::dag_id(&client, &args.dag).await?;
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
        let created: Value = match client.send(req).await {
            Ok(resp) => resp.json().await?,
            // An unknown DAG: say which one was meant, if any is close.
            Err(e) => {
                refs::dag_id(&client, &args.dag).await?;
                return Err(e);
            }
        };
        let Some(run_id) = created["run_id"].as_str().map(str::to_owned) else {
            bail!("the server accepted the trigger but sent no run id: {created}");
        };
        // The run id alone on the first line, for scripts:
        // `run=$(trainyard trigger d | head -1)`.
        println!("{run_id}");
        for warning in created["warnings"].as_array().into_iter().flatten() {
            eprintln!("warning: {}", text(warning));
        }
        if !args.wait {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("{}/runs/{run_id}", client.base());
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
        let detail = refs::dag_id(&client, &args.dag).await?;
        let tz_name = detail["dag"]["timezone"]
            .as_str()
            .or_else(|| detail["spec"]["timezone"].as_str())
            .unwrap_or("UTC")
            .to_owned();
        let tz: chrono_tz::Tz = tz_name.parse().map_err(|_| {
            anyhow::anyhow!(
                "DAG {} has timezone {tz_name:?}, which this CLI does not know",
                args.dag
            )
        })?;
        let (from, to) = backfill_range(args.from, args.to, tz)?;
        if from > to {
            bail!(
                "--from ({}) is after --to ({}); the range is [from, to], both inclusive",
                utc_label(from),
                utc_label(to)
            );
        }
        eprintln!(
            "backfill of {} from {} to {} (inclusive; DAG timezone {tz_name})",
            args.dag,
            utc_label(from),
            utc_label(to)
        );
        let body = json!({ "from": from, "to": to });
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
                    refs::dag_id(&client, &dag).await?;
                    query.push(format!("dag_id={dag}"));
                }
                if let Some(state) = state {
                    query.push(format!("state={state}"));
                }
                let mut page = client
                    .get_json(&format!("/api/v1/runs?{}", query.join("&")))
                    .await?;
                let now = Utc::now();
                if json {
                    // The API's run objects plus the duration the table shows.
                    for run in page["runs"].as_array_mut().into_iter().flatten() {
                        let secs = duration_secs(run, now);
                        run["duration_seconds"] = secs.map_or(Value::Null, Value::from);
                    }
                    println!("{}", serde_json::to_string_pretty(&page)?);
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{:<36}  {:<20}  {:<9}  {:<9}  {:<23}  {:<23}  DURATION",
                    "RUN", "DAG", "STATE", "TRIGGER", "LOGICAL DATE", "CREATED"
                );
                for run in page["runs"].as_array().into_iter().flatten() {
                    let duration = match duration_secs(run, now) {
                        Some(s) if run["ended_at"].is_null() => format!("{} so far", seconds(s)),
                        Some(s) => seconds(s),
                        None => "-".into(),
                    };
                    println!(
                        "{:<36}  {:<20}  {:<9}  {:<9}  {:<23}  {:<23}  {}",
                        text(&run["id"]),
                        text(&run["dag_id"]),
                        text(&run["state"]),
                        text(&run["trigger"]),
                        short_time(&run["logical_date"]),
                        short_time(&run["created_at"]),
                        duration,
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            RunsCommand::Show {
                run_id,
                dag,
                json,
                server,
            } => {
                let client = Client::new(&server)?;
                let run_id = refs::run_id(&client, &run_id, dag.as_deref()).await?;
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
            RunsCommand::Cancel {
                run_id,
                dag,
                server,
            } => {
                let client = Client::new(&server)?;
                let run_id = refs::run_id(&client, &run_id, dag.as_deref()).await?;
                client
                    .send(client.request(Method::POST, &format!("/api/v1/runs/{run_id}/cancel")))
                    .await?;
                println!("run {run_id} cancelled");
                Ok(ExitCode::SUCCESS)
            }
            RunsCommand::Clear {
                run_id,
                task_id,
                only,
                dag,
                server,
            } => {
                let client = Client::new(&server)?;
                let run_id = refs::run_id(&client, &run_id, dag.as_deref()).await?;
                let detail = client.get_json(&format!("/api/v1/runs/{run_id}")).await?;
                task_of(&detail, &run_id, &task_id)?;
                let path = format!(
                    "/api/v1/runs/{run_id}/tasks/{task_id}/clear?downstream={}",
                    !only
                );
                client.send(client.request(Method::POST, &path)).await?;
                if only {
                    println!("cleared {task_id} of run {run_id}; it runs again");
                } else {
                    println!(
                        "cleared {task_id} and its downstream tasks of run {run_id}; they run again"
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// Task `task_id` of a run's detail, or an error naming the run's tasks
/// (with the closest one first when the name is a near miss).
fn task_of<'a>(detail: &'a Value, run_id: &str, task_id: &str) -> anyhow::Result<&'a Value> {
    let tasks: Vec<&Value> = detail["tasks"].as_array().into_iter().flatten().collect();
    if let Some(t) = tasks.iter().find(|t| t["task_id"] == task_id) {
        return Ok(t);
    }
    let ids: Vec<&str> = tasks.iter().filter_map(|t| t["task_id"].as_str()).collect();
    bail!(
        "run {run_id} has no task {task_id:?}{} (its tasks: {})",
        trainyard_core::suggest::did_you_mean(task_id, ids.iter().copied()),
        ids.join(", ")
    )
}

/// Seconds from start to end (or to `now` while it runs); `None` before it started.
fn duration_secs(run: &Value, now: DateTime<Utc>) -> Option<f64> {
    let at = |k: &str| {
        run[k]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let start = at("started_at")?;
    let end = at("ended_at").unwrap_or(now);
    Some((end - start).num_milliseconds().max(0) as f64 / 1000.0)
}

/// `0.42s`, `12.3s`, `4m05s`, `2h03m`.
pub(super) fn seconds(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2}s")
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else {
        // Whole seconds past a minute; the cast is of a positive, finite figure.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = s.round() as u64;
        if whole < 3600 {
            format!("{}m{:02}s", whole / 60, whole % 60)
        } else {
            format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
        }
    }
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

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An API time as `2026-01-01 03:00:00 UTC` (`-` when null).
pub(super) fn short_time(v: &Value) -> String {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| utc_label(t.with_timezone(&Utc)))
        .unwrap_or_else(|| "-".into())
}

fn utc_label(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn logs(args: LogsArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = Client::new(&args.server)?;
        let run_id = refs::run_id(&client, &args.run_id, args.dag.as_deref()).await?;
        let detail = client.get_json(&format!("/api/v1/runs/{run_id}")).await?;
        let task = task_of(&detail, &run_id, &args.task_id)?;
        let attempts = task["attempt"].as_i64().unwrap_or(0);
        match args.attempt {
            Some(a) if a < 1 || i64::from(a) > attempts => bail!(
                "task {} of run {run_id} has no attempt {a} ({})",
                args.task_id,
                match attempts {
                    0 => "it has not started yet".to_owned(),
                    1 => "it has attempt 1 only".to_owned(),
                    n => format!("its attempts are 1 to {n}"),
                }
            ),
            None if attempts == 0 && !args.follow => bail!(
                "task {} of run {run_id} has no log yet: it has not started (state {}); \
                 `--follow` waits for it",
                args.task_id,
                text(&task["state"])
            ),
            _ => {}
        }
        let args = LogsArgs { run_id, ..args };
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
