//! The store conformance suite: every test function here runs against SQLite
//! and against PostgreSQL (each test in its own database / schema, so they run
//! in parallel). See `harness.rs` for how the databases are made.
#![allow(clippy::unwrap_used)]

mod cases_artifacts;
mod cases_basic;
mod cases_lease;
mod cases_race;
mod cases_retention;
mod harness;

/// Instantiates each named case once per backend, like quickwit's
/// `metastore_test_suite!`.
macro_rules! conformance_suite {
    ($($module:ident :: $case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = crate::harness::TestDb::sqlite().await;
                    crate::$module::$case(&db).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let db = crate::harness::TestDb::postgres().await;
                    crate::$module::$case(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

conformance_suite!(
    cases_basic::migrations_are_reported_and_a_newer_schema_is_refused,
    cases_basic::dag_versions_register_once_per_content_hash,
    cases_basic::runs_are_created_atomically_and_a_schedule_slot_exists_once,
    cases_basic::run_listing_pages_newest_first,
    cases_basic::run_transitions_are_compare_and_set,
    cases_basic::forbidden_task_transitions_are_refused_by_the_store,
    cases_basic::batch_transitions_are_all_or_nothing,
    cases_basic::assignments_place_on_gpus_and_a_taken_task_fails_the_batch,
    cases_basic::retry_flow_and_stale_report_is_fenced_off,
    cases_basic::lost_worker_attempts_become_lost,
    cases_basic::metrics_are_stored_per_attempt_and_charted_across_runs,
    cases_artifacts::artifacts_record_producer_and_consumers_once,
    cases_artifacts::an_archived_log_location_is_recorded_on_its_attempt,
    cases_race::concurrent_claimers_claim_each_task_exactly_once,
    cases_race::concurrent_reporters_exactly_one_wins,
    cases_race::failed_insert_mid_run_leaves_no_run,
    cases_lease::an_old_terms_writes_are_refused_once_a_newer_term_took_the_lease,
    cases_retention::retention_prunes_old_finished_runs_and_keeps_active_and_recent_ones,
);

/// Postgres-only: a backend killed mid-transaction; the lease fence's row locks.
mod postgres_only {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn killed_create_run_transaction_leaves_no_half_written_run() {
        let db = crate::harness::TestDb::postgres().await;
        crate::cases_race::killed_transaction_leaves_no_half_written_run(&db).await;
        db.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_takeover_waits_for_an_old_terms_write_in_flight_which_is_its_last() {
        let db = crate::harness::TestDb::postgres().await;
        crate::cases_lease::a_takeover_waits_for_an_old_terms_write_in_flight_which_is_its_last(
            &db,
        )
        .await;
        db.cleanup().await;
    }
}
