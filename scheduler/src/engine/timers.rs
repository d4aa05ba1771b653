//! The engine's one timer heap: every future wake-up (cron slot, retry due,
//! attempt-timeout backstop, worker heartbeat expiry) is an entry here, and
//! the loop sleeps until the earliest one.
//!
//! Entries are never removed when they become moot (a task finished before its
//! timeout, a DAG was paused): each carries what it expected (attempt number,
//! DAG generation) and the handler re-checks it against current state when it
//! fires. That keeps arming O(log n) and cancelling free.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};
use trainyard_core::ids::{DagId, TaskInstanceId, WorkerId};

/// What a timer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerKind {
    /// The DAG's next cron slot; `generation` is the DAG entry's at arming time.
    Cron { dag_id: DagId, generation: u64 },
    /// An `up_for_retry` task's retry time.
    Retry { ti: TaskInstanceId, attempt: i32 },
    /// The attempt's timeout plus grace: fail it if no result arrived.
    Timeout { ti: TaskInstanceId, attempt: i32 },
    /// Check whether the worker's last heartbeat is older than the lost timeout.
    Heartbeat { worker: WorkerId },
}

#[derive(Debug)]
struct Entry {
    at: DateTime<Utc>,
    /// Insertion order: equal deadlines fire first-armed first.
    seq: u64,
    kind: TimerKind,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A min-heap of deadlines.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

impl Timers {
    pub fn arm(&mut self, at: DateTime<Utc>, kind: TimerKind) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            kind,
        }));
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Removes and returns every timer due at `now`, earliest first.
    pub fn pop_due(&mut self, now: DateTime<Utc>) -> Vec<TimerKind> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
            if let Some(Reverse(e)) = self.heap.pop() {
                due.push(e.kind);
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn pops_due_timers_in_deadline_then_arming_order() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut timers = Timers::default();
        let w = WorkerId::new();
        timers.arm(
            t0 + chrono::Duration::seconds(5),
            TimerKind::Heartbeat { worker: w },
        );
        timers.arm(
            t0,
            TimerKind::Retry {
                ti: TaskInstanceId::new(1),
                attempt: 1,
            },
        );
        timers.arm(
            t0,
            TimerKind::Retry {
                ti: TaskInstanceId::new(2),
                attempt: 1,
            },
        );
        assert_eq!(timers.next_deadline(), Some(t0));
        let due = timers.pop_due(t0);
        assert_eq!(
            due,
            vec![
                TimerKind::Retry {
                    ti: TaskInstanceId::new(1),
                    attempt: 1
                },
                TimerKind::Retry {
                    ti: TaskInstanceId::new(2),
                    attempt: 1
                },
            ]
        );
        assert_eq!(
            timers.next_deadline(),
            Some(t0 + chrono::Duration::seconds(5))
        );
        assert!(timers.pop_due(t0 + chrono::Duration::seconds(4)).is_empty());
        assert_eq!(timers.pop_due(t0 + chrono::Duration::seconds(5)).len(), 1);
        assert_eq!(timers.next_deadline(), None);
    }
}
