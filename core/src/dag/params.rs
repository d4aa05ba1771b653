//! DAG params: typed values whose declared default fixes their type, and the
//! checks applied to what a run is triggered with (API/UI JSON, CLI `k=v`):
//! declared names and types, no NUL in strings, a total size cap, and a
//! logical date every store and every task can represent.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::resources::ByteSize;

/// The most a run's params may take as JSON (64 KiB). Tasks receive them in
/// `TRAINYARD_PARAMS` and in argv; Linux refuses a single argument or
/// environment string over 128 KiB (`E2BIG`), so a larger value would fail
/// every task of the run instead of the trigger.
pub const MAX_PARAMS_BYTES: usize = 64 * 1024;

/// A param's value. The default in `[params]` fixes the type; integers are
/// accepted where a float is declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
}

/// Why params (or the logical date) given for a run were rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error(
        "param `{name}` contains a NUL character (\\u0000), which no command argument or environment variable can hold; remove it"
    )]
    Nul { name: String },
    #[error(
        "the run's params are {bytes} bytes as JSON, over the limit of {} ({MAX_PARAMS_BYTES} bytes); keep large data in files or artifacts and pass their path or URL as a param",
        ByteSize(MAX_PARAMS_BYTES as u64)
    )]
    TooLarge { bytes: usize },
    #[error(
        "logical_date {date} is outside the years 1 to 9999; give an RFC 3339 time such as 2026-01-01T00:00:00Z"
    )]
    LogicalDateOutOfRange { date: String },
    #[error("unknown param `{name}`{hint}; declared params: {declared}")]
    Unknown {
        name: String,
        /// `; did you mean `x`?` for a near miss, else empty.
        hint: String,
        declared: String,
    },
    #[error("param `{name}` expects {expected}, got {given}")]
    WrongType {
        name: String,
        expected: &'static str,
        given: String,
    },
    #[error("`{0}` is not NAME=VALUE")]
    NotAssignment(String),
}

impl ParamValue {
    /// The type's name as users see it in messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            ParamValue::Bool(_) => "a bool",
            ParamValue::Int(_) => "an integer",
            ParamValue::Float(_) => "a float",
            ParamValue::String(_) => "a string",
        }
    }

    /// Converts a JSON value to the type of `declared`, or explains why not.
    pub fn from_json(
        name: &str,
        declared: &ParamValue,
        given: &serde_json::Value,
    ) -> Result<ParamValue, ParamError> {
        use serde_json::Value as J;
        let converted = match (declared, given) {
            (ParamValue::Bool(_), J::Bool(b)) => Some(ParamValue::Bool(*b)),
            (ParamValue::Int(_), J::Number(n)) => n.as_i64().map(ParamValue::Int),
            (ParamValue::Float(_), J::Number(n)) => n.as_f64().map(ParamValue::Float),
            (ParamValue::String(_), J::String(s)) => Some(ParamValue::String(s.clone())),
            _ => None,
        };
        converted.ok_or_else(|| ParamError::WrongType {
            name: name.to_owned(),
            expected: declared.type_name(),
            given: describe_json(given),
        })
    }

    /// Parses a `--param k=v` value as the declared type: `true`/`false` for
    /// bools, decimal numbers for ints and floats, anything for strings.
    pub fn parse_cli(declared: &ParamValue, raw: &str) -> Result<ParamValue, ParamError> {
        let wrong = |expected| ParamError::WrongType {
            name: String::new(),
            expected,
            given: format!("{raw:?}"),
        };
        match declared {
            ParamValue::Bool(_) => match raw.trim() {
                "true" => Ok(ParamValue::Bool(true)),
                "false" => Ok(ParamValue::Bool(false)),
                _ => Err(wrong("a bool (true or false)")),
            },
            ParamValue::Int(_) => raw
                .trim()
                .parse()
                .map(ParamValue::Int)
                .map_err(|_| wrong("an integer")),
            ParamValue::Float(_) => raw
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(ParamValue::Float)
                .ok_or_else(|| wrong("a float")),
            ParamValue::String(_) => Ok(ParamValue::String(raw.to_owned())),
        }
    }

    /// The JSON form passed to tasks in `TRAINYARD_PARAMS`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ParamValue::Bool(b) => serde_json::Value::Bool(*b),
            ParamValue::Int(i) => serde_json::Value::from(*i),
            ParamValue::Float(f) => serde_json::Value::from(*f),
            ParamValue::String(s) => serde_json::Value::String(s.clone()),
        }
    }
}

impl fmt::Display for ParamValue {
    /// The text substituted for `{{ params.X }}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::String(s) => f.write_str(s),
        }
    }
}

fn describe_json(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    match v {
        J::Null => "null".into(),
        J::Bool(b) => format!("a bool ({b})"),
        J::Number(n) if n.is_i64() || n.is_u64() => format!("an integer ({n})"),
        J::Number(n) => format!("a float ({n})"),
        J::String(s) => format!("a string ({s:?})"),
        J::Array(_) => "an array".into(),
        J::Object(_) => "an object".into(),
    }
}

/// Merges `given` over the declared defaults, rejecting unknown names, wrong
/// types, strings with a NUL and params over [`MAX_PARAMS_BYTES`] as JSON.
/// Used by [`super::DagSpec::validate_params`], the one check every way of
/// creating a run (API, UI, CLI, a standby replica) goes through; cron and
/// backfill runs use the declared defaults, which DAG validation holds to
/// the same rules.
pub fn merge_params(
    declared: &BTreeMap<String, ParamValue>,
    given: &serde_json::Map<String, serde_json::Value>,
) -> Result<BTreeMap<String, ParamValue>, ParamError> {
    let mut out = declared.clone();
    for (name, value) in given {
        let Some(default) = declared.get(name) else {
            let names: Vec<&str> = declared.keys().map(String::as_str).collect();
            return Err(ParamError::Unknown {
                name: name.clone(),
                hint: crate::suggest::did_you_mean(name, names.iter().copied()),
                declared: if names.is_empty() {
                    "(none)".into()
                } else {
                    names.join(", ")
                },
            });
        };
        out.insert(name.clone(), ParamValue::from_json(name, default, value)?);
    }
    if let Some((name, _)) = out
        .iter()
        .find(|(_, v)| matches!(v, ParamValue::String(s) if s.contains('\0')))
    {
        return Err(ParamError::Nul { name: name.clone() });
    }
    let bytes = params_json_size(&out);
    if bytes > MAX_PARAMS_BYTES {
        return Err(ParamError::TooLarge { bytes });
    }
    Ok(out)
}

/// The size of `params` as the JSON object tasks receive, without building it.
pub fn params_json_size(params: &BTreeMap<String, ParamValue>) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing to a counter cannot fail, and these values always serialize.
    let _ = serde_json::to_writer(&mut count, params);
    count.0
}

/// A run's logical date must lie in the years 1 to 9999: RFC 3339 (how
/// tasks receive it), the UI and both stores agree on nothing outside.
pub fn check_logical_date(date: DateTime<Utc>) -> Result<(), ParamError> {
    if (1..=9999).contains(&date.year()) {
        Ok(())
    } else {
        Err(ParamError::LogicalDateOutOfRange {
            date: date.to_rfc3339(),
        })
    }
}

/// Splits `k=v` into name and raw value (for `--param`).
pub fn split_assignment(raw: &str) -> Result<(&str, &str), ParamError> {
    raw.split_once('=')
        .filter(|(k, _)| !k.trim().is_empty())
        .map(|(k, v)| (k.trim(), v))
        .ok_or_else(|| ParamError::NotAssignment(raw.to_owned()))
}

/// Parses `--param k=v` strings against the declared params into the JSON
/// map that [`merge_params`] takes, naming the param in any error.
pub fn cli_params_to_json(
    declared: &BTreeMap<String, ParamValue>,
    raw: &[String],
) -> Result<serde_json::Map<String, serde_json::Value>, ParamError> {
    let mut out = serde_json::Map::new();
    for item in raw {
        let (name, value) = split_assignment(item)?;
        let Some(default) = declared.get(name) else {
            let names: Vec<&str> = declared.keys().map(String::as_str).collect();
            return Err(ParamError::Unknown {
                name: name.to_owned(),
                hint: crate::suggest::did_you_mean(name, names.iter().copied()),
                declared: if names.is_empty() {
                    "(none)".into()
                } else {
                    names.join(", ")
                },
            });
        };
        let parsed = ParamValue::parse_cli(default, value).map_err(|e| match e {
            ParamError::WrongType {
                expected, given, ..
            } => ParamError::WrongType {
                name: name.to_owned(),
                expected,
                given,
            },
            other => other,
        })?;
        out.insert(name.to_owned(), parsed.to_json());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared() -> BTreeMap<String, ParamValue> {
        BTreeMap::from([
            ("lr".to_owned(), ParamValue::Float(0.001)),
            ("epochs".to_owned(), ParamValue::Int(10)),
            ("dry_run".to_owned(), ParamValue::Bool(false)),
            ("model".to_owned(), ParamValue::String("small".into())),
        ])
    }

    fn obj(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn given_params_override_defaults_and_ints_pass_as_floats() {
        let merged = merge_params(&declared(), &obj(json!({"lr": 1, "epochs": 3}))).unwrap();
        assert_eq!(merged["lr"], ParamValue::Float(1.0));
        assert_eq!(merged["epochs"], ParamValue::Int(3));
        assert_eq!(merged["model"], ParamValue::String("small".into()));
    }

    #[test]
    fn unknown_param_is_rejected_by_name() {
        let err = merge_params(&declared(), &obj(json!({"lrr": 0.1}))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`lrr`") && msg.contains("lr"), "{msg}");
    }

    #[test]
    fn wrong_type_names_param_expected_and_given() {
        let err = merge_params(&declared(), &obj(json!({"epochs": "ten"}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "param `epochs` expects an integer, got a string (\"ten\")"
        );
        let err = merge_params(&declared(), &obj(json!({"epochs": 2.5}))).unwrap_err();
        assert!(err.to_string().contains("got a float (2.5)"), "{err}");
    }

    #[test]
    fn cli_values_parse_as_declared_type() {
        let d = declared();
        let m = cli_params_to_json(&d, &["lr=0.5".into(), "dry_run=true".into()]).unwrap();
        assert_eq!(m["lr"], json!(0.5));
        assert_eq!(m["dry_run"], json!(true));
        let err = cli_params_to_json(&d, &["epochs=lots".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "param `epochs` expects an integer, got \"lots\""
        );
        assert!(matches!(
            cli_params_to_json(&d, &["epochs".into()]),
            Err(ParamError::NotAssignment(_))
        ));
        assert_eq!(
            ParamValue::parse_cli(&ParamValue::String(String::new()), "a=b c"),
            Ok(ParamValue::String("a=b c".into()))
        );
    }

    #[test]
    fn a_nul_in_a_string_param_is_rejected_by_name() {
        let err = merge_params(&declared(), &obj(json!({"model": "a\u{0}b"}))).unwrap_err();
        assert_eq!(
            err,
            ParamError::Nul {
                name: "model".into()
            }
        );
        assert!(err.to_string().contains("NUL"), "{err}");
    }

    #[test]
    fn params_over_the_cap_are_rejected_with_size_limit_and_advice() {
        let big = "x".repeat(MAX_PARAMS_BYTES);
        let err = merge_params(&declared(), &obj(json!({ "model": big }))).unwrap_err();
        let ParamError::TooLarge { bytes } = err else {
            panic!("{err:?}");
        };
        assert!(bytes > MAX_PARAMS_BYTES);
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("{bytes} bytes"))
                && msg.contains("64KiB (65536 bytes)")
                && msg.contains("pass their path or URL"),
            "{msg}"
        );
        // Just under the cap is fine, and the size is the JSON's.
        let fits = "x".repeat(MAX_PARAMS_BYTES - 200);
        let merged = merge_params(&declared(), &obj(json!({ "model": fits }))).unwrap();
        let json = serde_json::to_string(&merged).unwrap();
        assert_eq!(params_json_size(&merged), json.len());
    }

    #[test]
    fn logical_dates_outside_years_1_to_9999_are_rejected() {
        use chrono::TimeZone;
        let ok = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(check_logical_date(ok), Ok(()));
        assert_eq!(
            check_logical_date(Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap()),
            Ok(())
        );
        for year in [0, -5, 10000] {
            let d = Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap();
            let err = check_logical_date(d).unwrap_err();
            assert!(err.to_string().contains("years 1 to 9999"), "{err}");
        }
    }

    #[test]
    fn json_form_round_trips_types() {
        for v in [
            ParamValue::Bool(true),
            ParamValue::Int(3),
            ParamValue::Float(1.0),
            ParamValue::String("x".into()),
        ] {
            let back: ParamValue =
                serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            assert_eq!(back, v);
        }
    }
}
