//! Resource requests and sizes: cpus, memory, gpus, gpu_memory, gpu_model.
//!
//! A [`ResourceRequest`] is what one task asks of a worker; placement compares
//! it with what workers register. [`ByteSize`] parses and prints the sizes
//! users write in DAG files ("4GiB", "512MB", "80GB").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size; write a number and a unit, e.g. \"4GiB\" or \"512MB\"")]
    Empty,
    #[error("{0:?} is not a size; write a number and a unit, e.g. \"4GiB\" or \"512MB\"")]
    BadNumber(String),
    #[error(
        "unknown size unit {unit:?} in {input:?}; use B, KB, MB, GB, TB, PB (decimal) or KiB, MiB, GiB, TiB, PiB (binary)"
    )]
    BadUnit { input: String, unit: String },
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// A number of bytes. Parses decimal (`KB`, `MB`, `GB`, `TB`, `PB`) and binary
/// (`KiB` … `PiB`, also Kubernetes-style `Ki` … `Pi`) units; a bare number is
/// bytes. Prints with the largest unit that divides it exactly, so
/// `ByteSize::from_str(&b.to_string()) == Ok(b)` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const PIB: u64 = 1 << 50;

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }

    pub const fn gib(n: u64) -> Self {
        ByteSize(n * GIB)
    }

    pub const fn mib(n: u64) -> Self {
        ByteSize(n * MIB)
    }

    /// Parses "40GiB", "512MB", "1.5GiB", "1024" (bytes).
    pub fn parse(input: &str) -> Result<Self, SizeError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(SizeError::Empty);
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: String = num.chars().filter(|c| *c != '_').collect();
        let unit = unit.trim();
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "t" | "tb" => 1_000_000_000_000,
            "p" | "pb" => 1_000_000_000_000_000,
            "ki" | "kib" => KIB,
            "mi" | "mib" => MIB,
            "gi" | "gib" => GIB,
            "ti" | "tib" => TIB,
            "pi" | "pib" => PIB,
            _ => {
                return Err(SizeError::BadUnit {
                    input: input.to_owned(),
                    unit: unit.to_owned(),
                });
            }
        };
        if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
            return Err(SizeError::BadNumber(input.to_owned()));
        }
        if let Ok(whole) = num.parse::<u64>() {
            return whole
                .checked_mul(multiplier)
                .map(ByteSize)
                .ok_or_else(|| SizeError::Overflow(input.to_owned()));
        }
        // Fractional sizes ("1.5GiB") are rounded to whole bytes.
        let value: f64 = num
            .parse()
            .map_err(|_| SizeError::BadNumber(input.to_owned()))?;
        let bytes = (value * multiplier as f64).round();
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(SizeError::Overflow(input.to_owned()));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ByteSize::parse(s)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n == 0 {
            return f.write_str("0B");
        }
        const UNITS: [(u64, &str); 10] = [
            (PIB, "PiB"),
            (1_000_000_000_000_000, "PB"),
            (TIB, "TiB"),
            (1_000_000_000_000, "TB"),
            (GIB, "GiB"),
            (1_000_000_000, "GB"),
            (MIB, "MiB"),
            (1_000_000, "MB"),
            (KIB, "KiB"),
            (1_000, "KB"),
        ];
        for (size, name) in UNITS {
            if n.is_multiple_of(size) {
                return write!(f, "{}{}", n / size, name);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Bytes(u64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Bytes(n) => Ok(ByteSize(n)),
            Repr::Text(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// What one task asks of the worker it runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceRequest {
    /// CPU cores (fractions allowed); default 1.
    pub cpus: f64,
    /// Memory the task needs; `None` means "no explicit requirement".
    pub memory: Option<ByteSize>,
    /// Whole GPUs the task gets exclusively; default 0.
    pub gpus: u32,
    /// Minimum memory of each assigned GPU.
    pub gpu_memory: Option<ByteSize>,
    /// Regex the GPU model name must match, e.g. "A100|H100".
    pub gpu_model: Option<String>,
}

impl Default for ResourceRequest {
    fn default() -> Self {
        ResourceRequest {
            cpus: 1.0,
            memory: None,
            gpus: 0,
            gpu_memory: None,
            gpu_model: None,
        }
    }
}

impl fmt::Display for ResourceRequest {
    /// Short human form used by `dag show`: "cpus=2 memory=4GiB gpus=2 (>=40GiB, A100|H100)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpus={}", self.cpus)?;
        if let Some(m) = self.memory {
            write!(f, " memory={m}")?;
        }
        if self.gpus > 0 {
            write!(f, " gpus={}", self.gpus)?;
            match (&self.gpu_memory, &self.gpu_model) {
                (Some(mem), Some(model)) => write!(f, " (>={mem}, {model})")?,
                (Some(mem), None) => write!(f, " (>={mem})")?,
                (None, Some(model)) => write!(f, " ({model})")?,
                (None, None) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_units_parse() {
        assert_eq!(ByteSize::parse("4GiB"), Ok(ByteSize(4 * GIB)));
        assert_eq!(ByteSize::parse("512MB"), Ok(ByteSize(512_000_000)));
        assert_eq!(ByteSize::parse("80GB"), Ok(ByteSize(80_000_000_000)));
        assert_eq!(ByteSize::parse("16Gi"), Ok(ByteSize(16 * GIB)));
        assert_eq!(ByteSize::parse("1.5GiB"), Ok(ByteSize(3 * GIB / 2)));
        assert_eq!(ByteSize::parse("1024"), Ok(ByteSize(1024)));
        assert_eq!(ByteSize::parse("10 kb"), Ok(ByteSize(10_000)));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        assert_eq!(ByteSize::parse(""), Err(SizeError::Empty));
        assert!(matches!(
            ByteSize::parse("4 parsecs"),
            Err(SizeError::BadUnit { .. })
        ));
        assert!(matches!(
            ByteSize::parse("GiB"),
            Err(SizeError::BadNumber(_))
        ));
        assert!(matches!(
            ByteSize::parse("-4GiB"),
            Err(SizeError::BadUnit { .. }) | Err(SizeError::BadNumber(_))
        ));
        assert!(matches!(
            ByteSize::parse("99999999PiB"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in ["40GiB", "512MB", "80GB", "1B", "1000KB", "3KiB", "1536MiB"] {
            let b = ByteSize::parse(s).unwrap();
            assert_eq!(ByteSize::parse(&b.to_string()), Ok(b));
        }
        assert_eq!(ByteSize::parse("40GiB").unwrap().to_string(), "40GiB");
        assert_eq!(ByteSize(1234).to_string(), "1234B");
    }

    #[test]
    fn json_round_trip_of_request() {
        let r = ResourceRequest {
            cpus: 2.5,
            memory: Some(ByteSize::gib(4)),
            gpus: 2,
            gpu_memory: Some(ByteSize::gib(40)),
            gpu_model: Some("A100|H100".into()),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"4GiB\""), "{json}");
        let back: ResourceRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }
}
