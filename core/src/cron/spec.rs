//! The parsed form of a cron expression and the wall-clock search over it:
//! which local dates and times match, and the next/previous match from a
//! local time. Knows nothing of timezones; `mod.rs` maps wall times to instants.

use chrono::{Datelike, Days, Months, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// How far the day search looks before declaring a schedule impossible.
/// 50 years covers every real pattern (the rarest, such as `* * * 2 FRI#5`,
/// repeat within a 28-year cycle; Feb 29 within 8 years) while keeping
/// `0 0 30 2 *` to a few thousand cheap day checks.
const SEARCH_YEARS: u32 = 50;

/// Day-of-month restrictions; bit N of a mask stands for day N.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct DomSpec {
    pub days: u32,
    /// `L`: the last day of the month.
    pub last: bool,
    /// `LW`: the last weekday (Mon-Fri) of the month.
    pub last_weekday: bool,
    /// `NW`: the weekday nearest day N, staying inside the month.
    pub nearest_weekday: u32,
}

/// Day-of-week restrictions; index/bit 0 is Sunday.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct DowSpec {
    pub days: u8,
    /// `D#N`: bit N of `nth[D]` set means the N-th weekday D of the month.
    pub nth: [u8; 7],
    /// `DL`: bit D set means the last weekday D of the month.
    pub last: u8,
}

/// A parsed cron expression. Bit N of a mask means value N matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Spec {
    pub has_seconds: bool,
    pub seconds: u64,
    pub minutes: u64,
    pub hours: u64,
    pub months: u64,
    pub dom: DomSpec,
    pub dow: DowSpec,
    /// The day-of-month field was `*`/`?` (Vixie's DOM_STAR): days combine with AND.
    pub dom_star: bool,
    /// The day-of-week field was `*`/`?` (Vixie's DOW_STAR).
    pub dow_star: bool,
}

fn days_in_month(date: NaiveDate) -> u32 {
    let first = date.with_day(1).unwrap_or(date);
    first
        .checked_add_months(Months::new(1))
        .and_then(|next| next.pred_opt())
        .map_or(31, |last| last.day())
}

fn is_weekday(date: NaiveDate) -> bool {
    date.weekday().num_days_from_monday() < 5
}

impl DomSpec {
    fn matches(&self, date: NaiveDate) -> bool {
        let day = date.day();
        let len = days_in_month(date);
        if self.days & (1 << day) != 0 || (self.last && day == len) {
            return true;
        }
        if self.last_weekday && is_weekday(date) {
            // The last weekday: no weekday follows it within the month.
            let later_weekday = (day + 1..=len)
                .filter_map(|d| date.with_day(d))
                .any(is_weekday);
            if !later_weekday {
                return true;
            }
        }
        self.nearest_weekday != 0
            && (1..=len).any(|target| {
                self.nearest_weekday & (1 << target) != 0
                    && nearest_weekday(date, target, len) == Some(day)
            })
    }
}

/// Quartz's `NW`: day N if a weekday, else the Friday before or Monday after,
/// without crossing into another month. A target past the month's end never fires.
fn nearest_weekday(date: NaiveDate, target: u32, len: u32) -> Option<u32> {
    let t = date.with_day(target)?;
    Some(match t.weekday().num_days_from_monday() {
        5 if target == 1 => 3,            // Sat 1st -> Mon 3rd
        5 => target - 1,                  // Sat -> Fri
        6 if target == len => target - 2, // Sun last -> Fri
        6 => target + 1,                  // Sun -> Mon
        _ => target,
    })
}

impl DowSpec {
    fn matches(&self, date: NaiveDate) -> bool {
        let wd = date.weekday().num_days_from_sunday() as usize;
        let day = date.day();
        self.days & (1 << wd) != 0
            || self.nth[wd] & (1 << ((day - 1) / 7 + 1)) != 0
            || (self.last & (1 << wd) != 0 && day + 7 > days_in_month(date))
    }
}

/// Lowest set bit of `mask` at or above `from`.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let m = mask & (!0u64 << from);
    (m != 0).then(|| m.trailing_zeros())
}

/// Highest set bit of `mask` at or below `at`.
fn prev_bit(mask: u64, at: u32) -> Option<u32> {
    let m = if at >= 63 {
        mask
    } else {
        mask & ((1u64 << (at + 1)) - 1)
    };
    (m != 0).then(|| 63 - m.leading_zeros())
}

impl Spec {
    /// The day rule of Vixie cron: if either day field is `*`, both must
    /// match (the star matches all); if both are restricted, either may.
    pub fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        if self.dom_star || self.dow_star {
            // A star field's mask is full, except `*/N`, which still filters.
            self.dom.matches(date) && self.dow.matches(date)
        } else {
            self.dom.matches(date) || self.dow.matches(date)
        }
    }

    /// First matching time of day at or after `from`.
    fn time_at_or_after(&self, from: NaiveTime) -> Option<NaiveTime> {
        let (h0, m0, s0) = (from.hour(), from.minute(), from.second());
        let mut h = next_bit(self.hours, h0)?;
        loop {
            let m_from = if h == h0 { m0 } else { 0 };
            let mut m = next_bit(self.minutes, m_from);
            while let Some(min) = m {
                let s_from = if h == h0 && min == m0 { s0 } else { 0 };
                if let Some(s) = next_bit(self.seconds, s_from) {
                    return NaiveTime::from_hms_opt(h, min, s);
                }
                m = next_bit(self.minutes, min + 1);
            }
            h = next_bit(self.hours, h + 1)?;
        }
    }

    /// Last matching time of day at or before `at`.
    fn time_at_or_before(&self, at: NaiveTime) -> Option<NaiveTime> {
        let (h0, m0, s0) = (at.hour(), at.minute(), at.second());
        let mut h = prev_bit(self.hours, h0)?;
        loop {
            let m_at = if h == h0 { m0 } else { 59 };
            let mut m = prev_bit(self.minutes, m_at);
            while let Some(min) = m {
                let s_at = if h == h0 && min == m0 { s0 } else { 59 };
                if let Some(s) = prev_bit(self.seconds, s_at) {
                    return NaiveTime::from_hms_opt(h, min, s);
                }
                m = min.checked_sub(1).and_then(|x| prev_bit(self.minutes, x));
            }
            h = h.checked_sub(1).and_then(|x| prev_bit(self.hours, x))?;
        }
    }

    /// The first matching wall time at or after `from` (whole seconds), or
    /// `None` if nothing matches within [`SEARCH_YEARS`].
    pub fn next_at_or_after(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        let limit = from
            .date()
            .checked_add_months(Months::new(12 * SEARCH_YEARS))?;
        let mut date = from.date();
        let mut start = Some(from.time());
        while date <= limit {
            if self.months & (1 << date.month()) == 0 {
                // Skip a whole unwanted month at once.
                date = date.with_day(1)?.checked_add_months(Months::new(1))?;
                start = None;
                continue;
            }
            if self.day_matches(date)
                && let Some(t) = self.time_at_or_after(start.unwrap_or(NaiveTime::MIN))
            {
                return Some(date.and_time(t));
            }
            date = date.checked_add_days(Days::new(1))?;
            start = None;
        }
        None
    }

    /// The last matching wall time at or before `at` (whole seconds), looking
    /// back at most [`SEARCH_YEARS`].
    pub fn prev_at_or_before(&self, at: NaiveDateTime) -> Option<NaiveDateTime> {
        let limit = at
            .date()
            .checked_sub_months(Months::new(12 * SEARCH_YEARS))?;
        let mut date = at.date();
        let mut end = Some(at.time());
        let day_end = NaiveTime::from_hms_opt(23, 59, 59)?;
        while date >= limit {
            if self.months & (1 << date.month()) == 0 {
                date = date.with_day(1)?.pred_opt()?;
                end = None;
                continue;
            }
            if self.day_matches(date)
                && let Some(t) = self.time_at_or_before(end.unwrap_or(day_end))
            {
                return Some(date.and_time(t));
            }
            date = date.pred_opt()?;
            end = None;
        }
        None
    }
}
