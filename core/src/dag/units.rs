//! Durations as users write them in DAG files ("30s", "1h30m", "500ms") and
//! their serde form (the same human string, so stored specs stay readable).

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration ({reason}); write e.g. \"30s\", \"1h30m\" or \"500ms\"")]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

/// Parses "30s", "1h30m", "500ms", "2days" (humantime syntax).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError {
            input: input.to_owned(),
            reason: "empty".into(),
        });
    }
    humantime::parse_duration(s).map_err(|e| DurationError {
        input: input.to_owned(),
        reason: e.to_string(),
    })
}

/// Formats a duration the way [`parse_duration`] reads it back ("1h 30m").
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `#[serde(with = "units::serde_duration")]` for a `Duration` field.
pub mod serde_duration {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "units::serde_opt_duration")]` for an `Option<Duration>` field.
pub mod serde_opt_duration {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_duration("2days"), Ok(Duration::from_secs(2 * 86400)));
    }

    #[test]
    fn bad_durations_are_rejected_with_a_hint() {
        for bad in ["", "30", "fast", "1x", "-5s", "1h30"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.to_string().contains("\"30s\""), "{err}");
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_secs(5400),
            Duration::from_millis(1500),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
