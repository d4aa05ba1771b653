//! Typed reads out of the spanned TOML tree (`toml::de::DeTable`). Each
//! reader records a positioned error and returns `None` instead of stopping,
//! so one pass over the file finds every problem.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{Collector, DagErrorKind as K};
use super::units::parse_duration;

pub(crate) type Span = Range<usize>;
pub(crate) type Val<'i> = Spanned<DeValue<'i>>;

/// "a string", "an integer", … for messages.
pub(crate) fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a bool",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Reports every key of `table` not in `allowed`, suggesting the closest one.
pub(crate) fn check_keys(
    c: &mut Collector<'_>,
    table: &DeTable<'_>,
    allowed: &[&str],
    place: &str,
) {
    for key in table.keys() {
        let name: &str = key.get_ref();
        if allowed.contains(&name) {
            continue;
        }
        let hint = allowed
            .iter()
            .map(|a| (strsim::levenshtein(a, name), *a))
            .filter(|(d, _)| *d <= 2)
            .min()
            .map(|(_, a)| format!("; did you mean `{a}`?"))
            .unwrap_or_else(|| format!("; expected one of: {}", allowed.join(", ")));
        c.push(
            K::UnknownKey,
            key.span(),
            format!("unknown key `{name}` in {place}{hint}"),
        );
    }
}

/// The entry for `key`: its key span and value.
pub(crate) fn entry<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<(Span, &'t Val<'i>)> {
    table.get_key_value(key).map(|(k, v)| (k.span(), v))
}

pub(crate) fn wrong_type(c: &mut Collector<'_>, v: &Val<'_>, what: &str, expected: &str) {
    c.push(
        K::WrongType,
        v.span(),
        format!(
            "`{what}` must be {expected}, found {}",
            type_name(v.get_ref())
        ),
    );
}

pub(crate) fn as_str<'v>(c: &mut Collector<'_>, v: &'v Val<'_>, what: &str) -> Option<&'v str> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.as_ref()),
        _ => {
            wrong_type(c, v, what, "a string");
            None
        }
    }
}

pub(crate) fn get_str<'t>(
    c: &mut Collector<'_>,
    t: &'t DeTable<'_>,
    key: &str,
) -> Option<(&'t str, Span)> {
    let (_, v) = entry(t, key)?;
    as_str(c, v, key).map(|s| (s, v.span()))
}

pub(crate) fn int_value(v: &DeValue<'_>) -> Option<Result<i64, ()>> {
    match v {
        DeValue::Integer(i) => Some(i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| ())),
        _ => None,
    }
}

/// An integer in `min..=max`; out-of-range values are `OutOfRange` errors.
pub(crate) fn get_int(
    c: &mut Collector<'_>,
    t: &DeTable<'_>,
    key: &str,
    min: i64,
    max: i64,
) -> Option<(i64, Span)> {
    let (_, v) = entry(t, key)?;
    match int_value(v.get_ref()) {
        None => {
            wrong_type(c, v, key, "an integer");
            None
        }
        Some(Ok(n)) if (min..=max).contains(&n) => Some((n, v.span())),
        Some(_) => {
            let range = if max == i64::from(u32::MAX) || max == i64::from(i32::MAX) {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            c.push(K::OutOfRange, v.span(), format!("`{key}` must be {range}"));
            None
        }
    }
}

pub(crate) fn get_u32(
    c: &mut Collector<'_>,
    t: &DeTable<'_>,
    key: &str,
    min: u32,
) -> Option<(u32, Span)> {
    get_int(c, t, key, i64::from(min), i64::from(u32::MAX))
        .and_then(|(n, s)| u32::try_from(n).ok().map(|n| (n, s)))
}

/// A float; integers are accepted where floats are declared.
pub(crate) fn float_value(v: &DeValue<'_>) -> Option<f64> {
    match v {
        DeValue::Float(f) => f.as_str().parse().ok(),
        DeValue::Integer(_) => int_value(v).and_then(Result::ok).map(|i| i as f64),
        _ => None,
    }
}

pub(crate) fn get_bool(c: &mut Collector<'_>, t: &DeTable<'_>, key: &str) -> Option<bool> {
    let (_, v) = entry(t, key)?;
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        _ => {
            wrong_type(c, v, key, "true or false");
            None
        }
    }
}

/// An array of strings with each element's span; `None` if it is not one.
pub(crate) fn get_str_array<'t>(
    c: &mut Collector<'_>,
    t: &'t DeTable<'_>,
    key: &str,
) -> Option<(Vec<(&'t str, Span)>, Span)> {
    let (_, v) = entry(t, key)?;
    let DeValue::Array(items) = v.get_ref() else {
        wrong_type(c, v, key, "an array of strings");
        return None;
    };
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items.iter() {
        match item.get_ref() {
            DeValue::String(s) => out.push((s.as_ref(), item.span())),
            _ => {
                ok = false;
                wrong_type(c, item, &format!("{key}[]"), "a string");
            }
        }
    }
    ok.then_some((out, v.span()))
}

pub(crate) fn get_table<'t, 'i>(
    c: &mut Collector<'_>,
    t: &'t DeTable<'i>,
    key: &str,
) -> Option<(&'t DeTable<'i>, Span, Span)> {
    let (ks, v) = entry(t, key)?;
    match v.get_ref() {
        DeValue::Table(inner) => Some((inner, ks, v.span())),
        _ => {
            wrong_type(c, v, key, "a table");
            None
        }
    }
}

pub(crate) fn get_duration(
    c: &mut Collector<'_>,
    t: &DeTable<'_>,
    key: &str,
) -> Option<(Duration, Span)> {
    let (_, v) = entry(t, key)?;
    let DeValue::String(s) = v.get_ref() else {
        let hint = if matches!(v.get_ref(), DeValue::Integer(_)) {
            " (write the unit, e.g. \"30s\")"
        } else {
            ""
        };
        wrong_type(c, v, key, &format!("a duration string{hint}"));
        return None;
    };
    match parse_duration(s) {
        Ok(d) => Some((d, v.span())),
        Err(e) => {
            c.push(K::BadDuration, v.span(), format!("`{key}`: {e}"));
            None
        }
    }
}

/// Byte offset in the file of byte `offset` inside the string value at
/// `span`, when the value is written literally (no escapes, one line);
/// otherwise the start of the value.
pub(crate) fn offset_in_string(source: &str, span: &Span, value: &str, offset: usize) -> usize {
    let raw = source.get(span.clone()).unwrap_or("");
    let literal = raw.len() == value.len() + 2
        && raw.get(1..raw.len() - 1) == Some(value)
        && (raw.starts_with('"') || raw.starts_with('\''));
    if literal {
        span.start + 1 + offset
    } else {
        span.start
    }
}

/// `[A-Za-z0-9_-]+`: dag, task and pool ids.
pub(crate) fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `[A-Za-z_][A-Za-z0-9_]*`: param and env names.
pub(crate) fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
