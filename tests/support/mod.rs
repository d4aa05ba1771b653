//! End-to-end test harness: real `trainyard` processes (one scheduler, any
//! number of workers) on a fresh PostgreSQL database, driven over HTTP.
//!
//! Waiting is always for a condition (a ready file, a run state) with a
//! generous deadline, never a fixed sleep that races.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_trainyard");

/// The PostgreSQL server tests use (`scripts/test` makes sure one answers).
pub fn pg_base_url() -> String {
    std::env::var("TRAINYARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A new, empty database on the test server; dropped by nobody (names are unique).
pub async fn fresh_pg_database() -> String {
    use sqlx::Connection;
    let base = pg_base_url();
    let mut conn = sqlx::PgConnection::connect(&base).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required for end-to-end tests and did not answer at {base}: {e}. Run the tests with scripts/test.")
    });
    let name = format!("ty_e2e_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{name}")
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {} failed", self.name);
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `trainyard ARGS` in `dir` with `envs`, its output in `dir/<name>.log`.
pub fn spawn(name: &str, args: &[String], dir: &Path, envs: &[(&str, String)]) -> Proc {
    spawn_in(name, args, dir, dir, envs)
}

/// Like `spawn`, with the log in `dir` and the process running in `cwd`.
fn spawn_in(name: &str, args: &[String], dir: &Path, cwd: &Path, envs: &[(&str, String)]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("RUST_LOG", "info,trainyard=debug");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    Proc {
        child,
        name: name.to_owned(),
        log,
    }
}

/// Addresses the scheduler wrote to its ready file.
#[derive(Debug, Clone)]
pub struct Addrs {
    pub http: String,
    pub grpc: String,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub db: String,
    pub scheduler: Option<Proc>,
    pub addrs: Addrs,
    pub workers: Vec<Proc>,
    pub http: reqwest::Client,
    /// Extra environment for every process this cluster starts (e.g. `AWS_*`).
    pub env: Vec<(&'static str, String)>,
    /// `http`, or `https` for a scheduler started with `--tls-cert` (set
    /// [`Cluster::http`] to a client that trusts its CA).
    pub scheme: &'static str,
}

/// Copies the repository's example DAGs and their jobs into `dir/dags`.
pub fn copy_example_dags(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("dags");
    copy_dir(&src, &dir.join("dags"));
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name();
        if name == "__pycache__" || name == "models" {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &dst.join(&name));
        } else {
            std::fs::copy(&path, dst.join(&name)).unwrap();
        }
    }
}

impl Cluster {
    /// A scheduler on a fresh Postgres database, serving `dir/dags`.
    pub async fn start(dir: tempfile::TempDir, extra: &[&str]) -> Cluster {
        Self::start_with_env(dir, extra, Vec::new()).await
    }

    /// Like [`Cluster::start`], with `env` set for the scheduler and every worker.
    pub async fn start_with_env(
        dir: tempfile::TempDir,
        extra: &[&str],
        env: Vec<(&'static str, String)>,
    ) -> Cluster {
        let db = fresh_pg_database().await;
        let mut cluster = Cluster {
            dir,
            db,
            scheduler: None,
            addrs: Addrs {
                http: String::new(),
                grpc: String::new(),
            },
            workers: Vec::new(),
            http: reqwest::Client::new(),
            env,
            scheme: if extra.contains(&"--tls-cert") {
                "https"
            } else {
                "http"
            },
        };
        cluster.start_scheduler(extra);
        cluster
    }

    /// (Re)starts the scheduler on the same database and ports when known.
    pub fn start_scheduler(&mut self, extra: &[&str]) {
        let ready = self.dir.path().join("scheduler.ready");
        let _ = std::fs::remove_file(&ready);
        let (http, grpc) = if self.addrs.http.is_empty() {
            ("127.0.0.1:0".to_owned(), "127.0.0.1:0".to_owned())
        } else {
            (self.addrs.http.clone(), self.addrs.grpc.clone())
        };
        let mut args: Vec<String> = [
            "scheduler",
            "--db",
            &self.db,
            "--dags",
            "dags",
            "--data-dir",
            "data",
            "--http",
            &http,
            "--grpc",
            &grpc,
            "--ready-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(ready.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let n = self
            .dir
            .path()
            .read_dir()
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("scheduler")
            })
            .count();
        let proc = spawn(
            &format!("scheduler{n}"),
            &args,
            self.dir.path(),
            &self.env_refs(),
        );
        let text = wait_for_file(&ready, Duration::from_secs(60), &proc);
        let v: Value = serde_json::from_str(&text).unwrap();
        self.addrs = Addrs {
            http: v["http"].as_str().unwrap().to_owned(),
            grpc: v["grpc"].as_str().unwrap().to_owned(),
        };
        self.scheduler = Some(proc);
    }

    pub fn stop_scheduler_hard(&mut self) {
        if let Some(mut p) = self.scheduler.take() {
            p.child.kill().unwrap();
            p.child.wait().unwrap();
        }
    }

    /// Starts `trainyard worker` connected to this scheduler, in the
    /// cluster's dir with its work dir `work-<name>` there.
    pub fn start_worker(&mut self, name: &str, gpus: &str, extra: &[&str]) -> usize {
        let dir = self.dir.path().to_path_buf();
        self.start_worker_in(&dir, name, gpus, extra)
    }

    /// Starts `trainyard worker` with `cwd` as its current directory and
    /// its work dir inside it (a machine that never saw the DAG folder);
    /// its log is still `<name>.log` in the cluster's dir.
    pub fn start_worker_in(&mut self, cwd: &Path, name: &str, gpus: &str, extra: &[&str]) -> usize {
        let mut args: Vec<String> = [
            "worker",
            "--scheduler",
            &format!("{}://{}", self.scheme, self.addrs.grpc),
            "--name",
            name,
            "--gpus",
            gpus,
            "--work-dir",
            &cwd.join(format!("work-{name}")).display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let env = self.env_refs();
        self.workers
            .push(spawn_in(name, &args, self.dir.path(), cwd, &env));
        self.workers.len() - 1
    }

    fn env_refs(&self) -> Vec<(&str, String)> {
        self.env.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addrs.http)
    }

    pub async fn get(&self, path: &str) -> Value {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    pub async fn trigger(&self, dag: &str, params: Value) -> String {
        let resp = self
            .http
            .post(self.url(&format!("/api/v1/dags/{dag}/runs")))
            .json(&json!({ "params": params }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "trigger {dag}: {status} {body}");
        body["run_id"].as_str().unwrap().to_owned()
    }

    /// Waits until `workers` workers are connected (state active).
    pub async fn wait_workers(&self, count: usize) {
        self.wait_until(Duration::from_secs(60), "workers to register", || async {
            let v = self.get("/api/v1/workers").await;
            let online = v["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["state"] == "active")
                .count();
            (online >= count).then_some(())
        })
        .await;
    }

    /// Waits for the run to reach a final state and returns its detail.
    pub async fn wait_run(&self, run: &str, within: Duration) -> Value {
        self.wait_until(within, &format!("run {run} to finish"), || async {
            let v = self.get(&format!("/api/v1/runs/{run}")).await;
            matches!(
                v["run"]["state"].as_str(),
                Some("success" | "failed" | "cancelled")
            )
            .then_some(v)
        })
        .await
    }

    /// Polls `probe` until it returns Some, failing the test with the processes' logs after `within`.
    pub async fn wait_until<T, F, Fut>(&self, within: Duration, what: &str, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.scheduler.iter().chain(self.workers.iter()) {
            let text = p.log_text();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            out.push_str(&format!("---- {} (last lines)\n", p.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

fn wait_for_file(path: &Path, within: Duration, proc: &Proc) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text;
        }
        if Instant::now() > deadline {
            panic!("{} did not become ready:\n{}", proc.name, proc.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `dir/dags/<name>.toml`.
pub fn write_dag(dir: &Path, name: &str, body: &str) {
    std::fs::create_dir_all(dir.join("dags")).unwrap();
    std::fs::write(dir.join("dags").join(format!("{name}.toml")), body).unwrap();
}

/// The attempt of a task's detail (an entry of a run detail's `tasks`) with
/// this number.
pub fn attempt_of(task: &Value, n: i64) -> &Value {
    task["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["attempt"] == n)
        .unwrap_or_else(|| panic!("no attempt {n} in {task}"))
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The task entry of a run detail.
pub fn task<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {run}"))
}

/// A scheduler with the example DAGs and two CPU workers (each with its own
/// work dir, so inputs travel through the artifact store), all registered.
pub async fn example_cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    copy_example_dags(dir.path());
    let mut cluster = Cluster::start(dir, &[]).await;
    cluster.start_worker("cpu-a", "none", &[]);
    cluster.start_worker("cpu-b", "none", &[]);
    cluster.wait_workers(2).await;
    cluster
}

/// Where `churn_retrain`'s deploy of `run` published the model: its output
/// in the scheduler's default artifact store (`data/artifacts`).
pub fn deployed_models(cluster: &Cluster, run: &str) -> std::path::PathBuf {
    cluster
        .dir
        .path()
        .join(format!("data/artifacts/runs/{run}/deploy/1/out"))
}

/// Triggers `churn_retrain` with `params`, waits, and checks the run and every
/// task succeeded; returns the run id and its detail.
pub async fn churn_run_succeeds(cluster: &Cluster, params: Value) -> (String, Value) {
    let run = cluster.trigger("churn_retrain", params).await;
    let detail = cluster.wait_run(&run, Duration::from_secs(120)).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    for t in ["ingest", "train", "evaluate", "deploy"] {
        assert_eq!(task(&detail, t)["state"], "success", "{t}: {detail}");
    }
    (run, detail)
}
