//! The `TRAINYARD_*` environment a task sees, built from its assignment.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Facts about one attempt that become `TRAINYARD_*` variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskContext {
    pub run_id: String,
    pub dag_id: String,
    pub task_id: String,
    pub attempt: u32,
    /// RFC 3339.
    pub logical_date: String,
    /// The run's params as a JSON object.
    pub params_json: String,
    pub output_dir: Option<PathBuf>,
    pub input_dir: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
}

impl TaskContext {
    /// The variables for [`super::TaskLaunch::system_env`]; paths that are
    /// not set are left out rather than exported empty.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_string(), v);
        };
        set("TRAINYARD_RUN_ID", self.run_id.clone());
        set("TRAINYARD_DAG_ID", self.dag_id.clone());
        set("TRAINYARD_TASK_ID", self.task_id.clone());
        set("TRAINYARD_ATTEMPT", self.attempt.to_string());
        set("TRAINYARD_LOGICAL_DATE", self.logical_date.clone());
        let params = if self.params_json.is_empty() {
            "{}".to_string()
        } else {
            self.params_json.clone()
        };
        set("TRAINYARD_PARAMS", params);
        for (key, path) in [
            ("TRAINYARD_OUTPUT_DIR", &self.output_dir),
            ("TRAINYARD_INPUT_DIR", &self.input_dir),
            ("TRAINYARD_METRICS_FILE", &self.metrics_file),
        ] {
            if let Some(p) = path {
                set(key, p.display().to_string());
            }
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_every_brief_variable_and_skips_unset_paths() {
        let ctx = TaskContext {
            run_id: "r1".into(),
            dag_id: "churn".into(),
            task_id: "train".into(),
            attempt: 2,
            logical_date: "2026-01-01T03:00:00Z".into(),
            params_json: String::new(),
            metrics_file: Some("/tmp/m.json".into()),
            ..Default::default()
        };
        let env = ctx.env();
        assert_eq!(env["TRAINYARD_ATTEMPT"], "2");
        assert_eq!(env["TRAINYARD_PARAMS"], "{}");
        assert_eq!(env["TRAINYARD_METRICS_FILE"], "/tmp/m.json");
        assert!(!env.contains_key("TRAINYARD_OUTPUT_DIR"));
    }
}
