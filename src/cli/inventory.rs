//! `trainyard dags list|pause|resume` and `trainyard workers list`: what the
//! scheduler holds, over the same HTTP API as the web UI's DAG and worker
//! pages. Times are printed in UTC and say so.

use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::client::{Client, ServerArgs};
use super::runs::{runtime, short_time, text};

#[derive(Debug, Subcommand)]
pub enum DagsCommand {
    /// List the DAGs the scheduler loaded: state (active, paused, broken,
    /// removed), schedule, next run and last run.
    List {
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Stop creating scheduled runs of a DAG (manual triggers still work).
    Pause {
        dag: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Resume a paused DAG's schedule.
    Resume {
        dag: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// List the workers the scheduler knows: state, slots, CPUs, memory,
    /// GPUs and what each runs now.
    List {
        /// Print JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn dags(cmd: DagsCommand) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        match cmd {
            DagsCommand::List { json, server } => {
                let client = Client::new(&server)?;
                let list = client.get_json("/api/v1/dags").await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{:<24}  {:<8}  {:<16}  {:<23}  LAST RUN",
                    "DAG", "STATE", "SCHEDULE", "NEXT RUN"
                );
                for dag in list["dags"].as_array().into_iter().flatten() {
                    let last = &dag["recent_runs"][0];
                    let last = if last.is_null() {
                        "-".to_owned()
                    } else {
                        format!(
                            "{} {}",
                            text(&last["state"]),
                            short_time(&last["created_at"])
                        )
                    };
                    println!(
                        "{:<24}  {:<8}  {:<16}  {:<23}  {}",
                        text(&dag["id"]),
                        dag_state(dag),
                        text(&dag["schedule"]),
                        short_time(&dag["next_run"]),
                        last
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            DagsCommand::Pause { dag, server } => set_paused(&server, &dag, true).await,
            DagsCommand::Resume { dag, server } => set_paused(&server, &dag, false).await,
        }
    })
}

/// One word for where a DAG stands; a file that no longer parses is
/// `broken` even while its last good version keeps running.
fn dag_state(dag: &Value) -> &'static str {
    if dag["active"] == json!(false) {
        "removed"
    } else if !dag["parse_error"].is_null() {
        "broken"
    } else if dag["paused"] == json!(true) {
        "paused"
    } else {
        "active"
    }
}

async fn set_paused(server: &ServerArgs, dag: &str, paused: bool) -> anyhow::Result<ExitCode> {
    let client = Client::new(server)?;
    super::refs::dag_id(&client, dag).await?;
    let verb = if paused { "pause" } else { "resume" };
    client
        .send(client.request(Method::POST, &format!("/api/v1/dags/{dag}/{verb}")))
        .await?;
    println!("{dag} {}", if paused { "paused" } else { "resumed" });
    Ok(ExitCode::SUCCESS)
}

pub fn workers(cmd: WorkersCommand) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let WorkersCommand::List { json, server } = cmd;
        let client = Client::new(&server)?;
        let list = client.get_json("/api/v1/workers").await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&list)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<36}  {:<16}  {:<8}  {:>5}  {:>4}  {:>9}  {:<16}  {:>7}  LAST HEARTBEAT",
            "WORKER", "NAME", "STATE", "SLOTS", "CPUS", "MEMORY", "GPUS", "RUNNING"
        );
        for w in list["workers"].as_array().into_iter().flatten() {
            let r = &w["resources"];
            println!(
                "{:<36}  {:<16}  {:<8}  {:>5}  {:>4}  {:>9}  {:<16}  {:>7}  {}",
                text(&w["id"]),
                text(&w["name"]),
                text(&w["state"]),
                text(&r["slots"]),
                text(&r["cpus"]),
                r["memory_bytes"]
                    .as_u64()
                    .map(gib)
                    .unwrap_or_else(|| "-".into()),
                gpus(&w["gpus"]),
                w["running"].as_array().map_or(0, Vec::len),
                short_time(&w["last_heartbeat_at"]),
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn gib(bytes: u64) -> String {
    // Display only: a rounded figure.
    #[allow(clippy::cast_precision_loss)]
    let g = bytes as f64 / f64::from(1u32 << 30);
    format!("{g:.1}GiB")
}

/// `2xH100` style: count per model; `-` for none.
fn gpus(list: &Value) -> String {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for g in list.as_array().into_iter().flatten() {
        *counts
            .entry(g["model"].as_str().unwrap_or("GPU").to_owned())
            .or_default() += 1;
    }
    if counts.is_empty() {
        return "-".into();
    }
    counts
        .iter()
        .map(|(m, n)| format!("{n}x{m}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dag_reads_as_one_word_and_gpus_as_counts() {
        assert_eq!(
            dag_state(&json!({"active": true, "paused": false})),
            "active"
        );
        assert_eq!(
            dag_state(&json!({"active": true, "paused": true})),
            "paused"
        );
        assert_eq!(
            dag_state(&json!({"active": true, "paused": false, "parse_error": "x"})),
            "broken"
        );
        assert_eq!(dag_state(&json!({"active": false})), "removed");
        assert_eq!(
            gpus(&json!([{"model": "H100"}, {"model": "H100"}, {"model": "L4"}])),
            "2xH100,1xL4"
        );
        assert_eq!(gpus(&json!([])), "-");
        assert_eq!(gib(3 << 30), "3.0GiB");
    }
}
