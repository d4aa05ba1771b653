//! `trainyard bench --server URL`: the same workloads against a running
//! deployment over its HTTP API. The DAGs (`bench_fanout`, `bench_chain`, …)
//! must already be loaded there (the bench prints their files with
//! `--write-dags DIR`). Wall time is measured here the way `trigger --wait`
//! waits (the same code: `?wait_for_end` long-polls); the server's own
//! `created_at → ended_at` is reported beside it, and `client_wait_ms`: from
//! the run's stored `ended_at` to that wait returning here (meaningful when
//! the server's clock is this machine's).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::super::client::{Client, ServerArgs};
use super::RunFigures;
use super::measure::TaskTimes;
use super::workloads::DagPlan;

const RUN_DEADLINE: Duration = Duration::from_secs(600);

pub struct Remote {
    client: Client,
}

impl Remote {
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let client = Client::new(&ServerArgs {
            server: server.to_owned(),
            token,
            ca_cert: None,
        })?;
        Ok(Self { client })
    }

    /// Triggers `plan`'s DAG and polls the run until it ends.
    pub async fn run(&self, plan: &DagPlan) -> anyhow::Result<RunFigures> {
        let started = Instant::now();
        let created = self
            .client
            .post_json(
                &format!("/api/v1/dags/{}/runs", plan.dag_id),
                &json!({ "params": {} }),
            )
            .await
            .with_context(|| {
                format!(
                    "cannot trigger {} (is the DAG loaded on the server?)",
                    plan.dag_id
                )
            })?;
        let run_id = created
            .get("run_id")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("the trigger answer has no run_id: {created}"))?
            .to_owned();
        // The CLI's own `trigger --wait` path: long-polls answered when the
        // run's end commits.
        let body = tokio::time::timeout(
            RUN_DEADLINE,
            crate::cli::runs::wait_for_end(&self.client, &run_id),
        )
        .await
        .map_err(|_| anyhow!("run {run_id} did not end within {RUN_DEADLINE:?}"))??;
        let returned = Utc::now();
        let wall = started.elapsed();
        let state = body
            .pointer("/run/state")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let client_wait_ms = body
            .get("run")
            .and_then(|r| time(r, "ended_at"))
            .and_then(|ended| (returned - ended).num_microseconds())
            .map(|us| us as f64 / 1e3);
        Ok(RunFigures {
            run_id,
            state,
            wall_s: wall.as_secs_f64(),
            server_wall_s: server_wall_s(&body),
            times: task_times(&body),
            transactions: None,
            memory: None,
            peak_before: None,
            client_wait_ms,
        })
    }

    /// The server's resident memory from its `/metrics`, in bytes.
    pub async fn scheduler_rss_bytes(&self) -> Option<f64> {
        let resp = self
            .client
            .send(self.client.request(reqwest::Method::GET, "/metrics"))
            .await
            .ok()?;
        let text = resp.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("trainyard_process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse().ok())
    }
}

fn time(v: &Value, key: &str) -> Option<DateTime<Utc>> {
    v.get(key)
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
}

/// The latest attempt of every task from `GET /api/v1/runs/{id}`.
fn task_times(body: &Value) -> BTreeMap<String, TaskTimes> {
    let mut out = BTreeMap::new();
    for task in body
        .get("tasks")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(id) = task.get("task_id").and_then(Value::as_str) else {
            continue;
        };
        let latest = task
            .get("attempts")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .max_by_key(|x| x.get("attempt").and_then(Value::as_i64).unwrap_or(0))
            });
        if let Some(a) = latest {
            out.insert(
                id.to_owned(),
                TaskTimes {
                    attempt: a.get("attempt").and_then(Value::as_i64).unwrap_or(0) as i32,
                    started_at: time(a, "started_at"),
                    ended_at: time(a, "ended_at"),
                },
            );
        }
    }
    out
}

/// The server's own trigger-to-end time, when the run answer carries it.
fn server_wall_s(body: &Value) -> Option<f64> {
    let run = body.get("run")?;
    let (a, b) = (time(run, "created_at")?, time(run, "ended_at")?);
    Some((b - a).num_microseconds()? as f64 / 1e6)
}
