//! The term fence: every engine write checks, in its own transaction, that
//! the leader lease still carries the writer's term. A leader that wakes up
//! after another replica took the lease cannot write anything.

use std::time::Duration;

use trainyard_core::ids::DagId;
use trainyard_core::state::{RunState, TaskState};
use trainyard_scheduler::store::{
    ConnectOptions, LeaseConnection, LeaseTimeouts, Replica, RunFilter, RunTransition, StoreError,
    Taken, TermFence, Write, WriteBatch,
};

use crate::harness::{TestDb, manual_run, seed_dag, seed_run, t0, task};

/// Generous: waits end on a condition, never by sleeping them out.
const WAIT: Duration = Duration::from_secs(20);

fn replica(id: &str) -> Replica {
    Replica {
        id: id.to_owned(),
        host: format!("host-{id}"),
        pid: 1,
    }
}

fn run_to(run: trainyard_core::ids::RunId, from: RunState, to: RunState) -> WriteBatch {
    WriteBatch::one(
        Write::Run(RunTransition {
            id: run,
            from,
            to,
            reason: None,
        }),
        t0(),
    )
}

fn assert_not_leader(err: StoreError, term: i64, current: Option<i64>) {
    match &err {
        StoreError::NotLeader {
            term: t,
            current: c,
            ..
        } => assert_eq!((*t, *c), (term, current), "{err}"),
        other => panic!("expected NotLeader, got {other}"),
    }
}

pub async fn an_old_terms_writes_are_refused_once_a_newer_term_took_the_lease(db: &TestDb) {
    let s = db.store.as_ref();
    let (run, _) = seed_run(s, "d", 1, TaskState::Pending).await;
    let dag = DagId::new("d");
    let first = s
        .take_lease_alone("g", &replica("a"), Duration::from_secs(60), t0())
        .await
        .unwrap();
    let fence = TermFence::new("g", first.term);
    let old = s.fenced(fence.clone());
    // While its term holds, the term's store writes.
    old.set_dag_paused(&dag, true, t0()).await.unwrap();

    let second = s
        .take_lease_alone("g", &replica("b"), Duration::from_secs(60), t0())
        .await
        .unwrap();
    assert_eq!(second.term, first.term + 1, "a new holder is a new term");

    // Every kind of engine write of the old term is refused, and none lands.
    let err = old
        .commit_batch(&run_to(run.id, RunState::Running, RunState::Failed), "old")
        .await
        .unwrap_err();
    assert_not_leader(err, first.term, Some(second.term));
    assert_eq!(s.get_run(run.id).await.unwrap().state, RunState::Running);
    let version = seed_dag(s, "d").await;
    let err = old
        .create_run(
            manual_run("d", version, vec![task("a", TaskState::Ready)]),
            "old",
            t0(),
        )
        .await
        .unwrap_err();
    assert_not_leader(err, first.term, Some(second.term));
    let runs = s.list_runs(RunFilter::default()).await.unwrap();
    assert_eq!(runs.runs.len(), 1, "the old term created no run");
    let err = old.set_dag_paused(&dag, false, t0()).await.unwrap_err();
    assert_not_leader(err, first.term, Some(second.term));
    assert!(
        s.get_dag(&dag).await.unwrap().paused,
        "the old term resumed nothing"
    );
    // The refusals woke whoever watches the term (the election).
    tokio::time::timeout(WAIT, fence.refused().notified())
        .await
        .expect("a refused write did not wake the term's watcher");

    // The new term writes; a term of a group with no lease writes nothing.
    let new = s.fenced(TermFence::new("g", second.term));
    new.commit_batch(&run_to(run.id, RunState::Running, RunState::Success), "new")
        .await
        .unwrap();
    let stray = s.fenced(TermFence::new("other-group", 1));
    let err = stray.set_dag_paused(&dag, false, t0()).await.unwrap_err();
    assert_not_leader(err, 1, None);
}

/// Counts this test's sessions (by application name) waiting on a lock.
async fn lock_waiters(pool: &sqlx::PgPool, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND wait_event_type = 'Lock'",
    )
    .bind(app)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_for(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !probe().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// PostgreSQL: an old term's write already in flight (holding the lease row
/// `FOR SHARE`) makes a takeover wait until it commits; after the takeover
/// the old term's next write is refused. So no write of an old term can
/// commit after a newer term began.
pub async fn a_takeover_waits_for_an_old_terms_write_in_flight_which_is_its_last(db: &TestDb) {
    let schema = db.schema.clone().unwrap();
    let lease_app = format!("{schema}-lease");
    let options = ConnectOptions {
        pg_schema: Some(schema.clone()),
        application_name: Some(lease_app.clone()),
        ..ConnectOptions::default()
    };
    let timeouts = LeaseTimeouts {
        statement: WAIT,
        tcp_user: Duration::from_secs(10),
        keepalive_idle: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(5),
    };
    let mut conn_a = LeaseConnection::connect(&db.url, &options, timeouts)
        .await
        .unwrap();
    let mut conn_b = LeaseConnection::connect(&db.url, &options, timeouts)
        .await
        .unwrap();
    let (a, b) = (replica("a"), replica("b"));
    let Taken::Won { lease: first, .. } = conn_a
        .try_take("g", &a, Duration::from_millis(300), None)
        .await
        .unwrap()
    else {
        panic!("a free lease was not taken");
    };
    let old = db.store.fenced(TermFence::new("g", first.term));
    let (run, _) = seed_run(db.store.as_ref(), "d", 1, TaskState::Pending).await;

    // Hold the run's row so the old term's commit stops mid-transaction,
    // after its fence took the lease row FOR SHARE.
    let raw = db.pg_pool().await;
    let mut blocker = raw.begin().await.unwrap();
    sqlx::query("SELECT id FROM runs WHERE id = $1 FOR UPDATE")
        .bind(run.id.as_uuid())
        .execute(&mut *blocker)
        .await
        .unwrap();
    let in_flight = tokio::spawn({
        let old = old.clone();
        async move {
            old.commit_batch(&run_to(run.id, RunState::Running, RunState::Success), "old")
                .await
        }
    });
    wait_for("the old term's commit waits on the run row", async || {
        lock_waiters(&raw, &schema).await == 1
    })
    .await;
    wait_for("the old term's lease expires", async || {
        conn_b.read("g").await.unwrap().is_some_and(|l| l.expired)
    })
    .await;

    // The takeover must wait for the write in flight.
    let b_id = b.id.clone();
    let takeover = tokio::spawn(async move {
        let taken = conn_b
            .try_take("g", &b, Duration::from_secs(60), Some("http://b:50051"))
            .await;
        (taken, conn_b)
    });
    wait_for("the takeover waits for the old term's commit", async || {
        lock_waiters(&raw, &lease_app).await == 1
    })
    .await;
    assert!(!takeover.is_finished());
    blocker.commit().await.unwrap();

    // The write that was in flight before the takeover commits...
    in_flight.await.unwrap().unwrap();
    let (taken, conn_b) = takeover.await.unwrap();
    match taken.unwrap() {
        Taken::Won { lease, previous } => {
            assert_eq!(lease.term, first.term + 1);
            assert_eq!(lease.grpc_url.as_deref(), Some("http://b:50051"));
            assert_eq!(previous.map(|p| p.holder), Some(a.id.clone()));
        }
        Taken::Held(l) => panic!("an expired lease was not taken over: {l:?}"),
    }
    assert_eq!(
        db.store.get_run(run.id).await.unwrap().state,
        RunState::Success
    );
    // ...and it was the old term's last: the next one is refused.
    let err = old
        .commit_batch(&run_to(run.id, RunState::Success, RunState::Failed), "old")
        .await
        .unwrap_err();
    assert_not_leader(err, first.term, Some(first.term + 1));
    // The old holder's renewal finds the new term.
    match conn_a
        .renew("g", &a, first.term, Duration::from_secs(60), None)
        .await
        .unwrap()
    {
        trainyard_scheduler::store::Renewed::Replaced(Some(l)) => {
            assert_eq!((l.term, l.holder), (first.term + 1, b_id))
        }
        other => panic!("the old holder renewed a lease it lost: {other:?}"),
    }
    conn_a.close().await;
    conn_b.close().await;
    raw.close().await;
}
