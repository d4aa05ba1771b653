//! HA with separate processes on one PostgreSQL: three `trainyard scheduler`
//! replicas; the leader is frozen with SIGSTOP. A frozen process keeps every
//! socket open, so only a lease it cannot renew lets a standby take over: a
//! standby must answer `/readyz` 200 within the lease plus a renewal (8 s
//! with the default `--leader-lease 6s`, waited for with slack), under a
//! newer term; after SIGCONT the old leader finds the newer term and
//! reports standby, and the lease still names the new leader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{BIN, Proc, fresh_pg_database, write_dag};

/// Default lease (6 s) + one renewal interval (2 s) + slack for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(20);
const WAIT: Duration = Duration::from_secs(30);

const DAG: &str = r#"
id = "ha_lease"
[tasks.a]
command = ["true"]
"#;

struct Replica {
    proc: Proc,
    http: String,
}

fn start_replica(dir: &Path, db: &str, name: &str) -> Proc {
    let ready = dir.join(format!("{name}.ready"));
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args([
            "scheduler",
            "--db",
            db,
            "--dags",
            "dags",
            "--data-dir",
            &format!("data-{name}"),
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--ready-file",
        ])
        .arg(&ready)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    Proc {
        child,
        name: name.to_owned(),
        log,
    }
}

async fn wait_ready_file(dir: &Path, name: &str, proc: &mut Proc) -> String {
    let path = dir.join(format!("{name}.ready"));
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return v["http"].as_str().unwrap().to_owned();
        }
        assert!(
            proc.child.try_wait().unwrap().is_none(),
            "{name} exited: {}",
            proc.log_text()
        );
        assert!(Instant::now() < deadline, "{name} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz`: (status, body), or `None` when the process does not answer
/// (frozen) within the client's timeout.
async fn readyz(client: &reqwest::Client, r: &Replica) -> Option<(u16, String)> {
    let resp = client
        .get(format!("http://{}/readyz", r.http))
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.unwrap_or_default()))
}

/// (term, holder pid) of the lease.
async fn lease(pool: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT term, holder_pid FROM leader_lease")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_leader_loses_the_lease_to_a_standby_and_wakes_up_as_standby() {
    let dir = tempfile::tempdir().unwrap();
    write_dag(dir.path(), "ha_lease", DAG);
    let db = fresh_pg_database().await;
    let mut replicas = Vec::new();
    for name in ["r0", "r1", "r2"] {
        let mut proc = start_replica(dir.path(), &db, name);
        let http = wait_ready_file(dir.path(), name, &mut proc).await;
        replicas.push(Replica { proc, http });
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let pool = sqlx::PgPool::connect(&db).await.unwrap();

    // Exactly one leads: the one the lease names.
    let (term, holder) = lease(&pool).await;
    let mut leaders = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        match readyz(&client, r).await {
            Some((200, _)) => leaders.push(i),
            Some((503, body)) => assert!(body.contains("standby"), "{body}"),
            other => panic!("{}: unexpected /readyz {other:?}", r.proc.name),
        }
    }
    assert_eq!(leaders.len(), 1, "exactly one replica leads");
    let old = leaders[0];
    assert_eq!(i64::from(replicas[old].proc.pid()), holder);

    // Freeze the leader: its sessions stay open, it renews nothing.
    replicas[old].proc.signal("STOP");
    let deadline = Instant::now() + TAKEOVER;
    let new = loop {
        let mut found = None;
        for (i, r) in replicas.iter().enumerate() {
            if i != old && matches!(readyz(&client, r).await, Some((200, _))) {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no standby took over within {TAKEOVER:?} of the leader freezing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (new_term, new_holder) = lease(&pool).await;
    assert!(
        new_term > term,
        "a takeover is a newer term ({term} → {new_term})"
    );
    assert_eq!(i64::from(replicas[new].proc.pid()), new_holder);

    // Wake the old leader: it finds the newer term and stands by.
    replicas[old].proc.signal("CONT");
    let deadline = Instant::now() + WAIT;
    loop {
        match readyz(&client, &replicas[old]).await {
            Some((503, body)) if body.contains("standby") => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "the woken leader never reported standby: {}",
                    replicas[old].proc.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // The new leader still leads, under the same term: the woken one took
    // nothing back.
    assert!(matches!(
        readyz(&client, &replicas[new]).await,
        Some((200, _))
    ));
    assert_eq!(lease(&pool).await, (new_term, new_holder));
    let metrics = client
        .get(format!("http://{}/metrics", replicas[old].http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("\ntrainyard_leader 0\n"), "{metrics}");
    assert!(
        metrics.contains(&format!("\ntrainyard_leader_term {new_term}\n")),
        "{metrics}"
    );
    assert!(
        replicas[old].proc.log_text().contains("stepping down"),
        "{}",
        replicas[old].proc.log_text()
    );
    pool.close().await;
}

/// A single scheduler `kill -9`ed and started again on the same machine
/// leads at once: its predecessor's process is gone, so the new one does
/// not wait out the dead holder's lease (a frozen holder, above, still
/// exists and is waited out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_restarted_after_kill_9_on_the_same_host_leads_without_waiting_out_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    write_dag(dir.path(), "ha_lease", DAG);
    let db = fresh_pg_database().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(800))
        .build()
        .unwrap();
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let mut first = start_replica(dir.path(), &db, "first");
    let http = wait_ready_file(dir.path(), "first", &mut first).await;
    let first = Replica { proc: first, http };
    assert!(matches!(readyz(&client, &first).await, Some((200, _))));
    let (term, _) = lease(&pool).await;
    first.proc.signal("KILL");
    drop(first);

    let mut second = start_replica(dir.path(), &db, "second");
    let http = wait_ready_file(dir.path(), "second", &mut second).await;
    let second = Replica { proc: second, http };
    // Ready (the ready file) and leading, though the dead holder's 6 s
    // lease has not run out yet.
    let (status, body) = readyz(&client, &second).await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", second.proc.log_text());
    let (new_term, holder) = lease(&pool).await;
    assert_eq!(new_term, term + 1);
    assert_eq!(i64::from(second.proc.pid()), holder);
    assert!(
        second
            .proc
            .log_text()
            .contains("its process is gone; taking the lease"),
        "{}",
        second.proc.log_text()
    );
}
