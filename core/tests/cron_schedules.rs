//! Cron schedules end to end: every syntax, five timezones, both DST
//! transitions in Berlin, New York and Sydney, month ends, leap days, the
//! `L`/`W`/`#` extensions and the errors for bad expressions. Expected
//! instants are exact RFC 3339 UTC strings.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use trainyard_core::cron::{self, CronError, Field, Schedule, fire_times};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn tz(name: &str) -> Tz {
    name.parse().unwrap()
}

/// The first `n` fire instants after `after`, as RFC 3339 UTC strings.
fn next(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
    let schedule = cron::parse(expr).unwrap();
    schedule
        .iter_after(at(after), tz(zone))
        .take(n)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .collect()
}

fn err(expr: &str) -> CronError {
    cron::parse(expr).unwrap_err()
}

// ---- syntax -------------------------------------------------------------

#[test]
fn five_field_fires_daily_at_the_given_time() {
    assert_eq!(
        next("0 3 * * *", "UTC", "2026-01-01T00:00:00Z", 2),
        ["2026-01-01T03:00:00Z", "2026-01-02T03:00:00Z"]
    );
}

#[test]
fn next_after_is_strictly_after() {
    assert_eq!(
        next("0 3 * * *", "UTC", "2026-01-01T03:00:00Z", 1),
        ["2026-01-02T03:00:00Z"]
    );
    // A sub-second later instant still excludes the slot it is in.
    assert_eq!(
        next("* * * * * *", "UTC", "2026-01-01T03:00:00.5Z", 1),
        ["2026-01-01T03:00:01Z"]
    );
}

#[test]
fn six_field_has_seconds_first() {
    assert_eq!(
        next("30 0 12 * * *", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-01-01T12:00:30Z"]
    );
    assert_eq!(
        next("*/20 * * * * *", "UTC", "2026-01-01T00:00:00Z", 3),
        [
            "2026-01-01T00:00:20Z",
            "2026-01-01T00:00:40Z",
            "2026-01-01T00:01:00Z"
        ]
    );
    assert!(cron::parse("0 0 12 * * *").unwrap().has_seconds());
    assert!(!cron::parse("0 12 * * *").unwrap().has_seconds());
}

#[test]
fn every_macro_expands_as_in_vixie_cron() {
    // 2026-01-01 is a Thursday.
    let after = "2026-01-01T00:00:00Z";
    let cases = [
        ("@hourly", "2026-01-01T01:00:00Z"),
        ("@daily", "2026-01-02T00:00:00Z"),
        ("@midnight", "2026-01-02T00:00:00Z"),
        ("@weekly", "2026-01-04T00:00:00Z"),
        ("@monthly", "2026-02-01T00:00:00Z"),
        ("@yearly", "2027-01-01T00:00:00Z"),
        ("@annually", "2027-01-01T00:00:00Z"),
        ("@YEARLY", "2027-01-01T00:00:00Z"),
    ];
    for (expr, want) in cases {
        assert_eq!(next(expr, "UTC", after, 1), [want], "{expr}");
    }
    assert_eq!(
        next("@yearly", "UTC", after, 3),
        [
            "2027-01-01T00:00:00Z",
            "2028-01-01T00:00:00Z",
            "2029-01-01T00:00:00Z"
        ]
    );
}

#[test]
fn yearly_in_a_timezone_fires_at_local_midnight() {
    assert_eq!(
        next("@yearly", "Europe/Berlin", "2026-06-01T00:00:00Z", 1),
        ["2026-12-31T23:00:00Z"]
    );
}

#[test]
fn month_and_day_names_are_case_insensitive() {
    let by_name = next("0 9 * jan,Feb mon-FRI", "UTC", "2026-01-01T00:00:00Z", 4);
    let by_number = next("0 9 * 1,2 1-5", "UTC", "2026-01-01T00:00:00Z", 4);
    assert_eq!(by_name, by_number);
    assert_eq!(
        by_name,
        [
            "2026-01-01T09:00:00Z",
            "2026-01-02T09:00:00Z",
            "2026-01-05T09:00:00Z",
            "2026-01-06T09:00:00Z"
        ]
    );
    assert_eq!(
        next("0 0 1 dec *", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-12-01T00:00:00Z"]
    );
}

#[test]
fn steps_on_star_range_and_single_start() {
    let after = "2026-01-01T00:00:00Z";
    assert_eq!(
        next("*/15 * * * *", "UTC", after, 4),
        [
            "2026-01-01T00:15:00Z",
            "2026-01-01T00:30:00Z",
            "2026-01-01T00:45:00Z",
            "2026-01-01T01:00:00Z"
        ]
    );
    assert_eq!(
        next("1-30/5 * * * *", "UTC", after, 7),
        [
            "2026-01-01T00:01:00Z",
            "2026-01-01T00:06:00Z",
            "2026-01-01T00:11:00Z",
            "2026-01-01T00:16:00Z",
            "2026-01-01T00:21:00Z",
            "2026-01-01T00:26:00Z",
            "2026-01-01T01:01:00Z"
        ]
    );
    // `5/10` is `5-59/10`.
    assert_eq!(
        next("5/10 * * * *", "UTC", after, 7),
        [
            "2026-01-01T00:05:00Z",
            "2026-01-01T00:15:00Z",
            "2026-01-01T00:25:00Z",
            "2026-01-01T00:35:00Z",
            "2026-01-01T00:45:00Z",
            "2026-01-01T00:55:00Z",
            "2026-01-01T01:05:00Z"
        ]
    );
}

#[test]
fn lists_combine_values_and_ranges() {
    assert_eq!(
        next("0,30 9,17 * * *", "UTC", "2026-01-01T00:00:00Z", 5),
        [
            "2026-01-01T09:00:00Z",
            "2026-01-01T09:30:00Z",
            "2026-01-01T17:00:00Z",
            "2026-01-01T17:30:00Z",
            "2026-01-02T09:00:00Z"
        ]
    );
    assert_eq!(
        next("0 0 1-2,15 * *", "UTC", "2026-01-01T00:00:00Z", 3),
        [
            "2026-01-02T00:00:00Z",
            "2026-01-15T00:00:00Z",
            "2026-02-01T00:00:00Z"
        ]
    );
}

#[test]
fn zero_and_seven_are_both_sunday() {
    let sundays = ["2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"];
    for expr in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "0 0 * * sun"] {
        assert_eq!(
            next(expr, "UTC", "2026-01-01T00:00:00Z", 2),
            sundays,
            "{expr}"
        );
    }
    assert_eq!(
        next("0 0 * * 5-7", "UTC", "2026-01-01T00:00:00Z", 4),
        [
            "2026-01-02T00:00:00Z",
            "2026-01-03T00:00:00Z",
            "2026-01-04T00:00:00Z",
            "2026-01-09T00:00:00Z"
        ]
    );
}

#[test]
fn both_day_fields_restricted_fire_on_either() {
    // The 13th (a Tuesday in Jan 2026) OR any Friday.
    assert_eq!(
        next("0 0 13 * FRI", "UTC", "2026-01-01T00:00:00Z", 4),
        [
            "2026-01-02T00:00:00Z",
            "2026-01-09T00:00:00Z",
            "2026-01-13T00:00:00Z",
            "2026-01-16T00:00:00Z"
        ]
    );
}

#[test]
fn a_star_day_field_makes_the_other_decide() {
    assert_eq!(
        next("0 0 * * FRI", "UTC", "2026-01-01T00:00:00Z", 2),
        ["2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z"]
    );
    assert_eq!(
        next("0 0 13 * *", "UTC", "2026-01-01T00:00:00Z", 2),
        ["2026-01-13T00:00:00Z", "2026-02-13T00:00:00Z"]
    );
    // `?` is Quartz's `*`.
    assert_eq!(
        next("0 0 ? * FRI", "UTC", "2026-01-01T00:00:00Z", 2),
        ["2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z"]
    );
    assert_eq!(
        next("0 0 13 * ?", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-01-13T00:00:00Z"]
    );
}

#[test]
fn a_stepped_star_counts_as_star_like_vixie_so_days_combine_with_and() {
    // Odd days of the month that are also Fridays (Vixie's DOM_STAR rule).
    assert_eq!(
        next("0 0 */2 * FRI", "UTC", "2026-01-01T00:00:00Z", 3),
        [
            "2026-01-09T00:00:00Z",
            "2026-01-23T00:00:00Z",
            "2026-02-13T00:00:00Z"
        ]
    );
}

// ---- timezones ------------------------------------------------------------

#[test]
fn nine_am_in_five_timezones() {
    let after = "2026-01-01T00:00:00Z";
    let cases = [
        ("UTC", "2026-01-01T09:00:00Z"),
        ("Europe/Berlin", "2026-01-01T08:00:00Z"),
        ("America/New_York", "2026-01-01T14:00:00Z"),
        // Half-hour offset, +05:30.
        ("Asia/Kolkata", "2026-01-01T03:30:00Z"),
        // Southern summer: AEDT, +11; 09:00 on Jan 1 local already passed.
        ("Australia/Sydney", "2026-01-01T22:00:00Z"),
        ("America/Sao_Paulo", "2026-01-01T12:00:00Z"),
        ("Pacific/Auckland", "2026-01-01T20:00:00Z"),
    ];
    for (zone, want) in cases {
        assert_eq!(next("0 9 * * *", zone, after, 1), [want], "{zone}");
    }
}

#[test]
fn half_hour_offset_zone_handles_hourly_jobs() {
    assert_eq!(
        next("0 * * * *", "Asia/Kolkata", "2026-01-01T00:00:00Z", 2),
        ["2026-01-01T00:30:00Z", "2026-01-01T01:30:00Z"]
    );
}

// ---- DST: Europe/Berlin ---------------------------------------------------

#[test]
fn berlin_spring_forward_runs_a_skipped_time_once_right_after_the_gap() {
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00Z).
    assert_eq!(
        next("30 2 * * *", "Europe/Berlin", "2026-03-28T00:00:00Z", 3),
        [
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-30T00:30:00Z"
        ]
    );
    // 02:00 and 02:30 both land on 03:00 local, once each.
    for expr in ["0 2 * * *", "30 2 * * *", "59 2 * * *"] {
        assert_eq!(
            next(expr, "Europe/Berlin", "2026-03-29T00:00:00Z", 1),
            ["2026-03-29T01:00:00Z"],
            "{expr}"
        );
    }
}

#[test]
fn berlin_spring_forward_collapses_quarter_hours_in_the_gap_into_one_fire() {
    assert_eq!(
        next("*/15 * * * *", "Europe/Berlin", "2026-03-29T00:30:00Z", 3),
        [
            "2026-03-29T00:45:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:15:00Z"
        ]
    );
}

#[test]
fn berlin_fall_back_runs_a_repeated_time_once_at_its_first_occurrence() {
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00Z); 02:30 happens
    // at 00:30Z and again at 01:30Z.
    assert_eq!(
        next("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    // Hourly: the second 02:30 does not fire.
    assert_eq!(
        next("30 * * * *", "Europe/Berlin", "2026-10-24T22:00:00Z", 4),
        [
            "2026-10-24T22:30:00Z",
            "2026-10-24T23:30:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-25T02:30:00Z"
        ]
    );
}

#[test]
fn berlin_fall_back_quarter_hours_skip_the_second_pass() {
    assert_eq!(
        next("*/15 * * * *", "Europe/Berlin", "2026-10-25T00:30:00Z", 3),
        [
            "2026-10-25T00:45:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T02:15:00Z"
        ]
    );
    // Starting inside the second pass (02:10 CET) goes on after it.
    assert_eq!(
        next("*/15 * * * *", "Europe/Berlin", "2026-10-25T01:10:00Z", 1),
        ["2026-10-25T02:00:00Z"]
    );
}

// ---- DST: America/New_York ------------------------------------------------

#[test]
fn new_york_spring_forward_runs_once_after_the_gap() {
    // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
    assert_eq!(
        next("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2),
        ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]
    );
}

#[test]
fn new_york_fall_back_runs_once_at_first_occurrence() {
    // 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00Z); 01:30 happens
    // at 05:30Z and 06:30Z.
    assert_eq!(
        next("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
        ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
    );
    assert_eq!(
        next("30 * * * *", "America/New_York", "2026-11-01T04:00:00Z", 3),
        [
            "2026-11-01T04:30:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-01T07:30:00Z"
        ]
    );
}

// ---- DST: Australia/Sydney (southern hemisphere) ----------------------------

#[test]
fn sydney_fall_back_in_april_runs_once_at_first_occurrence() {
    // 2026-04-05: 03:00 AEDT falls back to 02:00 AEST (16:00Z on the 4th).
    assert_eq!(
        next("30 2 * * *", "Australia/Sydney", "2026-04-04T00:00:00Z", 2),
        ["2026-04-04T15:30:00Z", "2026-04-05T16:30:00Z"]
    );
}

#[test]
fn sydney_spring_forward_in_october_runs_once_after_the_gap() {
    // 2026-10-04: 02:00 AEST jumps to 03:00 AEDT (16:00Z on the 3rd).
    assert_eq!(
        next("30 2 * * *", "Australia/Sydney", "2026-10-03T00:00:00Z", 2),
        ["2026-10-03T16:00:00Z", "2026-10-04T15:30:00Z"]
    );
}

// ---- calendar ---------------------------------------------------------------

#[test]
fn the_31st_fires_only_in_long_months() {
    assert_eq!(
        next("0 0 31 * *", "UTC", "2026-01-01T00:00:00Z", 7),
        [
            "2026-01-31T00:00:00Z",
            "2026-03-31T00:00:00Z",
            "2026-05-31T00:00:00Z",
            "2026-07-31T00:00:00Z",
            "2026-08-31T00:00:00Z",
            "2026-10-31T00:00:00Z",
            "2026-12-31T00:00:00Z"
        ]
    );
}

#[test]
fn feb_29_fires_only_in_leap_years() {
    assert_eq!(
        next("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", 3),
        [
            "2028-02-29T00:00:00Z",
            "2032-02-29T00:00:00Z",
            "2036-02-29T00:00:00Z"
        ]
    );
    // 2100 is not a leap year: 2096 is followed by 2104.
    assert_eq!(
        next("0 0 29 2 *", "UTC", "2096-03-01T00:00:00Z", 1),
        ["2104-02-29T00:00:00Z"]
    );
}

#[test]
fn impossible_dates_give_none_quickly() {
    let started = std::time::Instant::now();
    for expr in ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"] {
        let s = cron::parse(expr).unwrap();
        assert_eq!(s.next_after(at("2026-01-01T00:00:00Z"), Tz::UTC), None);
        assert_eq!(s.iter_after(at("2026-01-01T00:00:00Z"), Tz::UTC).count(), 0);
        assert_eq!(
            s.latest_at_or_before(at("2026-01-01T00:00:00Z"), Tz::UTC),
            None
        );
    }
    // A generous bound: the search is a few thousand day checks, not minutes.
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

// ---- L, W, # ------------------------------------------------------------------

#[test]
fn l_in_day_of_month_is_the_last_day() {
    assert_eq!(
        next("0 0 L * *", "UTC", "2026-01-01T00:00:00Z", 4),
        [
            "2026-01-31T00:00:00Z",
            "2026-02-28T00:00:00Z",
            "2026-03-31T00:00:00Z",
            "2026-04-30T00:00:00Z"
        ]
    );
    assert_eq!(
        next("0 0 L 2 *", "UTC", "2028-01-01T00:00:00Z", 1),
        ["2028-02-29T00:00:00Z"]
    );
}

#[test]
fn w_is_the_nearest_weekday_within_the_month() {
    // 15th 2026: Thu Jan, Sun Feb (-> Mon 16), Sun Mar (-> Mon 16), Wed Apr.
    assert_eq!(
        next("0 0 15W * *", "UTC", "2026-01-01T00:00:00Z", 4),
        [
            "2026-01-15T00:00:00Z",
            "2026-02-16T00:00:00Z",
            "2026-03-16T00:00:00Z",
            "2026-04-15T00:00:00Z"
        ]
    );
    // Saturday 15 Aug -> Friday 14th.
    assert_eq!(
        next("0 0 15W 8 *", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-08-14T00:00:00Z"]
    );
    // Saturday 1 Aug -> Monday 3rd, never back into July.
    assert_eq!(
        next("0 0 1W 8 *", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-08-03T00:00:00Z"]
    );
    // LW: last weekday; 31 May 2026 is a Sunday.
    assert_eq!(
        next("0 0 LW 5 *", "UTC", "2026-01-01T00:00:00Z", 1),
        ["2026-05-29T00:00:00Z"]
    );
}

#[test]
fn hash_is_the_nth_weekday_and_l_suffix_the_last() {
    assert_eq!(
        next("0 0 * * FRI#3", "UTC", "2026-01-01T00:00:00Z", 2),
        ["2026-01-16T00:00:00Z", "2026-02-20T00:00:00Z"]
    );
    for expr in ["0 0 * * 5L", "0 0 * * FRIL", "0 0 ? * friL"] {
        assert_eq!(
            next(expr, "UTC", "2026-01-01T00:00:00Z", 2),
            ["2026-01-30T00:00:00Z", "2026-02-27T00:00:00Z"],
            "{expr}"
        );
    }
}

#[test]
fn unsupported_extensions_say_so() {
    for (expr, field) in [
        ("0 0 L-3 * *", Field::DayOfMonth),
        ("0 0 1-5W * *", Field::DayOfMonth),
        ("0 0 * * L", Field::DayOfWeek),
        ("0 0 * * FRI#6", Field::DayOfWeek),
    ] {
        match err(expr) {
            CronError::Unsupported { field: f, .. } => assert_eq!(f, field, "{expr}"),
            other => panic!("{expr}: {other:?}"),
        }
    }
    assert!(err("0 0 L-3 * *").to_string().contains("not supported"));
}

// ---- errors ---------------------------------------------------------------------

#[test]
fn wrong_field_count_is_reported_with_the_count() {
    let e = err("0 0 * *");
    assert!(matches!(e, CronError::FieldCount { found: 4, .. }), "{e:?}");
    assert!(e.to_string().contains("has 4 fields"), "{e}");
    let e = err("0 0 0 * * * 2026");
    assert!(e.to_string().contains("year field is not supported"), "{e}");
    assert_eq!(err("   "), CronError::Empty);
}

#[test]
fn out_of_range_values_name_the_field() {
    let cases = [
        ("60 * * * *", Field::Minute, 60),
        ("0 24 * * *", Field::Hour, 24),
        ("0 0 0 * *", Field::DayOfMonth, 0),
        ("0 0 32 * *", Field::DayOfMonth, 32),
        ("0 0 * 13 *", Field::Month, 13),
        ("0 0 * * 8", Field::DayOfWeek, 8),
        ("61 0 0 * * *", Field::Second, 61),
        ("99999999999 * * * *", Field::Minute, u32::MAX),
    ];
    for (expr, field, value) in cases {
        match err(expr) {
            CronError::OutOfRange {
                field: f, value: v, ..
            } => {
                assert_eq!((f, v), (field, value), "{expr}");
            }
            other => panic!("{expr}: {other:?}"),
        }
    }
    assert_eq!(
        err("0 24 * * *").to_string(),
        "hour value 24 in `24` is out of range 0-23"
    );
}

#[test]
fn bad_names_and_tokens_are_rejected() {
    assert_eq!(
        err("0 0 * FOO *").to_string(),
        "month field: `FOO` is not a number or a month name (JAN-DEC)"
    );
    assert!(matches!(
        err("0 0 * * FUNDAY"),
        CronError::BadValue {
            field: Field::DayOfWeek,
            ..
        }
    ));
    // Day names mean nothing in the month field and vice versa.
    assert!(matches!(
        err("0 0 * MON *"),
        CronError::BadValue {
            field: Field::Month,
            ..
        }
    ));
    assert!(matches!(
        err("0 0 * * JAN"),
        CronError::BadValue {
            field: Field::DayOfWeek,
            ..
        }
    ));
    // `?` only in the day fields.
    assert!(matches!(
        err("? * * * *"),
        CronError::BadValue {
            field: Field::Minute,
            ..
        }
    ));
    assert!(matches!(
        err("1,,2 * * * *"),
        CronError::EmptyElement { .. }
    ));
    assert!(matches!(
        err("5-1 * * * *"),
        CronError::BackwardRange { .. }
    ));
    assert!(matches!(err("-5 * * * *"), CronError::BadValue { .. }));
}

#[test]
fn bad_steps_are_rejected() {
    for expr in [
        "*/0 * * * *",
        "*/x * * * *",
        "*/ * * * *",
        "0 */25 * * *",
        "/5 * * * *",
    ] {
        let e = err(expr);
        assert!(
            matches!(e, CronError::BadStep { .. } | CronError::BadValue { .. }),
            "{expr}: {e:?}"
        );
    }
    assert_eq!(
        err("*/0 * * * *").to_string(),
        "minute field: bad step in `*/0`: the step must be at least 1"
    );
}

#[test]
fn unknown_and_unsupported_macros() {
    assert!(matches!(err("@fortnightly"), CronError::UnknownMacro(_)));
    assert!(matches!(err("@reboot"), CronError::UnsupportedMacro(_)));
}

// ---- API ------------------------------------------------------------------------

#[test]
fn from_str_matches_parse_and_keeps_the_expression() {
    let s: Schedule = " 0 3 * * * ".parse().unwrap();
    assert_eq!(s, cron::parse("0 3 * * *").unwrap());
    assert_eq!(s.expression(), "0 3 * * *");
    assert_eq!(s.to_string(), "0 3 * * *");
}

#[test]
fn fire_times_honour_an_inclusive_window() {
    let s = cron::parse("0 3 * * *").unwrap();
    let got: Vec<_> = fire_times(
        &s,
        tz("Europe/Berlin"),
        at("2026-01-01T00:00:00Z"),
        Some(at("2026-01-05T02:00:00Z")),
        Some(at("2026-01-07T02:00:00Z")),
    )
    .collect();
    assert_eq!(
        got,
        [
            at("2026-01-05T02:00:00Z"),
            at("2026-01-06T02:00:00Z"),
            at("2026-01-07T02:00:00Z")
        ]
    );
    // `after` later than start wins; no end means unbounded.
    let got: Vec<_> = fire_times(
        &s,
        Tz::UTC,
        at("2026-01-10T03:00:00Z"),
        Some(at("2026-01-01T00:00:00Z")),
        None,
    )
    .take(2)
    .collect();
    assert_eq!(
        got,
        [at("2026-01-11T03:00:00Z"), at("2026-01-12T03:00:00Z")]
    );
}

#[test]
fn latest_at_or_before_finds_the_most_recent_slot() {
    let s = cron::parse("0 3 * * *").unwrap();
    assert_eq!(
        s.latest_at_or_before(at("2026-01-05T03:00:00Z"), Tz::UTC),
        Some(at("2026-01-05T03:00:00Z"))
    );
    assert_eq!(
        s.latest_at_or_before(at("2026-01-05T02:59:59Z"), Tz::UTC),
        Some(at("2026-01-04T03:00:00Z"))
    );
    // Spring-forward: the skipped 02:30 fired at 01:00Z.
    let s = cron::parse("30 2 * * *").unwrap();
    assert_eq!(
        s.latest_at_or_before(at("2026-03-29T01:05:00Z"), tz("Europe/Berlin")),
        Some(at("2026-03-29T01:00:00Z"))
    );
    // In the second pass of a repeated hour (02:40 CET), the latest slot is
    // the first-pass 02:45 CEST.
    let s = cron::parse("*/15 * * * *").unwrap();
    assert_eq!(
        s.latest_at_or_before(at("2026-10-25T01:40:00Z"), tz("Europe/Berlin")),
        Some(at("2026-10-25T00:45:00Z"))
    );
}

#[test]
fn fire_times_are_strictly_increasing_and_consistent_through_a_year() {
    let zones = [
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Sydney",
        "Asia/Kolkata",
        "Pacific/Auckland",
    ];
    let exprs = ["*/15 * * * *", "30 2 * * *", "0 0 1 * MON", "0 */3 * * *"];
    let end = at("2027-01-01T00:00:00Z");
    for zone in zones {
        for expr in exprs {
            let s = cron::parse(expr).unwrap();
            let mut prev = at("2026-01-01T00:00:00Z");
            for t in s.iter_after(prev, tz(zone)).take_while(|t| *t < end) {
                assert!(t > prev, "{expr} in {zone}: {t} after {prev}");
                assert_eq!(s.latest_at_or_before(t, tz(zone)), Some(t), "{expr} {zone}");
                prev = t;
            }
        }
    }
}

#[test]
fn describe_reads_like_plain_words() {
    let cases = [
        ("0 3 * * *", "at 03:00 every day"),
        ("*/15 * * * *", "every 15 minutes"),
        (
            "30 * * * 1-5",
            "at minute 30 past every hour on Monday through Friday",
        ),
        (
            "30 * * * MON-FRI",
            "at minute 30 past every hour on Monday through Friday",
        ),
        ("* * * * *", "every minute"),
        ("@hourly", "every hour"),
        ("@weekly", "at 00:00 on Sunday"),
        ("@monthly", "at 00:00 on day 1 of the month"),
        ("@yearly", "at 00:00 on day 1 of the month in January"),
        ("0 9,17 * * *", "at 09:00 and 17:00 every day"),
        (
            "0 0 13 * FRI",
            "at 00:00 on day 13 of the month or on Friday",
        ),
        ("0 0 * * FRI#3", "at 00:00 on the third Friday of the month"),
        ("0 0 L * *", "at 00:00 on the last day of the month"),
        ("*/10 * * * * *", "every 10 seconds"),
        ("0 30 9 * * *", "at 09:30 every day"),
        ("15 30 9 * * *", "at 09:30:15 every day"),
        ("0 0 * * 1,3,5", "at 00:00 on Monday, Wednesday and Friday"),
        (
            "0 0 * JUN-AUG SAT,SUN",
            "at 00:00 on Saturday and Sunday in June through August",
        ),
    ];
    for (expr, want) in cases {
        assert_eq!(cron::parse(expr).unwrap().describe(), want, "{expr}");
    }
}
