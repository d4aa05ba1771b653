//! Trigger rules: given the states of a task's direct upstream tasks, decide
//! whether it waits, becomes ready, is skipped or is marked upstream_failed.
//!
//! Pure and Airflow-like. "Failed" below means `failed`, `upstream_failed` or
//! `cancelled` (a cancelled upstream never produced what its successors need).
//!
//! | rule          | ready when                 | otherwise, once decided                  |
//! |---------------|----------------------------|------------------------------------------|
//! | `all_success` | all succeeded              | any failed → upstream_failed; else any skipped → skipped (decided as soon as one is known) |
//! | `all_done`    | all terminal               | —                                        |
//! | `one_success` | any succeeded (at once)    | all terminal, none succeeded: any failed → upstream_failed, else skipped |
//! | `one_failed`  | any failed (at once)       | all terminal, none failed → skipped      |
//! | `none_failed` | all terminal, none failed  | any failed → upstream_failed (at once)   |
//!
//! A task without upstream tasks is ready as soon as its run starts. The
//! `when` gate is applied by the caller after a `Ready` decision.

use trainyard_core::dag::TriggerRule;
use trainyard_core::state::TaskState;

/// What a pending task should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not decided yet: some upstream task is still to settle.
    Wait,
    Ready,
    Skip,
    UpstreamFailed,
}

/// Counts of upstream outcomes.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    success: usize,
    failed: usize,
    skipped: usize,
    unfinished: usize,
}

fn tally(upstream: impl IntoIterator<Item = TaskState>) -> Tally {
    let mut t = Tally::default();
    for s in upstream {
        match s {
            TaskState::Success => t.success += 1,
            TaskState::Failed | TaskState::UpstreamFailed | TaskState::Cancelled => t.failed += 1,
            TaskState::Skipped => t.skipped += 1,
            _ => t.unfinished += 1,
        }
    }
    t
}

/// Applies `rule` to the states of the direct upstream tasks.
pub fn decide(rule: TriggerRule, upstream: impl IntoIterator<Item = TaskState>) -> Decision {
    let t = tally(upstream);
    let all_done = t.unfinished == 0;
    match rule {
        TriggerRule::AllSuccess => {
            if t.failed > 0 {
                Decision::UpstreamFailed
            } else if t.skipped > 0 {
                Decision::Skip
            } else if all_done {
                Decision::Ready
            } else {
                Decision::Wait
            }
        }
        TriggerRule::AllDone => {
            if all_done {
                Decision::Ready
            } else {
                Decision::Wait
            }
        }
        TriggerRule::OneSuccess => {
            if t.success > 0 {
                Decision::Ready
            } else if !all_done {
                Decision::Wait
            } else if t.failed > 0 {
                Decision::UpstreamFailed
            } else if t.skipped > 0 {
                Decision::Skip
            } else {
                // No upstream at all.
                Decision::Ready
            }
        }
        TriggerRule::OneFailed => {
            if t.failed > 0 {
                Decision::Ready
            } else if !all_done {
                Decision::Wait
            } else if t.success + t.skipped == 0 {
                Decision::Ready
            } else {
                Decision::Skip
            }
        }
        TriggerRule::NoneFailed => {
            if t.failed > 0 {
                Decision::UpstreamFailed
            } else if all_done {
                Decision::Ready
            } else {
                Decision::Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::{Skip, Wait};
    const READY: Decision = Decision::Ready;
    const UF: Decision = Decision::UpstreamFailed;
    use TaskState::*;
    use TriggerRule::*;

    #[test]
    fn roots_are_ready_under_every_rule() {
        for rule in [AllSuccess, AllDone, OneSuccess, OneFailed, NoneFailed] {
            assert_eq!(decide(rule, []), READY, "{rule:?}");
        }
    }

    #[test]
    fn all_success_waits_then_propagates_failure_and_skips() {
        assert_eq!(decide(AllSuccess, [Success, Running]), Wait);
        assert_eq!(decide(AllSuccess, [Success, Success]), READY);
        assert_eq!(decide(AllSuccess, [Failed, Running]), UF);
        assert_eq!(decide(AllSuccess, [UpstreamFailed, Success]), UF);
        assert_eq!(decide(AllSuccess, [Skipped, Success]), Skip);
        assert_eq!(decide(AllSuccess, [Skipped, Failed]), UF);
        assert_eq!(decide(AllSuccess, [Cancelled]), UF);
    }

    #[test]
    fn all_done_runs_after_anything() {
        assert_eq!(decide(AllDone, [Failed, Running]), Wait);
        assert_eq!(decide(AllDone, [Failed, Skipped, Success]), READY);
        assert_eq!(decide(AllDone, [UpForRetry]), Wait);
    }

    #[test]
    fn one_success_fires_early_and_fails_when_none_can_succeed() {
        assert_eq!(decide(OneSuccess, [Success, Running]), READY);
        assert_eq!(decide(OneSuccess, [Failed, Running]), Wait);
        assert_eq!(decide(OneSuccess, [Failed, Skipped]), UF);
        assert_eq!(decide(OneSuccess, [Skipped, Skipped]), Skip);
    }

    #[test]
    fn one_failed_fires_early_and_skips_when_all_passed() {
        assert_eq!(decide(OneFailed, [Failed, Running]), READY);
        assert_eq!(decide(OneFailed, [Success, Running]), Wait);
        assert_eq!(decide(OneFailed, [Success, Skipped]), Skip);
    }

    #[test]
    fn none_failed_accepts_skips() {
        assert_eq!(decide(NoneFailed, [Skipped, Success]), READY);
        assert_eq!(decide(NoneFailed, [Skipped, Running]), Wait);
        assert_eq!(decide(NoneFailed, [Failed, Running]), UF);
    }
}
