//! The leader election on PostgreSQL, two [`LeaderElection`]s on one schema
//! (two replicas): a lease that is not renewed expires and the other takes
//! it over with the next term, after which the old holder steps down at its
//! next renewal; a write refused by the fence ends the term at once; two HA
//! groups never interfere. Postgres being down FAILS these tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trainyard_core::ids::DagId;
use trainyard_scheduler::ha::{ElectionOptions, Held, LeaderElection, Role};
use trainyard_scheduler::store::{ConnectOptions, Store, StoreError, connect_with};

/// Generous: waits end on an event, never by sleeping them out.
const WAIT: Duration = Duration::from_secs(20);

struct Db {
    url: String,
    schema: String,
    store: Arc<dyn Store>,
}

async fn db() -> Db {
    let url = std::env::var("TRAINYARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("el_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("election tests need PostgreSQL at {url}: {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let options = ConnectOptions {
        pg_schema: Some(schema.clone()),
        max_connections: 4,
        ..ConnectOptions::default()
    };
    let store = connect_with(&url, options).await.unwrap();
    Db { url, schema, store }
}

impl Db {
    fn election(&self, group: Option<&str>, lease: Duration) -> LeaderElection {
        let mut opts = ElectionOptions::new(self.url.clone());
        opts.connect.pg_schema = Some(self.schema.clone());
        opts.group = group.map(str::to_owned);
        opts.lease = lease;
        opts.retry_interval = Duration::from_millis(100);
        LeaderElection::new(opts, self.store.clone()).unwrap()
    }

    async fn cleanup(self) {
        self.store.close().await;
        let admin = sqlx::PgPool::connect(&self.url).await.unwrap();
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
    }
}

fn term_of(e: &LeaderElection) -> i64 {
    e.fence().expect("a held term").term
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unrenewed_lease_is_taken_over_with_the_next_term_and_its_holder_steps_down() {
    let db = db().await;
    let lease = Duration::from_secs(1);
    let mut a = db.election(None, lease);
    let mut b = db.election(None, lease);
    assert!(a.try_acquire().await, "a free lease is taken");
    a.mark_leading();
    let first = term_of(&a);
    let group = a.fence().unwrap().group;
    assert!(group.ends_with(&format!(".{}", db.schema)), "{group}");
    assert!(!b.try_acquire().await, "a running lease is not taken");
    assert_eq!(
        b.lease().borrow().as_ref().map(|l| l.term),
        Some(first),
        "the standby sees the leader's term"
    );
    // `a` renews nothing (as if frozen): `b` takes over once it expired.
    let shutdown = CancellationToken::new();
    tokio::time::timeout(WAIT, b.acquire(&shutdown))
        .await
        .expect("the expired lease was never taken over");
    assert_eq!(term_of(&b), first + 1, "a takeover is the next term");
    // `a` wakes up: its first renewal finds the newer term.
    let held = tokio::time::timeout(WAIT, a.hold(&shutdown)).await.unwrap();
    assert_eq!(held, Held::Lost);
    assert_eq!(*a.role().borrow(), Role::Standby);
    // Its old term's writes are refused.
    let old = db.store.fenced(a.fence().unwrap());
    let err = old
        .set_dag_paused(&DagId::new("nope"), true, chrono::Utc::now())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotLeader { .. }), "{err}");
    b.step_down().await;
    a.step_down().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_refused_by_the_fence_ends_the_term_before_the_next_renewal() {
    let db = db().await;
    // Renewals every 20 s: only the refusal can end the term in time.
    let mut a = db.election(Some("g"), Duration::from_secs(60));
    assert!(a.try_acquire().await);
    a.mark_leading();
    let fence = a.fence().unwrap();
    let shutdown = CancellationToken::new();
    let holding = tokio::spawn(async move {
        let held = a.hold(&shutdown).await;
        (held, a)
    });
    // Another replica took the lease (an operator's hand here; a frozen
    // leader's successor in production).
    let pool = sqlx::PgPool::connect_with(
        std::str::FromStr::from_str(&db.url)
            .map(|o: sqlx::postgres::PgConnectOptions| {
                o.options([("search_path", db.schema.as_str())])
            })
            .unwrap(),
    )
    .await
    .unwrap();
    sqlx::query("UPDATE leader_lease SET term = term + 1, holder = 'someone-else'")
        .execute(&pool)
        .await
        .unwrap();
    let engine_store = db.store.fenced(fence);
    let err = engine_store
        .set_dag_paused(&DagId::new("nope"), true, chrono::Utc::now())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotLeader { .. }), "{err}");
    let (held, a) = tokio::time::timeout(WAIT, holding)
        .await
        .expect("the refused write did not end the term")
        .unwrap();
    assert_eq!(held, Held::Lost);
    assert_eq!(*a.role().borrow(), Role::Standby);
    pool.close().await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_ha_groups_on_one_database_each_elect_their_own_leader() {
    let db = db().await;
    let lease = Duration::from_secs(30);
    let mut a = db.election(Some("blue"), lease);
    let mut b = db.election(Some("green"), lease);
    assert!(a.try_acquire().await);
    assert!(
        b.try_acquire().await,
        "another group's lease does not block this one"
    );
    assert_eq!((term_of(&a), term_of(&b)), (1, 1));
    let mut c = db.election(Some("blue"), lease);
    assert!(!c.try_acquire().await, "the same group has one leader");
    a.step_down().await;
    // A released lease is free at once.
    assert!(c.try_acquire().await);
    assert_eq!(term_of(&c), 2);
    b.step_down().await;
    c.step_down().await;
    db.cleanup().await;
}
