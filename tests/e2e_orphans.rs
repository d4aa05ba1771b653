//! No orphans, no double-booked GPUs, with real processes: a task's
//! processes (grandchildren included) die with a `kill -9`ed worker; a
//! restarted worker keeps its id and first kills whatever its predecessor
//! left; a frozen (SIGSTOP) or network-partitioned worker kills its own
//! task before the scheduler's retry of it starts elsewhere.
//!
//! The tests never kill a task process themselves: they only watch pids
//! (`/proc`) and assert that the product killed them, and when.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Cluster, attempt_of, task};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const LONG: Duration = Duration::from_secs(120);
const LOST_TIMEOUT: Duration = Duration::from_secs(3);
/// Fast liveness so the lost-worker paths take seconds.
const FAST_LIVENESS: &[&str] = &[
    "--heartbeat-interval",
    "500ms",
    "--lost-worker-timeout",
    "3s",
];

/// These tests measure deadlines of a second or two on a small, shared
/// machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Attempt 1 records its start (ms and GPUs), starts a grandchild `sleep
/// 300`, records both pids and waits; later attempts record their start and
/// succeed.
const GRANDCHILD_TASK: &str = r#"
A=$TRAINYARD_ATTEMPT
echo "$(date +%s%3N) $CUDA_VISIBLE_DEVICES" > OUT/start.$A
if [ "$A" -ge 2 ]; then echo "hold $A" >> OUT/ran.log; exit 0; fi
sleep 300 &
echo $! > OUT/gpid.$A
echo $$ > OUT/pid.$A.tmp && mv OUT/pid.$A.tmp OUT/pid.$A
wait
echo "hold $A" >> OUT/ran.log
"#;

/// Attempt 1 runs until killed, rewriting its heartbeat file every 50 ms;
/// later attempts record their start and succeed.
const BUSY_TASK: &str = r#"
A=$TRAINYARD_ATTEMPT
echo "$(date +%s%3N) $CUDA_VISIBLE_DEVICES" > OUT/start.$A
if [ "$A" -ge 2 ]; then echo "hold $A" >> OUT/ran.log; exit 0; fi
echo $$ > OUT/pid.$A.tmp && mv OUT/pid.$A.tmp OUT/pid.$A
i=0
while [ $i -lt 6000 ]; do i=$((i+1)); date +%s%3N > OUT/alive.$A; sleep 0.05; done
echo "hold $A" >> OUT/ran.log
"#;

fn setup(script: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    let script = script.replace("OUT", &out.display().to_string());
    let dag = format!(
        r#"
id = "orphans"
[tasks.hold]
shell = '''{script}'''
retries = 2
retry_delay = "100ms"
resources = {{ gpus = 1 }}
"#
    );
    std::fs::write(dir.path().join("dags/orphans.toml"), dag).unwrap();
    (dir, out)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `/proc/<pid>/stat` as (state, ppid, pgrp); `None` once the pid is gone.
fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((
        f.first()?.chars().next()?,
        f.get(1)?.parse().ok()?,
        f.get(2)?.parse().ok()?,
    ))
}

/// Runs (a zombie has released everything and only waits to be reaped).
fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|(state, _, _)| !matches!(state, 'Z' | 'X'))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live processes whose environment says they belong to `run`'s attempt.
fn processes_of_attempt(run: &str, attempt: u32) -> Vec<i32> {
    let want_run = format!("TRAINYARD_RUN_ID={run}");
    let want_attempt = format!("TRAINYARD_ATTEMPT={attempt}");
    all_pids()
        .into_iter()
        .filter(|&pid| alive(pid))
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
            vars.contains(&want_run.as_bytes()) && vars.contains(&want_attempt.as_bytes())
        })
        .collect()
}

fn read_pid(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap();
    let pid: i32 = text
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{} holds {text:?}: {e}", path.display()));
    assert!(pid > 1, "{} holds pid {pid}", path.display());
    pid
}

/// The wall-clock ms of a `start.N` file.
fn started_ms(out: &Path, attempt: u32) -> i64 {
    let text = std::fs::read_to_string(out.join(format!("start.{attempt}"))).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

async fn wait_file(cluster: &Cluster, path: &Path) {
    cluster
        .wait_until(LONG, &format!("{} to appear", path.display()), || async {
            path.exists().then_some(())
        })
        .await;
}

/// Polls `pids` every 5 ms on a thread of its own and returns the
/// wall-clock ms at which it first saw each one gone (an upper bound of
/// its death), or `None` for one still alive after `within`.
fn watch_deaths(pids: Vec<i32>, within: Duration) -> std::thread::JoinHandle<Vec<Option<i64>>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + within;
        let mut dead: Vec<Option<i64>> = vec![None; pids.len()];
        while Instant::now() < deadline && dead.iter().any(Option::is_none) {
            for (i, pid) in pids.iter().enumerate() {
                if dead[i].is_none() && !alive(*pid) {
                    dead[i] = Some(now_ms());
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        dead
    })
}

fn api_ms(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .timestamp_millis()
}

async fn worker_id(cluster: &Cluster, name: &str) -> Option<String> {
    let v = cluster.get("/api/v1/workers").await;
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name && w["state"] == "active")
        .map(|w| w["id"].as_str().unwrap().to_owned())
}

/// The worker's watchdog: its child running the watchdog argument.
fn watchdog_of(worker: i32) -> i32 {
    all_pids()
        .into_iter()
        .find(|&pid| {
            stat(pid).is_some_and(|(_, ppid, _)| ppid == worker)
                && String::from_utf8_lossy(
                    &std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default(),
                )
                .contains("__trainyard-worker-watchdog")
        })
        .unwrap_or_else(|| panic!("worker {worker} has no watchdog"))
}

/// A UTC timestamp at the start of the first log line containing `what`.
fn log_time_ms(log: &str, what: &str) -> Option<i64> {
    let line = log.lines().find(|l| l.contains(what))?;
    let stamp = line.split_whitespace().next()?;
    Some(
        chrono::DateTime::parse_from_rfc3339(stamp)
            .ok()?
            .timestamp_millis(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_task_and_grandchild_die_with_it_and_a_restart_keeps_its_id() {
    let _one = SERIAL.lock().await;
    let (dir, out) = setup(GRANDCHILD_TASK);
    let mut cluster = Cluster::start(dir, FAST_LIVENESS).await;
    let w = cluster.start_worker("gpu-box", "1xA100-80GB", &[]);
    cluster.wait_workers(1).await;
    let id = worker_id(&cluster, "gpu-box").await.unwrap();
    let run = cluster.trigger("orphans", json!({})).await;
    wait_file(&cluster, &out.join("pid.1")).await;
    let (leader, grandchild) = (read_pid(&out.join("pid.1")), read_pid(&out.join("gpid.1")));
    assert_eq!(
        stat(grandchild).unwrap().2,
        leader,
        "the sleep is in the task's group"
    );

    let deaths = watch_deaths(vec![leader, grandchild], Duration::from_secs(10));
    let killed_at = now_ms();
    cluster.workers[w].signal("KILL");
    let deaths = deaths.join().unwrap();
    let old_log = cluster.workers[w].log_text();
    for (pid, dead) in [(leader, deaths[0]), (grandchild, deaths[1])] {
        let dead = dead.unwrap_or_else(|| panic!("pid {pid} outlived its worker\n{old_log}"));
        let after = dead - killed_at;
        eprintln!("pid {pid} gone {after} ms after the worker's kill -9");
        assert!(after <= 2000, "pid {pid} died {after} ms after its worker");
    }
    assert!(processes_of_attempt(&run, 1).is_empty());

    // Restart at once, same name and work dir: the same worker.
    let restarted = cluster.start_worker("gpu-box", "1xA100-80GB", &[]);
    cluster
        .wait_until(LONG, "the restarted worker to register", || async {
            worker_id(&cluster, "gpu-box").await
        })
        .await;
    assert_eq!(worker_id(&cluster, "gpu-box").await.unwrap(), id);
    let workers = cluster.get("/api/v1/workers").await;
    assert_eq!(workers["workers"].as_array().unwrap().len(), 1, "{workers}");

    let detail = cluster.wait_run(&run, LONG).await;
    let log = cluster.workers[restarted].log_text();
    assert_eq!(
        detail["run"]["state"], "success",
        "{detail}\n{old_log}\n{log}"
    );
    let hold = task(&detail, "hold");
    assert_eq!(attempt_of(hold, 1)["outcome"], "lost", "{hold}");
    assert_eq!(attempt_of(hold, 2)["outcome"], "success", "{hold}");
    // The retry got the same GPU, after every process of attempt 1 was gone.
    let start2 = std::fs::read_to_string(out.join("start.2")).unwrap();
    assert_eq!(start2.split_whitespace().nth(1), Some("0"), "{start2}");
    let last_death = deaths.iter().flatten().max().copied().unwrap();
    assert!(
        started_ms(&out, 2) >= last_death,
        "{start2} vs {last_death}"
    );
    assert!(processes_of_attempt(&run, 1).is_empty());
    assert_eq!(
        std::fs::read_to_string(out.join("ran.log")).unwrap(),
        "hold 2\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_kills_what_its_killed_predecessor_left_before_registering() {
    let _one = SERIAL.lock().await;
    let (dir, out) = setup(GRANDCHILD_TASK);
    let mut cluster = Cluster::start(dir, FAST_LIVENESS).await;
    let w = cluster.start_worker("gpu-box", "1xA100-80GB", &[]);
    cluster.wait_workers(1).await;
    let run = cluster.trigger("orphans", json!({})).await;
    wait_file(&cluster, &out.join("pid.1")).await;
    let (leader, grandchild) = (read_pid(&out.join("pid.1")), read_pid(&out.join("gpid.1")));

    // The worker and its watchdog die together (`pkill -9 trainyard`):
    // nothing is left running that could kill the task.
    let worker_pid = cluster.workers[w].pid();
    let dog = watchdog_of(worker_pid);
    kill_9(dog);
    cluster.workers[w].signal("KILL");
    cluster.workers[w].wait_exit(LONG).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        alive(leader) && alive(grandchild),
        "expected the task to survive both"
    );

    let restarted = cluster.start_worker("gpu-box", "1xA100-80GB", &[]);
    let gone = watch_deaths(vec![leader, grandchild], Duration::from_secs(30))
        .join()
        .unwrap();
    let log = cluster.workers[restarted].log_text();
    assert!(
        gone.iter().all(Option::is_some),
        "the restart did not kill the leftovers\n{log}"
    );
    let gone = gone.iter().flatten().max().copied();
    // Killed (and waited for) before the worker registered.
    let leftover_line = "killed a task process group a previous run of this worker left behind";
    let log = cluster
        .wait_until(LONG, "the leftover line in the worker's log", || async {
            let log = cluster.workers[restarted].log_text();
            log.contains(leftover_line).then_some(log)
        })
        .await;
    let killed = log.find(leftover_line).unwrap();
    let connected = log.find("connected to the scheduler");
    assert!(connected.is_none_or(|c| c > killed), "{log}");

    let detail = cluster.wait_run(&run, LONG).await;
    let log = cluster.workers[restarted].log_text();
    assert_eq!(detail["run"]["state"], "success", "{detail}\n{log}");
    assert!(
        started_ms(&out, 2) >= gone.unwrap_or(i64::MAX),
        "the retry started before the leftovers were gone"
    );
    assert!(processes_of_attempt(&run, 1).is_empty());
}

fn kill_9(pid: i32) {
    assert!(pid > 1);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_has_its_task_killed_before_the_retry_starts() {
    let _one = SERIAL.lock().await;
    let (dir, out) = setup(BUSY_TASK);
    let mut cluster = Cluster::start(dir, FAST_LIVENESS).await;
    let frozen = cluster.start_worker("frozen", "1xA100-80GB", &[]);
    cluster.wait_workers(1).await;
    let run = cluster.trigger("orphans", json!({})).await;
    wait_file(&cluster, &out.join("pid.1")).await;
    let old = read_pid(&out.join("pid.1"));
    cluster.start_worker("healthy", "1xA100-80GB", &[]);
    cluster.wait_workers(2).await;

    let death = watch_deaths(vec![old], Duration::from_secs(30));
    let stopped_at = now_ms();
    cluster.workers[frozen].signal("STOP");
    // Past the lost timeout the task is retried on the healthy worker.
    wait_file(&cluster, &out.join("start.2")).await;
    let retry_started = started_ms(&out, 2);
    let died = death.join().unwrap()[0];
    cluster.workers[frozen].signal("CONT");
    let log = cluster.workers[frozen].log_text();
    let died = died.unwrap_or_else(|| panic!("the frozen worker's task was never killed\n{log}"));
    let fence = log_time_ms(&log, "fencing: killed task process group")
        .unwrap_or_else(|| panic!("no fence line\n{log}"));
    eprintln!(
        "stopped at 0, fenced at {} ms, task gone by {} ms, retry started at {} ms",
        fence - stopped_at,
        died - stopped_at,
        retry_started - stopped_at
    );
    assert!(
        died <= retry_started,
        "the old copy ran on past its retry's start"
    );
    assert!(
        died - stopped_at <= LOST_TIMEOUT.as_millis() as i64,
        "killed {} ms after the freeze",
        died - stopped_at
    );

    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    let hold = task(&detail, "hold");
    assert_eq!(attempt_of(hold, 1)["outcome"], "lost", "{hold}");
    assert!(api_ms(&attempt_of(hold, 2)["started_at"]) >= died, "{hold}");
    assert_eq!(hold["worker"], "healthy");
    assert_eq!(
        std::fs::read_to_string(out.join("ran.log")).unwrap(),
        "hold 2\n"
    );
}

/// A TCP proxy that can stop forwarding without closing anything: bytes
/// it holds stay held, connections stay open (a partition, not a crash).
struct Proxy {
    addr: String,
    stalled: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, flag.clone()));
                tokio::spawn(pump(ro, wi, flag.clone()));
            }
        });
        Proxy { addr, stalled }
    }

    fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            // Hold the bytes (and both sockets) forever.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_worker_kills_its_task_within_the_lost_timeout() {
    let _one = SERIAL.lock().await;
    let (dir, out) = setup(BUSY_TASK);
    let mut cluster = Cluster::start(dir, FAST_LIVENESS).await;
    let proxy = Proxy::start(cluster.addrs.grpc.clone()).await;
    let direct = std::mem::replace(&mut cluster.addrs.grpc, proxy.addr.clone());
    let cut = cluster.start_worker("cut-off", "1xA100-80GB", &[]);
    cluster.addrs.grpc = direct;
    cluster.wait_workers(1).await;
    let run = cluster.trigger("orphans", json!({})).await;
    wait_file(&cluster, &out.join("pid.1")).await;
    let old = read_pid(&out.join("pid.1"));
    cluster.start_worker("direct", "1xA100-80GB", &[]);
    cluster.wait_workers(2).await;

    let death = watch_deaths(vec![old], Duration::from_secs(30));
    let stalled_at = now_ms();
    proxy.stall();
    let died = death.join().unwrap()[0];
    let log = cluster.workers[cut].log_text();
    let died = died.unwrap_or_else(|| panic!("the cut-off worker's task was never killed\n{log}"));
    assert!(
        log.contains("fencing: stopping an attempt (SIGTERM)"),
        "{log}"
    );
    eprintln!("partitioned at 0, task gone by {} ms", died - stalled_at);
    assert!(
        died - stalled_at <= LOST_TIMEOUT.as_millis() as i64,
        "killed {} ms after the partition",
        died - stalled_at
    );

    wait_file(&cluster, &out.join("start.2")).await;
    assert!(
        died <= started_ms(&out, 2),
        "the old copy ran on past its retry's start"
    );
    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    let hold = task(&detail, "hold");
    assert_eq!(attempt_of(hold, 1)["outcome"], "lost", "{hold}");
    assert_eq!(hold["worker"], "direct");
}
