//! Cron on the engine with a ManualClock: DST in Europe/Berlin and
//! America/New_York, catch-up after a 3-day outage (on and off),
//! max_active_runs with a slow run, and pause/resume.
#![allow(clippy::unwrap_used)]

mod engine_support;

use chrono::{DateTime, Duration, Utc};
use engine_support::*;
use trainyard_core::ids::DagId;
use trainyard_core::state::{RunState, TriggerKind};
use trainyard_scheduler::clock::ManualClock;

fn dag(id: &str, schedule: &str, tz: &str, extra: &str) -> String {
    format!(
        "id = \"{id}\"\nschedule = \"{schedule}\"\ntimezone = \"{tz}\"\nmax_active_runs = 100\n{extra}\n[tasks.a]\ncommand = [\"true\"]\n"
    )
}

async fn logical_dates(h: &Harness, dag: &DagId) -> Vec<DateTime<Utc>> {
    let mut d: Vec<_> = h
        .runs_of(dag)
        .await
        .into_iter()
        .filter_map(|r| r.logical_date)
        .collect();
    d.sort();
    d
}

/// Moves the clock an hour at a time for `hours`, letting the engine react each step.
async fn walk(h: &Harness, hours: i64) {
    for _ in 0..hours {
        h.advance(Duration::hours(1)).await;
    }
}

#[tokio::test]
async fn berlin_daily_0230_runs_once_per_day_across_both_dst_changes() {
    let h = Harness::sqlite(utc(2026, 3, 27, 12, 0)).await;
    let id = h
        .add_dag(&dag("berlin", "30 2 * * *", "Europe/Berlin", ""))
        .await;
    walk(&h, 72).await;
    assert_eq!(
        logical_dates(&h, &id).await,
        vec![
            utc(2026, 3, 28, 1, 30), // CET
            utc(2026, 3, 29, 1, 0),  // 02:30 does not exist: 03:00 CEST, once
            utc(2026, 3, 30, 0, 30), // CEST
        ]
    );
    h.clock.set(utc(2026, 10, 24, 12, 0));
    h.settle().await;
    let before = logical_dates(&h, &id).await.len();
    walk(&h, 48).await;
    let dates = logical_dates(&h, &id).await;
    assert_eq!(
        dates[before..].to_vec(),
        vec![utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)],
        "02:30 on fall-back day repeats but runs once, at its first occurrence"
    );
}

#[tokio::test]
async fn new_york_runs_once_on_spring_forward_and_fall_back() {
    let h = Harness::sqlite(utc(2026, 3, 7, 12, 0)).await;
    let spring = h
        .add_dag(&dag("ny_spring", "30 2 * * *", "America/New_York", ""))
        .await;
    let fall = h
        .add_dag(&dag("ny_fall", "30 1 * * *", "America/New_York", ""))
        .await;
    walk(&h, 48).await;
    assert_eq!(
        logical_dates(&h, &spring).await,
        vec![utc(2026, 3, 8, 7, 0), utc(2026, 3, 9, 6, 30)],
        "02:30 skipped on 2026-03-08 fires at 03:00 EDT"
    );
    h.clock.set(utc(2026, 10, 31, 12, 0));
    h.settle().await;
    walk(&h, 48).await;
    let dates: Vec<_> = logical_dates(&h, &fall)
        .await
        .into_iter()
        .filter(|d| *d >= utc(2026, 10, 31, 0, 0))
        .collect();
    // Jumping the clock to 10-31 12:00 runs that day's missed slot (catchup off: the latest).
    assert_eq!(
        dates,
        vec![
            utc(2026, 10, 31, 5, 30),
            utc(2026, 11, 1, 5, 30),
            utc(2026, 11, 2, 6, 30)
        ],
        "01:30 repeats on 2026-11-01 but runs once, at 01:30 EDT"
    );
}

async fn outage(catchup: bool) -> (Vec<DateTime<Utc>>, DateTime<Utc>) {
    let start = utc(2026, 5, 1, 0, 30);
    let db = TestDb::sqlite().await;
    let clock = ManualClock::new(start);
    let h = Harness::start(db, clock, |o| o.catchup_limit = 500).await;
    let id = h
        .add_dag(&dag(
            "hourly",
            "0 * * * *",
            "UTC",
            &format!("catchup = {catchup}"),
        ))
        .await;
    h.advance(Duration::hours(1)).await; // 01:00 slot
    assert_eq!(logical_dates(&h, &id).await, vec![utc(2026, 5, 1, 1, 0)]);
    let (db, clock) = h.crash().await;
    clock.advance(Duration::days(3));
    let h = Harness::start(db, clock, |o| o.catchup_limit = 500).await;
    h.settle().await;
    let dates = logical_dates(&h, &id).await;
    let kinds: Vec<TriggerKind> = h.runs_of(&id).await.iter().map(|r| r.trigger).collect();
    assert!(kinds.iter().all(|k| *k == TriggerKind::Schedule));
    (dates, utc(2026, 5, 4, 1, 30))
}

#[tokio::test]
async fn catchup_true_after_a_three_day_outage_creates_every_missed_slot_once() {
    let (dates, now) = outage(true).await;
    // 01:00 on day 1 existed; 02:00 .. 01:00 three days later are the 72 missed slots.
    assert_eq!(dates.len(), 73);
    assert_eq!(dates.first(), Some(&utc(2026, 5, 1, 1, 0)));
    assert_eq!(dates.last(), Some(&utc(2026, 5, 4, 1, 0)));
    assert!(
        dates.windows(2).all(|w| w[1] - w[0] == Duration::hours(1)),
        "no slot twice, none missing"
    );
    assert!(dates.iter().all(|d| *d <= now));
}

#[tokio::test]
async fn catchup_false_after_a_three_day_outage_creates_only_the_latest_slot() {
    let (dates, _) = outage(false).await;
    assert_eq!(dates, vec![utc(2026, 5, 1, 1, 0), utc(2026, 5, 4, 1, 0)]);
}

#[tokio::test]
async fn max_active_runs_one_with_a_slow_run_queues_then_starts_oldest_first() {
    let mut h = Harness::sqlite(utc(2026, 5, 1, 0, 30)).await;
    let id = h
        .add_dag("id = \"slow\"\nschedule = \"0 * * * *\"\nmax_active_runs = 1\noverlap = \"buffer\"\n[tasks.a]\ncommand = [\"sleep\", \"1h\"]\n")
        .await;
    let mut w = FakeWorker::join(&h.handle, registration("w", 4, &[])).await;
    h.advance(Duration::hours(1)).await;
    let first = w.next_assign().await;
    w.start(&first).await;
    h.advance(Duration::hours(1)).await; // 02:00: buffered (queued)
    h.advance(Duration::hours(1)).await; // 03:00: the buffer (max_active_runs = 1) is full: skipped
    let runs = h.runs_of(&id).await;
    assert_eq!(
        runs.iter().map(|r| r.state).collect::<Vec<_>>(),
        vec![RunState::Running, RunState::Queued]
    );
    assert!(
        w.idle(),
        "the queued run does not start while the slow one runs"
    );
    let manual = h.trigger(&id).await;
    w.succeed(&first).await;
    h.wait_run(runs[0].id, RunState::Success).await;
    let second = w.next_assign().await;
    assert_eq!(second.run_id, runs[1].id, "oldest queued run starts first");
    assert_eq!(
        h.store.get_run(manual).await.unwrap().state,
        RunState::Queued
    );
    w.succeed(&second).await;
    let third = w.next_assign().await;
    assert_eq!(third.run_id, manual);
    w.succeed(&third).await;
    h.wait_run(manual, RunState::Success).await;
}

#[tokio::test]
async fn pause_stops_the_schedule_and_resume_without_catchup_runs_the_latest_slot() {
    let h = Harness::sqlite(utc(2026, 5, 1, 0, 30)).await;
    let id = h.add_dag(&dag("pausable", "0 * * * *", "UTC", "")).await;
    h.advance(Duration::hours(1)).await;
    h.handle.pause(id.clone()).await.unwrap();
    walk(&h, 5).await;
    assert_eq!(logical_dates(&h, &id).await, vec![utc(2026, 5, 1, 1, 0)]);
    h.handle.resume(id.clone()).await.unwrap();
    h.settle().await;
    assert_eq!(
        logical_dates(&h, &id).await,
        vec![utc(2026, 5, 1, 1, 0), utc(2026, 5, 1, 6, 0)]
    );
}

#[tokio::test]
async fn backfill_creates_one_run_per_slot_and_skips_existing_ones() {
    let h = Harness::sqlite(utc(2026, 5, 10, 0, 30)).await;
    let id = h.add_dag(&dag("bf", "0 0 * * *", "UTC", "")).await;
    let first = h
        .handle
        .backfill(id.clone(), utc(2026, 5, 1, 0, 0), utc(2026, 5, 3, 0, 0))
        .await
        .unwrap();
    assert_eq!(first.len(), 3);
    let again = h
        .handle
        .backfill(id.clone(), utc(2026, 5, 1, 0, 0), utc(2026, 5, 4, 0, 0))
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "only 05-04 is new");
    let runs = h.runs_of(&id).await;
    assert!(runs.iter().all(|r| r.trigger == TriggerKind::Backfill));
}
