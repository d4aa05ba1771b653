//! Cron schedules: parsing (5- and 6-field expressions, `@` macros) and fire
//! times in IANA timezones under one fixed DST policy.
//!
//! # Syntax
//! Fields mean what they mean to Vixie cron/cronie: `minute hour day-of-month
//! month day-of-week`, or with a leading `second` field (6 fields, as in Quartz
//! and the `cron` crate). Each field takes `*`, numbers, ranges `A-B`, steps
//! (`*/15`, `1-30/5`, and `5/10` meaning `5-max/10`), and lists. Month and
//! day names (`JAN`, `mon`) are case-insensitive; day-of-week 0 and 7 are both
//! Sunday. `?` is accepted as `*` in the day fields (Quartz). Macros:
//! `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`.
//! Extensions: `L` (last day), `LW` (last weekday), `15W` (weekday nearest the
//! 15th, never leaving the month) in day-of-month; `FRI#3` (third Friday) and
//! `5L`/`FRIL` (last Friday) in day-of-week. `L-3`, a bare `L` in
//! day-of-week, a year field and `@reboot` are rejected with a clear error.
//!
//! **Day rule (Vixie):** when both day fields are restricted, a day matching
//! *either* fires (`0 0 1 * MON` = the 1st and every Monday); when either is
//! `*`, both must match. As in Vixie cron, a field whose text starts with `*`
//! (including `*/2`) or `?` counts as unrestricted.
//!
//! # DST policy
//! An expression describes local wall-clock times in the schedule's timezone.
//! Each matching wall time maps to exactly one instant:
//! - a wall time that exists once fires at that instant;
//! - a wall time skipped by spring-forward fires once, at the first instant
//!   after the gap (02:30 Europe/Berlin on 2026-03-29 fires at 03:00 local =
//!   01:00Z). Several skipped times (02:00 and 02:30, or every `*/15` slot in
//!   the gap) all land on that instant, and it fires once;
//! - a wall time repeated by fall-back fires once, at its first (earlier)
//!   occurrence. This holds for frequent schedules too: `*/15 * * * *` fires
//!   02:00-02:45 during the first pass of a repeated 02:00 hour and nothing
//!   during the second pass, so there is a 75-minute interval in UTC there.
//!   That keeps one rule for every schedule (a slot is a wall time, fired
//!   once), which is what the store's once-per-slot guarantee keys on.
//!
//! Fire instants are therefore strictly increasing and never duplicated.
//!
//! # Why our own matcher
//! The `cron` crate has neither Vixie's DOM/DOW OR rule nor this DST policy.
//! `croner` (4.0) has the OR rule, seconds and `L`/`W`/`#`, but: it replaces
//! day and month names across the whole expression (so `MON` in the month
//! field silently becomes January), accepts `5/10` only in a "sloppy" mode
//! that also accepts `/10`, has no `@midnight`, takes a 7th (year) field, its
//! errors do not name the field at fault, and its DST rule for frequent jobs
//! (run through the repeated hour) differs from ours. Wrapping it would mean a
//! pre-parser plus our own DST layer, leaving croner only the day matching;
//! a small bitmask matcher over chrono/chrono-tz is less code to trust.

mod describe;
mod parse;
mod spec;

use chrono::{DateTime, Duration, NaiveDateTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

pub use parse::{CronError, Field};
use spec::Spec;

/// Result alias for this module.
pub type Result<T, E = CronError> = std::result::Result<T, E>;

/// Bound on wall times examined in one step when fall-back makes the next
/// matching wall times resolve to instants already passed (at most one
/// repeated hour or two of per-second slots).
const MAX_SKIPPED_SLOTS: usize = 200_000;

/// A parsed cron schedule. Compare and clone freely; it holds no timezone
/// (that belongs to the DAG and is passed to each query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    expr: String,
    spec: Spec,
}

/// Parses a cron expression; see the module docs for the syntax.
pub fn parse(expr: &str) -> Result<Schedule> {
    let spec = parse::parse_spec(expr)?;
    Ok(Schedule {
        expr: expr.trim().to_string(),
        spec,
    })
}

impl std::str::FromStr for Schedule {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Self> {
        parse(s)
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.expr)
    }
}

/// Whole-second wall time strictly after `t` (fire times are whole seconds).
fn next_whole_second(t: NaiveDateTime) -> Option<NaiveDateTime> {
    t.with_nanosecond(0)?
        .checked_add_signed(Duration::seconds(1))
}

/// `t`'s wall-clock time in `tz`, or `None` at the edge of chrono's range
/// (where `naive_local` would panic).
fn local_wall(t: DateTime<Utc>, tz: Tz) -> Option<NaiveDateTime> {
    let offset = tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    t.naive_utc().checked_add_offset(offset)
}

/// The instant a matching wall time fires at, under the DST policy.
fn resolve(wall: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    if let Some(t) = tz.from_local_datetime(&wall).earliest() {
        // Single, or the first occurrence of a repeated time.
        return Some(t.with_timezone(&Utc));
    }
    // In a spring-forward gap: the first existing wall minute after it is the
    // gap's end (tzdb transitions fall on whole minutes). Gaps are at most a
    // day (Samoa skipped 2011-12-30), so two days of minutes is a safe bound.
    let mut probe = wall.with_second(0)?;
    for _ in 0..2 * 24 * 60 {
        probe = probe.checked_add_signed(Duration::minutes(1))?;
        if let Some(t) = tz.from_local_datetime(&probe).earliest() {
            return Some(t.with_timezone(&Utc));
        }
    }
    None
}

impl Schedule {
    /// The expression as written (trimmed).
    pub fn expression(&self) -> &str {
        &self.expr
    }

    /// Whether the expression has a seconds field (6 fields).
    pub fn has_seconds(&self) -> bool {
        self.spec.has_seconds
    }

    /// The first fire instant strictly after `after`, evaluated in `tz`.
    /// `None` if the schedule never fires (e.g. `0 0 30 2 *`) within the
    /// search horizon of 50 years.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        // Wall times at or before after's local time resolve at or before
        // `after`, so only later wall times can fire; in a repeated hour some
        // of those still resolve to the (passed) first occurrence: skip them.
        let mut from = next_whole_second(local_wall(after, tz)?)?;
        for _ in 0..MAX_SKIPPED_SLOTS {
            let wall = self.spec.next_at_or_after(from)?;
            if let Some(t) = resolve(wall, tz)
                && t > after
            {
                return Some(t);
            }
            from = wall.checked_add_signed(Duration::seconds(1))?;
        }
        None
    }

    /// Fire instants strictly after `after`, in order (lazy iterator). Ends
    /// when the schedule has no further fire time within the search horizon.
    pub fn iter_after(
        &self,
        after: DateTime<Utc>,
        tz: Tz,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let mut cursor = Some(after);
        std::iter::from_fn(move || {
            let next = self.next_after(cursor?, tz);
            cursor = next;
            next
        })
    }

    /// The most recent fire instant at or before `t` (used when catchup is
    /// off and only the latest missed slot runs). `None` if none within 50 years.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = local_wall(t, tz)?.with_nanosecond(0)?;
        // Wall times up to t's local time resolve at or before t (resolution
        // is monotone in wall time)...
        let mut best = self
            .spec
            .prev_at_or_before(local)
            .and_then(|w| resolve(w, tz));
        // ...and when t is in the second pass of a repeated hour, later wall
        // times of that hour resolved to their first pass, also before t.
        let mut from = local.checked_add_signed(Duration::seconds(1))?;
        for _ in 0..MAX_SKIPPED_SLOTS {
            let Some(wall) = self.spec.next_at_or_after(from) else {
                break;
            };
            match resolve(wall, tz) {
                Some(r) if r <= t => best = Some(r),
                Some(_) => break,
                None => {}
            }
            from = wall.checked_add_signed(Duration::seconds(1))?;
        }
        best
    }

    /// The schedule in plain words, e.g. "at 03:00 every day", "every 15
    /// minutes", "at minute 30 past every hour on Monday through Friday".
    pub fn describe(&self) -> String {
        describe::describe(&self.spec)
    }
}

/// Fire times honouring an optional `[start, end]` window: instants `> after`,
/// `>= start` and `<= end`, in order. Take the first `count` with `.take(count)`.
pub fn fire_times(
    schedule: &Schedule,
    tz: Tz,
    after: DateTime<Utc>,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    // Begin just before `start` so a fire exactly at `start` is included.
    let from = match start.and_then(|s| s.checked_sub_signed(Duration::nanoseconds(1))) {
        Some(s) if s > after => s,
        _ => after,
    };
    schedule
        .iter_after(from, tz)
        .take_while(move |t| end.is_none_or(|e| *t <= e))
}

#[cfg(test)]
mod tests;
