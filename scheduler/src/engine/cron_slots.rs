//! Which cron slots are due: a pure function of the schedule, the DAG's
//! catch-up settings, where the schedule stopped last time and the time now.
//!
//! The engine keeps one cursor per DAG (the latest slot it has handled; after
//! a restart the store's `last_scheduled_logical_date`), asks [`plan`] for the
//! slots in `(cursor, now]` and arms a timer for the next one. The store's
//! unique (dag, logical date) index makes creating a slot twice impossible,
//! so a replayed plan is harmless.
//!
//! - `catchup = false`: only the latest due slot runs, older missed ones are dropped.
//! - `catchup = true`: every missed slot runs, oldest first, but at most
//!   `catchup_limit` of them: the most recent ones (an outage of a year on an
//!   hourly schedule must not flood the queue with 8,760 runs). The older
//!   ones are recorded as skipped slots by the engine (`runs.rs`): a count on
//!   the DAG and a row naming the first and last, never silently lost.
//! - A DAG that never ran starts counting at its `start_date`, or, without
//!   one, at the moment it was registered (so a new DAG does not backfill history).

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use trainyard_core::cron::{Schedule, fire_times};

/// Bound on slots examined in one plan (a per-second schedule down for 11 days).
const MAX_EXAMINED: usize = 1_000_000;

/// The schedule-related settings of one DAG.
#[derive(Debug, Clone)]
pub struct CronSettings<'a> {
    pub schedule: &'a Schedule,
    pub tz: Tz,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub catchup: bool,
    pub catchup_limit: usize,
}

/// What to do now and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// Slots to create now, oldest first.
    pub due: Vec<DateTime<Utc>>,
    /// Missed slots left out (catchup off, or beyond the limit).
    pub dropped: usize,
    /// The first and last slot left out, when any was.
    pub dropped_range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The first slot after `now` (None: the schedule has ended).
    pub next: Option<DateTime<Utc>>,
}

/// Plans the slots in `(cursor, now]`; `registered_at` stands in for the cursor
/// of a DAG that never had a scheduled run and has no `start_date`.
pub fn plan(
    s: &CronSettings<'_>,
    cursor: Option<DateTime<Utc>>,
    registered_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> SlotPlan {
    // Slots strictly after `after` count; a first slot exactly at start_date
    // or at registration is included.
    let after =
        cursor.unwrap_or_else(|| s.start_date.unwrap_or(registered_at) - Duration::nanoseconds(1));
    let mut due = VecDeque::new();
    let mut dropped = 0usize;
    let mut dropped_range: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    let limit = if s.catchup { s.catchup_limit.max(1) } else { 1 };
    for slot in fire_times(s.schedule, s.tz, after, s.start_date, s.end_date)
        .take_while(|t| *t <= now)
        .take(MAX_EXAMINED)
    {
        due.push_back(slot);
        if due.len() > limit
            && let Some(left_out) = due.pop_front()
        {
            dropped += 1;
            let first = dropped_range.map_or(left_out, |(first, _)| first);
            dropped_range = Some((first, left_out));
        }
    }
    let from = if now > after { now } else { after };
    let next = fire_times(s.schedule, s.tz, from, s.start_date, s.end_date).next();
    SlotPlan {
        due: due.into(),
        dropped,
        dropped_range,
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn catchup_runs_every_missed_slot_oldest_first_up_to_the_limit() {
        let sched = trainyard_core::cron::parse("0 * * * *").unwrap();
        let s = CronSettings {
            schedule: &sched,
            tz: chrono_tz::UTC,
            start_date: None,
            end_date: None,
            catchup: true,
            catchup_limit: 5,
        };
        let p = plan(
            &s,
            Some(at(2026, 1, 1, 0, 0)),
            at(2025, 1, 1, 0, 0),
            at(2026, 1, 1, 10, 30),
        );
        assert_eq!(
            p.due,
            (6..=10).map(|h| at(2026, 1, 1, h, 0)).collect::<Vec<_>>()
        );
        assert_eq!(p.dropped, 5);
        assert_eq!(
            p.dropped_range,
            Some((at(2026, 1, 1, 1, 0), at(2026, 1, 1, 5, 0)))
        );
        assert_eq!(p.next, Some(at(2026, 1, 1, 11, 0)));
    }

    #[test]
    fn without_catchup_only_the_latest_slot_runs() {
        let sched = trainyard_core::cron::parse("0 3 * * *").unwrap();
        let s = CronSettings {
            schedule: &sched,
            tz: chrono_tz::Europe::Berlin,
            start_date: None,
            end_date: None,
            catchup: false,
            catchup_limit: 100,
        };
        let p = plan(
            &s,
            Some(at(2026, 1, 1, 2, 0)),
            at(2025, 1, 1, 0, 0),
            at(2026, 1, 4, 12, 0),
        );
        assert_eq!(p.due, vec![at(2026, 1, 4, 2, 0)]);
        assert_eq!(p.dropped, 2);
    }

    #[test]
    fn a_new_dag_starts_at_registration_or_start_date_and_stops_at_end_date() {
        let sched = trainyard_core::cron::parse("0 0 * * *").unwrap();
        let mut s = CronSettings {
            schedule: &sched,
            tz: chrono_tz::UTC,
            start_date: None,
            end_date: None,
            catchup: true,
            catchup_limit: 100,
        };
        let p = plan(&s, None, at(2026, 1, 1, 12, 0), at(2026, 1, 1, 13, 0));
        assert!(p.due.is_empty());
        assert_eq!(p.next, Some(at(2026, 1, 2, 0, 0)));
        s.start_date = Some(at(2025, 12, 30, 0, 0));
        s.end_date = Some(at(2025, 12, 31, 0, 0));
        let p = plan(&s, None, at(2026, 1, 1, 12, 0), at(2026, 1, 1, 13, 0));
        assert_eq!(p.due, vec![at(2025, 12, 30, 0, 0), at(2025, 12, 31, 0, 0)]);
        assert_eq!(p.next, None);
    }
}
