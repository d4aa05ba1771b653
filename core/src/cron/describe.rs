//! Plain-words descriptions of schedules for people, e.g. "at 03:00 every
//! day", "every 15 minutes", "at minute 30 past every hour on Monday through
//! Friday". Built from the parsed masks, so `1-5` and `MON-FRI` read alike.

use super::spec::{DomSpec, DowSpec, Spec};

const MONTH_NAMES: [&str; 13] = [
    "",
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAY_NAMES: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const ORDINALS: [&str; 6] = ["", "first", "second", "third", "fourth", "fifth"];

fn values(mask: u64, lo: u32, hi: u32) -> Vec<u32> {
    (lo..=hi).filter(|v| mask & (1 << v) != 0).collect()
}

/// "a", "a and b", "a, b and c".
fn join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Values as words, runs of three or more written "a through b".
fn runs(vals: &[u32], name: impl Fn(u32) -> String) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < vals.len() {
        let mut j = i;
        while j + 1 < vals.len() && vals[j + 1] == vals[j] + 1 {
            j += 1;
        }
        if j - i >= 2 {
            parts.push(format!("{} through {}", name(vals[i]), name(vals[j])));
        } else {
            parts.extend(vals[i..=j].iter().map(|v| name(*v)));
        }
        i = j + 1;
    }
    join(&parts)
}

/// `Some((start, step))` when `vals` is `start, start+step, ...` up to the
/// field's end, with step > 1 — what `*/step` or `start/step` wrote.
fn step_of(vals: &[u32], hi: u32) -> Option<(u32, u32)> {
    let (&first, &last) = (vals.first()?, vals.last()?);
    let step = vals.get(1)? - first;
    let regular = vals.windows(2).all(|w| w[1] - w[0] == step);
    (step > 1 && regular && vals.len() >= 2 && last + step > hi).then_some((first, step))
}

/// One time-of-day unit ("second", "minute", "hour") as words.
fn unit(vals: &[u32], hi: u32, name: &str) -> String {
    if vals.len() as u32 == hi + 1 {
        return format!("every {name}");
    }
    if let Some((start, step)) = step_of(vals, hi) {
        return if start == 0 {
            format!("every {step} {name}s")
        } else {
            format!("every {step} {name}s from {name} {start}")
        };
    }
    let plural = if vals.len() == 1 { "" } else { "s" };
    format!("{name}{plural} {}", runs(vals, |v| v.to_string()))
}

fn time_part(spec: &Spec) -> (String, bool) {
    let secs = values(spec.seconds, 0, 59);
    let mins = values(spec.minutes, 0, 59);
    let hours = values(spec.hours, 0, 23);
    let all_hours = hours.len() == 24;
    let on_minute = secs == [0];
    // A handful of fixed times of day reads best as clock times.
    if secs.len() == 1 && mins.len() * hours.len() <= 4 {
        let sec = secs[0];
        let times: Vec<String> = hours
            .iter()
            .flat_map(|h| {
                mins.iter().map(move |m| match sec {
                    0 => format!("{h:02}:{m:02}"),
                    s => format!("{h:02}:{m:02}:{s:02}"),
                })
            })
            .collect();
        return (format!("at {}", join(&times)), true);
    }
    if all_hours && on_minute {
        let text = match mins.as_slice() {
            [0] => "every hour".to_string(),
            [m] => format!("at minute {m} past every hour"),
            _ if mins.len() == 60 || step_of(&mins, 59).is_some_and(|(s, _)| s == 0) => {
                unit(&mins, 59, "minute")
            }
            _ => format!("at {} past every hour", unit(&mins, 59, "minute")),
        };
        return (text, false);
    }
    if all_hours && mins.len() == 60 {
        return (unit(&secs, 59, "second"), false);
    }
    let mut parts = Vec::new();
    if !on_minute {
        parts.push(match secs.as_slice() {
            [s] => format!("at second {s}"),
            _ if secs.len() == 60 => "every second".to_string(),
            _ => format!("at {}", unit(&secs, 59, "second")),
        });
    }
    parts.push(match mins.as_slice() {
        _ if mins.len() == 60 => "every minute".to_string(),
        _ if step_of(&mins, 59).is_some() => unit(&mins, 59, "minute"),
        _ => format!("at {}", unit(&mins, 59, "minute")),
    });
    parts.push(if all_hours {
        "past every hour".to_string()
    } else {
        format!("past {}", unit(&hours, 23, "hour"))
    });
    (parts.join(" "), false)
}

fn dom_words(dom: &DomSpec) -> String {
    let mut parts = Vec::new();
    let days = values(u64::from(dom.days), 1, 31);
    if !days.is_empty() {
        let plural = if days.len() == 1 { "" } else { "s" };
        parts.push(format!(
            "day{plural} {} of the month",
            runs(&days, |d| d.to_string())
        ));
    }
    for d in values(u64::from(dom.nearest_weekday), 1, 31) {
        parts.push(format!("the weekday nearest day {d} of the month"));
    }
    if dom.last {
        parts.push("the last day of the month".to_string());
    }
    if dom.last_weekday {
        parts.push("the last weekday of the month".to_string());
    }
    join(&parts)
}

fn dow_words(dow: &DowSpec) -> String {
    // Monday first, so 1-7 reads "Monday through Sunday".
    let monday_first = |d: u32| (d + 6) % 7;
    let mut days: Vec<u32> = values(u64::from(dow.days), 0, 6)
        .into_iter()
        .map(monday_first)
        .collect();
    days.sort_unstable();
    let mut parts = Vec::new();
    if !days.is_empty() {
        parts.push(runs(&days, |i| {
            DAY_NAMES[((i + 1) % 7) as usize].to_string()
        }));
    }
    for (d, nth) in dow.nth.iter().enumerate() {
        for n in values(u64::from(*nth), 1, 5) {
            parts.push(format!(
                "the {} {} of the month",
                ORDINALS[n as usize], DAY_NAMES[d]
            ));
        }
    }
    for d in values(u64::from(dow.last), 0, 6) {
        parts.push(format!("the last {} of the month", DAY_NAMES[d as usize]));
    }
    join(&parts)
}

pub(super) fn describe(spec: &Spec) -> String {
    let (mut text, fixed_times) = time_part(spec);
    // `*` and `?` alone leave a day field free; `*/2` is a star to Vixie's
    // OR/AND rule yet still restricts the days.
    let dom_free = spec.dom_star
        && spec.dom
            == DomSpec {
                days: 0xFFFF_FFFE,
                ..DomSpec::default()
            };
    let dow_free = spec.dow_star
        && spec.dow
            == DowSpec {
                days: 0x7F,
                ..DowSpec::default()
            };
    match (dom_free, dow_free) {
        (true, true) if fixed_times => text.push_str(" every day"),
        (true, true) => {}
        (true, false) => text.push_str(&format!(" on {}", dow_words(&spec.dow))),
        (false, true) => text.push_str(&format!(" on {}", dom_words(&spec.dom))),
        (false, false) => {
            // Vixie: OR when both fields are restricted, AND when one starts with `*`.
            let joint = if spec.dom_star || spec.dow_star {
                " if it is "
            } else {
                " or on "
            };
            text.push_str(&format!(
                " on {}{joint}{}",
                dom_words(&spec.dom),
                dow_words(&spec.dow)
            ));
        }
    }
    let months = values(spec.months, 1, 12);
    if months.len() < 12 {
        text.push_str(&format!(
            " in {}",
            runs(&months, |m| MONTH_NAMES[m as usize].to_string())
        ));
    }
    text
}
