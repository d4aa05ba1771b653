//! Parsing cron expressions into a [`Spec`]: field splitting, macros, names,
//! ranges, steps, lists and the day-field extensions (`L`, `W`, `#`), with
//! errors that name the offending field and token.

use super::spec::{DomSpec, DowSpec, Spec};

/// A field of a cron expression; named in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    /// Smallest and largest value the field accepts (day-of-week allows 7 = Sunday).
    fn bounds(self) -> (u32, u32) {
        match self {
            Field::Second | Field::Minute => (0, 59),
            Field::Hour => (0, 23),
            Field::DayOfMonth => (1, 31),
            Field::Month => (1, 12),
            Field::DayOfWeek => (0, 7),
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Field::Second => "second",
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        })
    }
}

/// Why a cron expression was rejected. Every message names the field and the
/// text at fault so a user can fix the DAG file without reading this code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("cron expression is empty")]
    Empty,
    #[error(
        "cron expression `{expr}` has {found} fields; expected 5 (minute hour day-of-month month day-of-week) \
         or 6 (second minute hour day-of-month month day-of-week){hint}"
    )]
    FieldCount {
        expr: String,
        found: usize,
        hint: &'static str,
    },
    #[error(
        "unknown cron macro `{0}`; expected one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly"
    )]
    UnknownMacro(String),
    #[error("cron macro `{0}` is not supported: a schedule needs recurring fire times")]
    UnsupportedMacro(String),
    #[error("{field} value {value} in `{token}` is out of range {min}-{max}")]
    OutOfRange {
        field: Field,
        token: String,
        value: u32,
        min: u32,
        max: u32,
    },
    #[error("{field} field: `{token}` is not a number{names}")]
    BadValue {
        field: Field,
        token: String,
        names: &'static str,
    },
    #[error("{field} field: bad step in `{token}`: {reason}")]
    BadStep {
        field: Field,
        token: String,
        reason: String,
    },
    #[error("{field} field: range `{token}` starts after it ends (ranges do not wrap around)")]
    BackwardRange { field: Field, token: String },
    #[error("{field} field: empty list element in `{token}`")]
    EmptyElement { field: Field, token: String },
    #[error("{field} field: `{token}` is not supported: {reason}")]
    Unsupported {
        field: Field,
        token: String,
        reason: &'static str,
    },
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Expands a macro to its 5-field form, or `None` when `expr` is not a macro.
fn expand_macro(expr: &str) -> Result<Option<&'static str>, CronError> {
    if !expr.starts_with('@') {
        return Ok(None);
    }
    let expanded = match expr.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => return Err(CronError::UnsupportedMacro(expr.to_string())),
        _ => return Err(CronError::UnknownMacro(expr.to_string())),
    };
    Ok(Some(expanded))
}

/// Parses a whole expression (already trimmed by the caller).
pub(super) fn parse_spec(expr: &str) -> Result<Spec, CronError> {
    let expr = expr.trim();
    if expr.is_empty() {
        return Err(CronError::Empty);
    }
    let text = expand_macro(expr)?.unwrap_or(expr);
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (has_seconds, rest) = match parts.len() {
        5 => (false, &parts[..]),
        6 => (true, &parts[1..]),
        found => {
            return Err(CronError::FieldCount {
                expr: expr.to_string(),
                found,
                hint: if found == 7 {
                    "; a year field is not supported"
                } else {
                    ""
                },
            });
        }
    };
    let seconds = if has_seconds {
        parse_plain(Field::Second, parts[0])?
    } else {
        1
    };
    let minutes = parse_plain(Field::Minute, rest[0])?;
    let hours = parse_plain(Field::Hour, rest[1])?;
    let (dom, dom_star) = parse_dom(rest[2])?;
    let months = parse_plain(Field::Month, rest[3])?;
    let (dow, dow_star) = parse_dow(rest[4])?;
    Ok(Spec {
        has_seconds,
        seconds,
        minutes,
        hours,
        months,
        dom,
        dow,
        dom_star,
        dow_star,
    })
}

/// True when a day field counts as unrestricted for the DOM/DOW rule. Like
/// Vixie cron (which sets DOM_STAR/DOW_STAR when the field's first character
/// is `*`), `*/2` counts as a star; `?` is Quartz's spelling of `*`.
fn is_star(text: &str) -> bool {
    text.starts_with('*') || text.starts_with('?')
}

/// A field made only of numbers, names, `*`, ranges, steps and lists, as a bitmask.
fn parse_plain(field: Field, text: &str) -> Result<u64, CronError> {
    let mut mask = 0u64;
    for item in split_list(field, text)? {
        mask |= parse_item(field, item)?;
    }
    Ok(mask)
}

fn split_list(field: Field, text: &str) -> Result<Vec<&str>, CronError> {
    let items: Vec<&str> = text.split(',').collect();
    if items.iter().any(|i| i.is_empty()) {
        return Err(CronError::EmptyElement {
            field,
            token: text.to_string(),
        });
    }
    Ok(items)
}

/// One list element: `*`, `?` (day fields), `N`, `A-B`, each optionally `/STEP`;
/// `N/STEP` means `N-max/STEP` as in Vixie cron.
fn parse_item(field: Field, item: &str) -> Result<u64, CronError> {
    let (min, max) = field.bounds();
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(parse_step(field, item, step, min, max)?)),
        None => (item, None),
    };
    let (lo, hi) = if range == "*" || (range == "?" && is_day_field(field)) {
        (min, max)
    } else if let Some((a, b)) = range.split_once('-') {
        let (a, b) = (parse_value(field, item, a)?, parse_value(field, item, b)?);
        if a > b {
            return Err(CronError::BackwardRange {
                field,
                token: item.to_string(),
            });
        }
        (a, b)
    } else {
        let v = parse_value(field, item, range)?;
        (v, if step.is_some() { max } else { v })
    };
    let mut mask = 0u64;
    let mut v = lo;
    while v <= hi {
        mask |= 1 << v;
        v += step.unwrap_or(1);
    }
    if field == Field::DayOfWeek && mask & (1 << 7) != 0 {
        // 7 is Sunday as well as 0 (Vixie cron).
        mask = (mask & !(1 << 7)) | 1;
    }
    Ok(mask)
}

fn is_day_field(field: Field) -> bool {
    matches!(field, Field::DayOfMonth | Field::DayOfWeek)
}

fn parse_step(field: Field, item: &str, step: &str, min: u32, max: u32) -> Result<u32, CronError> {
    let bad = |reason: String| CronError::BadStep {
        field,
        token: item.to_string(),
        reason,
    };
    let n: u32 = step
        .parse()
        .map_err(|_| bad(format!("`{step}` is not a positive number")))?;
    if n == 0 {
        return Err(bad("the step must be at least 1".into()));
    }
    if n > max - min + 1 {
        return Err(bad(format!(
            "the step {n} is larger than the field's span {min}-{max}"
        )));
    }
    Ok(n)
}

/// A number or (in month and day-of-week fields) a three-letter English name.
fn parse_value(field: Field, item: &str, text: &str) -> Result<u32, CronError> {
    let (min, max) = field.bounds();
    let names: Option<&[&str]> = match field {
        Field::Month => Some(&MONTHS),
        Field::DayOfWeek => Some(&DAYS),
        _ => None,
    };
    let value = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Saturate absurdly long numbers so they report as out of range.
        text.parse::<u32>().unwrap_or(u32::MAX)
    } else if let Some(pos) =
        names.and_then(|n| n.iter().position(|name| name.eq_ignore_ascii_case(text)))
    {
        pos as u32 + if field == Field::Month { 1 } else { 0 }
    } else {
        return Err(CronError::BadValue {
            field,
            token: item.to_string(),
            names: match field {
                Field::Month => " or a month name (JAN-DEC)",
                Field::DayOfWeek => " or a day name (SUN-SAT)",
                _ => "",
            },
        });
    };
    if value < min || value > max {
        return Err(CronError::OutOfRange {
            field,
            token: item.to_string(),
            value,
            min,
            max,
        });
    }
    Ok(value)
}

/// Day-of-month: plain items plus `L` (last day), `LW` (last weekday) and
/// `NW` (weekday nearest day N, never leaving the month).
fn parse_dom(text: &str) -> Result<(DomSpec, bool), CronError> {
    let field = Field::DayOfMonth;
    let mut dom = DomSpec::default();
    for item in split_list(field, text)? {
        let upper = item.to_ascii_uppercase();
        if upper == "L" {
            dom.last = true;
        } else if upper == "LW" {
            dom.last_weekday = true;
        } else if let Some(day) = upper
            .strip_suffix('W')
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        {
            let v = parse_value(field, item, day)?;
            dom.nearest_weekday |= 1 << v;
        } else if upper.starts_with("L-") {
            return Err(CronError::Unsupported {
                field,
                token: item.to_string(),
                reason: "offsets from the last day (L-N) are not supported; use L, LW, NW or plain days",
            });
        } else if upper.contains('W') || upper.contains('L') {
            return Err(CronError::Unsupported {
                field,
                token: item.to_string(),
                reason: "L and W are supported only as `L`, `LW` and `NW` (e.g. 15W), not in ranges, steps or lists of ranges",
            });
        } else {
            dom.days |= parse_item(field, item)? as u32;
        }
    }
    Ok((dom, is_star(text)))
}

/// Day-of-week: plain items plus `D#N` (N-th weekday D of the month, N 1-5)
/// and `DL` (last weekday D of the month), D a number or name.
fn parse_dow(text: &str) -> Result<(DowSpec, bool), CronError> {
    let field = Field::DayOfWeek;
    let mut dow = DowSpec::default();
    for item in split_list(field, text)? {
        if let Some((day, nth)) = item.split_once('#') {
            let d = parse_value(field, item, day)? % 7;
            let n: u32 = nth.parse().unwrap_or(0);
            if !(1..=5).contains(&n) {
                return Err(CronError::Unsupported {
                    field,
                    token: item.to_string(),
                    reason: "the occurrence after `#` must be 1 to 5 (e.g. FRI#3 = third Friday)",
                });
            }
            dow.nth[d as usize] |= 1 << n;
        } else if item.len() > 1 && (item.ends_with('L') || item.ends_with('l')) {
            let d = parse_value(field, item, &item[..item.len() - 1])? % 7;
            dow.last |= 1 << d;
        } else if item.eq_ignore_ascii_case("L") {
            return Err(CronError::Unsupported {
                field,
                token: item.to_string(),
                reason: "a bare `L` in day-of-week is ambiguous; write the day, e.g. FRIL or 5L for the last Friday",
            });
        } else {
            dow.days |= parse_item(field, item)? as u8;
        }
    }
    Ok((dow, is_star(text)))
}
