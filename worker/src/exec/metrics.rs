//! Reads the metrics a task wrote to `TRAINYARD_METRICS_FILE`: a JSON object
//! of numbers (`{"auc": 0.91, "loss": 0.2}`). Anything else yields warnings
//! for the task log, never an error: a task's exit code decides its outcome,
//! not the tidiness of its metrics.

use std::collections::BTreeMap;
use std::path::Path;

/// Files larger than this are not read; metrics are a handful of numbers.
pub const MAX_METRICS_BYTES: u64 = 1024 * 1024;

/// Metrics that parsed, plus a warning for everything that did not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub values: BTreeMap<String, f64>,
    pub warnings: Vec<String>,
}

/// Reads `path`; a missing file means "no metrics" without a warning.
pub async fn read_metrics_file(path: &Path) -> Metrics {
    let mut out = Metrics::default();
    match tokio::fs::metadata(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => {
            out.warnings
                .push(format!("cannot read metrics file {}: {e}", path.display()));
            return out;
        }
        Ok(meta) if meta.len() > MAX_METRICS_BYTES => {
            out.warnings.push(format!(
                "metrics file {} is {} bytes, larger than the {MAX_METRICS_BYTES} byte limit; ignored",
                path.display(),
                meta.len()
            ));
            return out;
        }
        Ok(_) => {}
    }
    match tokio::fs::read(path).await {
        Ok(bytes) => parse_metrics(&bytes, &path.display().to_string()),
        Err(e) => {
            out.warnings
                .push(format!("cannot read metrics file {}: {e}", path.display()));
            out
        }
    }
}

/// Parses metrics JSON; `origin` names the source in warnings.
pub fn parse_metrics(bytes: &[u8], origin: &str) -> Metrics {
    let mut out = Metrics::default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return out;
    }
    let value: serde_json::Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => {
            out.warnings.push(format!(
                "metrics file {origin} is not valid JSON ({e}); expected an object of numbers like {{\"auc\": 0.91}}"
            ));
            return out;
        }
    };
    let serde_json::Value::Object(map) = value else {
        out.warnings.push(format!(
            "metrics file {origin} holds {}, not a JSON object of numbers",
            kind(&value)
        ));
        return out;
    };
    for (key, value) in map {
        match value.as_f64() {
            Some(n) => {
                out.values.insert(key, n);
            }
            None => out.warnings.push(format!(
                "metric {key:?} in {origin} is {}, not a number; ignored",
                kind(&value)
            )),
        }
    }
    out
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_kept_and_others_warned_about() {
        let m = parse_metrics(
            br#"{"auc": 0.91, "epochs": 10, "note": "hi", "ok": true}"#,
            "m.json",
        );
        assert_eq!(m.values.len(), 2);
        assert_eq!(m.values["auc"], 0.91);
        assert_eq!(m.values["epochs"], 10.0);
        assert_eq!(m.warnings.len(), 2);
        assert!(m.warnings[0].contains("\"note\""), "{:?}", m.warnings);
    }

    #[test]
    fn bad_json_and_non_objects_warn_without_values() {
        let m = parse_metrics(b"{auc: 1", "m.json");
        assert!(m.values.is_empty());
        assert!(m.warnings[0].contains("not valid JSON"));
        let m = parse_metrics(b"[1, 2]", "m.json");
        assert!(m.warnings[0].contains("an array"));
    }

    #[test]
    fn empty_file_means_no_metrics() {
        assert_eq!(parse_metrics(b"  \n", "m.json"), Metrics::default());
    }

    #[tokio::test]
    async fn missing_file_is_silent() {
        let m = read_metrics_file(Path::new("/nonexistent/trainyard/metrics.json")).await;
        assert_eq!(m, Metrics::default());
    }
}
