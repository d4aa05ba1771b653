//! Unit tests for the cron internals: bit search, gap resolution, and that no
//! input (random text, random valid-looking expressions, extreme instants)
//! makes parsing or searching panic.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use proptest::prelude::*;

use super::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn a_day_long_gap_fires_at_its_end() {
    // Samoa skipped 2011-12-30 entirely (UTC-10 -> UTC+14 at 10:00Z).
    let s = parse("0 12 * * *").unwrap();
    let apia: Tz = "Pacific/Apia".parse().unwrap();
    let got: Vec<_> = s
        .iter_after(at("2011-12-29T00:00:00Z"), apia)
        .take(3)
        .collect();
    assert_eq!(
        got,
        [
            at("2011-12-29T22:00:00Z"),
            at("2011-12-30T10:00:00Z"),
            at("2011-12-30T22:00:00Z")
        ]
    );
}

#[test]
fn extreme_instants_do_not_panic() {
    let s = parse("* * * * * *").unwrap();
    for zone in ["Pacific/Kiritimati", "Pacific/Pago_Pago", "UTC"] {
        let tz: Tz = zone.parse().unwrap();
        for t in [DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC] {
            let _ = s.next_after(t, tz);
            let _ = s.latest_at_or_before(t, tz);
        }
    }
}

#[test]
fn stepped_star_day_of_month_is_described_as_a_filter() {
    assert_eq!(
        parse("0 0 */15 * FRI").unwrap().describe(),
        "at 00:00 on days 1, 16 and 31 of the month if it is Friday"
    );
}

#[test]
fn errors_are_comparable_and_cloneable() {
    let e = parse("0 0 * * 9").unwrap_err();
    assert_eq!(e.clone(), e);
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_string()),
        Just("?".to_string()),
        Just("L".to_string()),
        Just("LW".to_string()),
        Just("FRI#3".to_string()),
        Just("5L".to_string()),
        Just("MON-FRI".to_string()),
        Just("JAN".to_string()),
        (0u32..70).prop_map(|n| n.to_string()),
        (0u32..40).prop_map(|n| format!("{n}W")),
        (0u32..40, 0u32..40).prop_map(|(a, b)| format!("{a}-{b}")),
        (0u32..40, 0u32..70).prop_map(|(a, s)| format!("{a}/{s}")),
        (0u32..70).prop_map(|s| format!("*/{s}")),
        (0u32..40, 0u32..40).prop_map(|(a, b)| format!("{a},{b}")),
    ]
}

proptest! {
    #[test]
    fn random_text_never_panics(text in "\\PC{0,40}") {
        if let Ok(s) = parse(&text) {
            let _ = s.describe();
        }
    }

    #[test]
    fn random_expressions_fire_strictly_later_or_not_at_all(
        fields in proptest::collection::vec(token(), 5..=6),
        secs in 0i64..4_000_000_000,
        zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Kolkata"]),
    ) {
        let expr = fields.join(" ");
        if let Ok(s) = parse(&expr) {
            let tz: Tz = zone.parse().unwrap();
            let after = DateTime::<Utc>::from_timestamp(secs, 0).unwrap();
            let _ = s.describe();
            if let Some(t) = s.next_after(after, tz) {
                prop_assert!(t > after);
                prop_assert_eq!(s.latest_at_or_before(t, tz), Some(t));
            }
            if let Some(t) = s.latest_at_or_before(after, tz) {
                prop_assert!(t <= after);
                prop_assert!(s.next_after(t, tz).is_none_or(|n| n > after));
            }
        }
    }
}
