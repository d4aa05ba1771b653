//! One attempt from Assign to TaskFinished: prepare its directory, fetch
//! inputs, launch it through [`crate::exec`], batch its log lines, read its
//! metrics, upload outputs, and report each step to the agent's loop as a
//! [`JobEvent`]. The loop decides what reaches the scheduler (a killed
//! attempt's reports are dropped there).
//!
//! Every line sent is one line: text with embedded newlines (a multi-line
//! error of the worker's own) becomes several lines, each with its own
//! sequence number, and secret values are masked ([`super::mask`]) before
//! anything leaves the worker.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tracing::{debug, instrument};
use trainyard_proto::v1;

use super::AttemptError;
use super::cleanup;
use super::mask::{MIN_SECRET_BYTES, Masker};
use super::workdir::{ArtifactHook, AttemptPaths, UpstreamOutput};
use crate::convert::{finished_to_proto, launch_from_assign, log_line_to_proto};
use crate::exec::{self, ExecOutcome, ExecStatus, Metrics, StopHandle, Supervisor};

/// Flush a log batch after this long…
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// …or once it has this many lines.
pub const LOG_BATCH_LINES: usize = 100;

/// Identifies an attempt on the wire: (task instance id, attempt number).
pub type AttemptKey = (String, u32);

/// What a job tells the agent's loop.
#[derive(Debug)]
pub enum JobEvent {
    Started(AttemptKey, v1::TaskStarted),
    Logs(AttemptKey, v1::LogLines),
    Finished(AttemptKey, v1::TaskFinished),
}

/// Everything one attempt needs.
#[derive(Debug)]
pub struct Job {
    pub key: AttemptKey,
    pub assign: v1::Assign,
    pub work_dir: std::path::PathBuf,
    pub artifacts: Arc<dyn ArtifactHook>,
    /// Records and guards the task's process group (see `exec::groups`).
    pub supervisor: Option<Supervisor>,
}

/// Collects lines into batches and masks secret values.
struct Batcher {
    key: AttemptKey,
    attempt: v1::AttemptRef,
    run_id: String,
    task_id: String,
    lines: Vec<v1::LogLine>,
    /// The task's secret values in every form they are masked in.
    secrets: Masker,
    /// Sequence number of the next line sent: lines are numbered here, in
    /// the order they are batched, so the worker's own lines and the task's
    /// never share a number.
    next_seq: u64,
    events: mpsc::Sender<JobEvent>,
}

impl Batcher {
    /// Masks secrets, then queues one line per line of `line.text`.
    fn push(&mut self, line: v1::LogLine) {
        let text = if self.secrets.is_empty() {
            line.text
        } else {
            self.secrets.mask(&line.text)
        };
        if !text.contains('\n') {
            return self.queue(line.stream, line.at_unix_ms, text);
        }
        for part in text.split('\n') {
            let part = part.strip_suffix('\r').unwrap_or(part);
            self.queue(line.stream, line.at_unix_ms, part.to_owned());
        }
    }

    fn queue(&mut self, stream: i32, at_unix_ms: i64, text: String) {
        self.lines.push(v1::LogLine {
            stream,
            at_unix_ms,
            text,
            seq: self.next_seq,
        });
        self.next_seq += 1;
    }

    /// A line about the task from the worker itself.
    fn system(&mut self, text: impl Into<String>) {
        let line = v1::LogLine {
            stream: v1::LogStream::System as i32,
            at_unix_ms: Utc::now().timestamp_millis(),
            text: text.into(),
            // Numbered when queued.
            seq: 0,
        };
        self.push(line);
    }

    async fn flush(&mut self) {
        if self.lines.is_empty() {
            return;
        }
        let msg = v1::LogLines {
            attempt: Some(self.attempt.clone()),
            lines: std::mem::take(&mut self.lines),
            run_id: self.run_id.clone(),
            task_id: self.task_id.clone(),
        };
        let _ = self
            .events
            .send(JobEvent::Logs(self.key.clone(), msg))
            .await;
    }
}

/// How an attempt ended, with what it consumed and produced.
struct Done {
    outcome: ExecOutcome,
    metrics: Metrics,
    inputs: Vec<v1::Artifact>,
    outputs: Vec<v1::Artifact>,
    /// The command could not be started at all (see
    /// [`AttemptError::cannot_start`]): retrying cannot help.
    cannot_start: bool,
}

/// What becomes of an attempt's folder once it ended (see `cleanup`).
async fn settle_dir(job: &Job, status: ExecStatus) {
    let a = &job.assign;
    let Ok(paths) = AttemptPaths::new(
        &job.work_dir,
        &a.run_id,
        &a.dag_id,
        &a.task_id,
        job.key.1,
        Vec::new(),
    ) else {
        return;
    };
    if tokio::fs::symlink_metadata(&paths.dir).await.is_err() {
        return;
    }
    match status {
        // Its outputs are in the store (the upload succeeded, or the status
        // would be Failed): nothing here is needed any more.
        ExecStatus::Succeeded if job.artifacts.stores_outputs() => {
            cleanup::remove_attempt_dir(&paths.dir).await;
        }
        // Same-host fallback: downstream tasks read `out/` in place.
        ExecStatus::Succeeded => cleanup::mark_ended(&paths.dir, "succeeded").await,
        other => cleanup::mark_ended(&paths.dir, &format!("{other:?}").to_lowercase()).await,
    }
}

fn artifact_to_proto(r: trainyard_artifacts::ArtifactRecord) -> v1::Artifact {
    v1::Artifact {
        key: r.key,
        uri: r.uri,
        size: r.size,
        sha256: r.sha256,
    }
}

/// A failure before the process ran, as an outcome.
fn not_started(message: String) -> ExecOutcome {
    ExecOutcome {
        exit_code: None,
        signal: None,
        status: ExecStatus::Failed,
        duration: Duration::ZERO,
        message: Some(message),
    }
}

/// Runs the attempt to its end; always sends exactly one `Finished`.
#[instrument(skip_all, fields(ti = %job.key.0, attempt = job.key.1, task = %job.assign.task_id))]
pub async fn run_job(job: Job, stop: StopHandle, events: mpsc::Sender<JobEvent>) {
    let attempt_ref = v1::AttemptRef {
        task_instance_id: job.key.0.clone(),
        attempt: job.key.1,
    };
    let mut batch = Batcher {
        key: job.key.clone(),
        attempt: attempt_ref.clone(),
        run_id: job.assign.run_id.clone(),
        task_id: job.assign.task_id.clone(),
        lines: Vec::new(),
        secrets: Masker::default(),
        next_seq: 0,
        events: events.clone(),
    };
    let done = match attempt(&job, &stop, &mut batch).await {
        Ok(done) => done,
        Err(e) => {
            let cannot_start = e.cannot_start();
            let mut message = e.to_string();
            if cannot_start {
                message.push_str(
                    "; the command cannot start (check the program's name, PATH and its \
                     executable bit), so the task fails now without using its retries",
                );
            }
            batch.system(message.clone());
            Done {
                outcome: not_started(message),
                metrics: Metrics::default(),
                inputs: Vec::new(),
                outputs: Vec::new(),
                cannot_start,
            }
        }
    };
    batch.flush().await;
    // Before the report: once the loop hears of the end, the attempt no
    // longer counts as running for the sweep.
    settle_dir(&job, done.outcome.status).await;
    let mut finished = finished_to_proto(attempt_ref, &done.outcome, &done.metrics, Utc::now());
    finished.inputs = done.inputs;
    finished.outputs = done.outputs;
    if done.cannot_start {
        finished.outcome = v1::TaskOutcome::CannotStart as i32;
    }
    debug!(status = ?done.outcome.status, "attempt finished");
    let _ = events.send(JobEvent::Finished(job.key, finished)).await;
}

/// Everything between Ack and TaskFinished; `Err` is a failure before the
/// process ran (bad assignment, directories, inputs, spawn).
async fn attempt(job: &Job, stop: &StopHandle, batch: &mut Batcher) -> Result<Done, AttemptError> {
    let a = &job.assign;
    let mut paths = AttemptPaths::new(
        &job.work_dir,
        &a.run_id,
        &a.dag_id,
        &a.task_id,
        job.key.1,
        a.upstream.clone(),
    )?;
    paths.upstream_outputs = a
        .upstream_outputs
        .iter()
        .map(|o| UpstreamOutput {
            task_id: o.task_id.clone(),
            attempt: o.attempt,
            prefix: o.prefix.clone(),
        })
        .collect();
    paths
        .prepare()
        .await
        .map_err(AttemptError::workdir(&paths.dir))?;
    let fetched = job.artifacts.fetch_inputs(&paths).await?;
    for note in fetched.notes {
        batch.system(note);
    }
    let inputs = fetched.records.into_iter().map(artifact_to_proto).collect();

    let mut assign = a.clone();
    // The version's code, unless the task names its own directory.
    if let Some(code) = a.code.as_ref().filter(|_| a.working_dir.is_empty()) {
        let snapshot = super::code::from_proto(code);
        match job
            .artifacts
            .fetch_code(&job.work_dir, &snapshot, &paths.dir.join("code"))
            .await?
        {
            Some(dir) => assign.working_dir = dir.display().to_string(),
            None => batch.system(
                "this worker has no artifact store, so the DAG version's code is not fetched; \
                 the task runs in the worker's working directory",
            ),
        }
    }
    assign.output_dir = paths.out_dir.display().to_string();
    assign.input_dir = paths.in_dir.display().to_string();
    assign.metrics_file = paths.metrics_file.display().to_string();
    let (_, mut launch, _) =
        launch_from_assign(&assign).map_err(|e| AttemptError::BadAssignment(e.to_string()))?;
    for (name, source) in &a.env_from_worker {
        match std::env::var(source) {
            Ok(v) => {
                launch.env.insert(name.clone(), v);
            }
            Err(_) => batch.system(format!(
                "variable {name} is taken from the worker's {source}, which is not set; left out"
            )),
        }
    }
    let (secrets, too_short) = Masker::new(
        a.secret_env
            .iter()
            .filter_map(|n| launch.env.get(n))
            .map(String::as_str),
    );
    batch.secrets = secrets;
    if too_short > 0 {
        batch.system(format!(
            "{too_short} secret value(s) are shorter than {MIN_SECRET_BYTES} bytes and are not masked in this log (masking them would garble it); use longer secrets"
        ));
    }
    if stop.kill.is_cancelled() || stop.cancel.is_cancelled() {
        return Err(AttemptError::Stopped);
    }

    let (log_tx, mut log_rx) = mpsc::channel(1024);
    let running = exec::spawn_supervised(launch, log_tx, job.supervisor.as_ref())?;
    let started = v1::TaskStarted {
        attempt: Some(batch.attempt.clone()),
        assignment_id: a.assignment_id.clone(),
        started_at_unix_ms: Utc::now().timestamp_millis(),
        pid: running.pid(),
        gpu_indices: a.gpu_indices.clone(),
    };
    let _ = events_send(batch, JobEvent::Started(job.key.clone(), started)).await;

    let wait = running.wait(stop.clone());
    tokio::pin!(wait);
    let mut tick = tokio::time::interval(LOG_FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut result = None;
    let mut logs_open = true;
    while result.is_none() || logs_open {
        tokio::select! {
            r = &mut wait, if result.is_none() => result = Some(r),
            line = log_rx.recv(), if logs_open => match line {
                Some(line) => {
                    batch.push(log_line_to_proto(&line));
                    if batch.lines.len() >= LOG_BATCH_LINES {
                        batch.flush().await;
                    }
                }
                None => logs_open = false,
            },
            _ = tick.tick() => batch.flush().await,
        }
    }
    let outcome = match result {
        Some(Ok(outcome)) => outcome,
        Some(Err(e)) => not_started(e.to_string()),
        None => not_started("the task ended without a status".to_owned()),
    };
    if let Some(msg) = &outcome.message {
        batch.system(msg.clone());
    }

    let metrics = exec::read_metrics_file(&paths.metrics_file).await;
    for w in &metrics.warnings {
        batch.system(w.clone());
    }
    let mut outputs = Vec::new();
    let outcome = match job.artifacts.upload_outputs(&paths).await {
        Ok(uploaded) => {
            for note in uploaded.notes {
                batch.system(note);
            }
            outputs = uploaded
                .records
                .into_iter()
                .map(artifact_to_proto)
                .collect();
            outcome
        }
        Err(e) => {
            let message = e.to_string();
            batch.system(message.clone());
            match outcome.status {
                ExecStatus::Succeeded => ExecOutcome {
                    status: ExecStatus::Failed,
                    message: Some(message),
                    ..outcome
                },
                _ => outcome,
            }
        }
    };
    Ok(Done {
        outcome,
        metrics,
        inputs,
        outputs,
        cannot_start: false,
    })
}

async fn events_send(batch: &Batcher, ev: JobEvent) -> Result<(), ()> {
    batch.events.send(ev).await.map_err(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::agent::workdir::LocalInputs;

    fn job(dir: &std::path::Path, script: &str) -> Job {
        Job {
            key: ("11".into(), 1),
            assign: v1::Assign {
                assignment_id: "11-1".into(),
                attempt: Some(v1::AttemptRef {
                    task_instance_id: "11".into(),
                    attempt: 1,
                }),
                run_id: "run1".into(),
                dag_id: "dag".into(),
                task_id: "task".into(),
                argv: vec![script.into()],
                shell: true,
                env: [("SECRET".to_owned(), "hunter2".to_owned())]
                    .into_iter()
                    .collect(),
                secret_env: vec!["SECRET".into()],
                gpu_indices: vec![1],
                ..Default::default()
            },
            work_dir: dir.to_path_buf(),
            artifacts: Arc::new(LocalInputs),
            supervisor: None,
        }
    }

    async fn collect(job: Job) -> Vec<JobEvent> {
        let (tx, mut rx) = mpsc::channel(64);
        run_job(job, StopHandle::new(), tx).await;
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            out.push(ev);
        }
        out
    }

    #[tokio::test]
    async fn a_job_reports_started_logs_metrics_and_success() {
        let tmp = tempfile::tempdir().unwrap();
        let script = r#"echo "out=$TRAINYARD_OUTPUT_DIR pw=$SECRET gpus=$CUDA_VISIBLE_DEVICES"; echo '{"auc": 0.9}' > "$TRAINYARD_METRICS_FILE""#;
        let events = collect(job(tmp.path(), script)).await;
        assert!(matches!(events.first(), Some(JobEvent::Started(..))));
        let text: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                JobEvent::Logs(_, l) => Some(l.lines.iter().map(|l| l.text.clone())),
                _ => None,
            })
            .flatten()
            .collect();
        let out_dir = tmp.path().join("run1/task/1/out");
        assert_eq!(
            text,
            vec![format!("out={} pw=*** gpus=1", out_dir.display())]
        );
        let Some(JobEvent::Finished(_, f)) = events.last() else {
            panic!("no Finished: {events:?}");
        };
        assert_eq!(f.outcome, v1::TaskOutcome::Succeeded as i32);
        assert_eq!(f.metrics["auc"], 0.9);
    }

    #[tokio::test]
    async fn outputs_are_uploaded_and_reported_and_secrets_never_leave_unmasked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let hook =
            crate::agent::StoreArtifacts::from_url(&store.path().display().to_string()).unwrap();
        let script = r#"echo "token=$SECRET"; echo "$SECRET" > "$TRAINYARD_OUTPUT_DIR/model.bin"; echo "x $SECRET y" >&2"#;
        let mut j = job(tmp.path(), script);
        j.artifacts = Arc::new(hook);
        let events = collect(j).await;
        let text: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                JobEvent::Logs(_, l) => Some(l.lines.iter().map(|l| l.text.clone())),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(text.contains(&"token=***".to_owned()), "{text:?}");
        assert!(text.contains(&"x *** y".to_owned()), "{text:?}");
        assert!(text.iter().all(|l| !l.contains("hunter2")), "{text:?}");
        let Some(JobEvent::Finished(_, f)) = events.last() else {
            panic!("no Finished: {events:?}");
        };
        assert_eq!(f.outcome, v1::TaskOutcome::Succeeded as i32);
        assert_eq!(f.outputs.len(), 1, "{f:?}");
        assert_eq!(f.outputs[0].key, "runs/run1/task/1/out/model.bin");
        assert_eq!(f.outputs[0].size, 8);
        assert!(f.inputs.is_empty());
    }

    #[tokio::test]
    async fn a_successful_uploaded_attempt_leaves_no_folder_and_a_failed_one_is_kept_marked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let hook: Arc<dyn ArtifactHook> = Arc::new(
            crate::agent::StoreArtifacts::from_url(&store.path().display().to_string()).unwrap(),
        );
        let mut ok = job(tmp.path(), r#"echo model > "$TRAINYARD_OUTPUT_DIR/m.bin""#);
        ok.artifacts = hook.clone();
        let events = collect(ok).await;
        let Some(JobEvent::Finished(_, f)) = events.last() else {
            panic!("no Finished: {events:?}");
        };
        assert_eq!(f.outcome, v1::TaskOutcome::Succeeded as i32);
        assert!(store.path().join("runs/run1/task/1/out/m.bin").is_file());
        assert!(
            !tmp.path().join("run1").exists(),
            "the successful attempt's folder (and its emptied parents) are gone"
        );

        let mut bad = job(
            tmp.path(),
            r#"echo partial > "$TRAINYARD_OUTPUT_DIR/m.bin"; exit 3"#,
        );
        bad.key.1 = 2;
        bad.artifacts = hook;
        let events = collect(bad).await;
        let Some(JobEvent::Finished(_, f)) = events.last() else {
            panic!("no Finished: {events:?}");
        };
        assert_eq!(f.outcome, v1::TaskOutcome::Failed as i32);
        let dir = tmp.path().join("run1/task/2");
        assert!(dir.join("out/m.bin").is_file(), "kept to debug from");
        assert_eq!(
            std::fs::read_to_string(dir.join(crate::agent::cleanup::ENDED_MARKER)).unwrap(),
            "failed\n"
        );
    }

    #[tokio::test]
    async fn without_a_store_a_successful_folder_stays_for_downstream_tasks() {
        let tmp = tempfile::tempdir().unwrap();
        let events = collect(job(tmp.path(), r#"echo x > "$TRAINYARD_OUTPUT_DIR/x""#)).await;
        assert!(matches!(events.last(), Some(JobEvent::Finished(..))));
        assert!(tmp.path().join("run1/task/1/out/x").is_file());
    }

    fn batcher(secrets: &[&str]) -> (Batcher, mpsc::Receiver<JobEvent>) {
        let (tx, rx) = mpsc::channel(8);
        let batch = Batcher {
            key: ("1".into(), 1),
            attempt: v1::AttemptRef::default(),
            run_id: "r".into(),
            task_id: "t".into(),
            lines: Vec::new(),
            secrets: Masker::new(secrets.iter().copied()).0,
            next_seq: 0,
            events: tx,
        };
        (batch, rx)
    }

    fn stdout_line(text: &str, seq: u64) -> v1::LogLine {
        v1::LogLine {
            stream: v1::LogStream::Stdout as i32,
            at_unix_ms: 5,
            text: text.into(),
            seq,
        }
    }

    #[test]
    fn embedded_newlines_become_separate_lines_with_their_own_seq() {
        let (mut batch, _rx) = batcher(&[]);
        batch.system("first\nsecond\r\nthird");
        batch.push(stdout_line("task line", 0));
        let got: Vec<(String, u64, i32)> = batch
            .lines
            .iter()
            .map(|l| (l.text.clone(), l.seq, l.stream))
            .collect();
        let system = v1::LogStream::System as i32;
        let stdout = v1::LogStream::Stdout as i32;
        assert_eq!(
            got,
            vec![
                ("first".to_owned(), 0, system),
                ("second".to_owned(), 1, system),
                ("third".to_owned(), 2, system),
                // The pump's own count restarts at 0; the batch keeps counting.
                ("task line".to_owned(), 3, stdout),
            ]
        );
    }

    #[test]
    fn a_secret_split_across_lines_is_masked_before_splitting() {
        let (mut batch, _rx) = batcher(&["top\nsecret"]);
        batch.system("value: top\nsecret!");
        let texts: Vec<&str> = batch.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["value: ***!"]);
    }

    #[tokio::test]
    async fn encoded_secrets_are_masked_and_short_ones_are_reported_not_masked() {
        let tmp = tempfile::tempdir().unwrap();
        let script = r#"printf 'b64=%s\n' "$(printf %s "$SECRET" | base64)"; echo "url=p%40ss%20word short=$SHORT""#;
        let mut j = job(tmp.path(), script);
        j.assign.env.insert("SHORT".into(), "ab".into());
        j.assign.env.insert("PASS".into(), "p@ss word".into());
        j.assign.secret_env.extend(["SHORT".into(), "PASS".into()]);
        let events = collect(j).await;
        let text: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                JobEvent::Logs(_, l) => Some(l.lines.iter().map(|l| l.text.clone())),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(text.contains(&"b64=***".to_owned()), "{text:?}");
        assert!(text.contains(&"url=*** short=ab".to_owned()), "{text:?}");
        assert!(
            text.iter()
                .any(|l| l.contains("shorter than 4 bytes") && !l.contains("ab")),
            "{text:?}"
        );
    }

    #[tokio::test]
    async fn from_env_copies_a_worker_variable_into_the_clean_environment() {
        // Any variable of this process that a clean environment leaves out.
        let (name, value) = std::env::vars()
            .find(|(k, v)| {
                !crate::exec::passes_clean_env(k.as_ref())
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !v.is_empty()
                    && !v.contains(['\n', '\'', '\\'])
                    && !k.starts_with("TRAINYARD_")
            })
            .expect("the test process has some variable beyond PATH/HOME");
        let tmp = tempfile::tempdir().unwrap();
        let script = format!(r#"echo "copied=$COPIED direct=${{{name}-unset}}""#);
        let mut j = job(tmp.path(), &script);
        j.assign
            .env_from_worker
            .insert("COPIED".into(), name.clone());
        let events = collect(j).await;
        let text: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                JobEvent::Logs(_, l) => Some(l.lines.iter().map(|l| l.text.clone())),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(text, vec![format!("copied={value} direct=unset")]);
    }

    #[tokio::test]
    async fn a_program_that_is_not_found_cannot_start_and_says_why() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = job(tmp.path(), "x");
        j.assign.shell = false;
        j.assign.argv = vec!["/definitely/not/here".into()];
        let events = collect(j).await;
        let Some(JobEvent::Finished(_, f)) = events.last() else {
            panic!("no Finished");
        };
        assert_eq!(f.outcome, v1::TaskOutcome::CannotStart as i32);
        assert!(f.error.contains("/definitely/not/here"), "{}", f.error);
    }

    #[tokio::test]
    async fn a_program_that_is_not_executable_cannot_start() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("not-executable.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let mut j = job(tmp.path(), "x");
        j.assign.shell = false;
        j.assign.argv = vec![script.display().to_string()];
        let events = collect(j).await;
        let Some(JobEvent::Finished(_, f)) = events.last() else {
            panic!("no Finished");
        };
        assert_eq!(
            f.outcome,
            v1::TaskOutcome::CannotStart as i32,
            "{}",
            f.error
        );
    }

    #[tokio::test]
    async fn a_program_that_runs_and_fails_is_an_ordinary_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let events = collect(job(tmp.path(), "exit 4")).await;
        let Some(JobEvent::Finished(_, f)) = events.last() else {
            panic!("no Finished");
        };
        assert_eq!(f.outcome, v1::TaskOutcome::Failed as i32);
    }
}
