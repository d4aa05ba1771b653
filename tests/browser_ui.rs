//! The web UI in a real browser: headless Chromium driven over WebDriver
//! (chromedriver, fantoccini) against a real `trainyard standalone` process.
//!
//! One scenario walks what a user does: the DAG list, triggering
//! `churn_retrain` from its form with a param, the run page turning to
//! success without a reload, a task's log, the workers page with its GPUs,
//! and a DAG whose description carries `<script>` rendering it as text.
//! Screenshots of every page land in `<target>/browser-screenshots/`.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).
//! Without them the test fails when `CI=true` and otherwise says it skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{BIN, Proc, copy_example_dags, free_port};

/// Debian's paths; `TRAINYARD_CHROMIUM` / `TRAINYARD_CHROMEDRIVER` override them.
fn chromium() -> String {
    std::env::var("TRAINYARD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

fn chromedriver() -> String {
    std::env::var("TRAINYARD_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

/// Markup a DAG author put in a description; it must show as text.
const HOSTILE: &str = "<script>window.__pwned=1</script><b>bold</b>";

/// A DAG whose description tries to inject a script and markup.
fn hostile_dag() -> String {
    format!(
        "id = \"xss_probe\"\n\
         description = \"{HOSTILE}\"\n\
         tags = [\"<i>tag</i>\"]\n\
         [tasks.noop]\n\
         command = [\"true\"]\n"
    )
}

/// Where screenshots go: `$CARGO_TARGET_DIR` or `<manifest>/target`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("browser-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Kills chromedriver (and the browsers it started) when the test ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_chromedriver(dir: &Path) -> (Driver, String) {
    let port = free_port();
    let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
    let child = Command::new(chromedriver())
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver()));
    let driver = Driver(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on port {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (driver, format!("http://127.0.0.1:{port}"))
}

fn start_standalone(dir: &Path) -> (Proc, String) {
    let ready = dir.join("standalone.ready");
    let log = dir.join("standalone.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["standalone", "--dags", "dags", "--data-dir", "data"])
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .arg("--ready-file")
        .arg(&ready)
        .args(["--gpus", "2xA100-80GB"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let proc = Proc {
        child,
        name: "standalone".into(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        match std::fs::read_to_string(&ready) {
            Ok(t) if t.ends_with('\n') => break t,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "standalone did not become ready:\n{}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let addrs: Value = serde_json::from_str(&text).unwrap();
    let http = addrs["http"].as_str().unwrap().to_owned();
    (proc, format!("http://{http}"))
}

/// The browser plus what a failure message needs: the server's log.
struct Ui {
    client: Client,
    base: String,
    shots: PathBuf,
    server: Proc,
}

impl Ui {
    fn fail(&self, what: &str) -> ! {
        let log = self.server.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{what}\n---- standalone log (last lines)\n{}",
            tail.join("\n")
        );
    }

    async fn goto(&self, path: &str) {
        if let Err(e) = self.client.goto(&format!("{}{path}", self.base)).await {
            self.fail(&format!("cannot open {path}: {e}"));
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let url = self.client.current_url().await.map(|u| u.to_string());
                self.fail(&format!("no element {css:?} on {url:?}: {e}"))
            }
        }
    }

    async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Polls `css`'s text until `pred` holds, failing after `within`.
    async fn wait_text(&self, css: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let text = self.text(css).await;
            if pred(&text) {
                return text;
            }
            if Instant::now() > deadline {
                self.fail(&format!("{css:?} still reads {text:?} after {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// False (after saying why) when the browser is missing outside CI; in CI
/// (`CI=true`) a missing browser fails the test.
fn browser_available() -> bool {
    let missing: Vec<String> = [chromium(), chromedriver()]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "browser_ui needs Debian's chromium and chromium-driver; missing: {}. \
         Install them with `apt-get install chromium chromium-driver` (.ci/run does).",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

async fn open_browser(webdriver: &str, profile: &Path) -> Client {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium(), "args": args },
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    // chromedriver speaks plain HTTP on loopback: no TLS stack to configure.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(webdriver)
        .await
        .unwrap_or_else(|e| {
            panic!("chromedriver at {webdriver} did not open a Chromium session: {e}")
        })
}

/// What a test holds while the browser runs: the server's folder, the
/// chromedriver process and the browser's fresh profile.
struct Held {
    _dir: tempfile::TempDir,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

/// A standalone server on the example DAGs plus `extra` DAG files, and a
/// browser with a fresh profile pointed at it; None when no browser is installed.
async fn open_ui(extra: &[(&str, &str)]) -> Option<(Ui, Held)> {
    if !browser_available() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    copy_example_dags(dir.path());
    for (name, text) in extra {
        std::fs::write(dir.path().join(format!("dags/{name}.toml")), text).unwrap();
    }
    let (server, base) = start_standalone(dir.path());
    let (driver, webdriver) = start_chromedriver(dir.path());
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&webdriver, profile.path()).await;
    let ui = Ui {
        client,
        base,
        shots: screenshot_dir(),
        server,
    };
    Some((
        ui,
        Held {
            _dir: dir,
            _driver: driver,
            _profile: profile,
        },
    ))
}

/// The browser's own requests in a fresh profile (`/favicon.ico`, any 404)
/// must not replace the CSRF cookie the page's forms carry: the first clicks
/// (pause, then trigger) succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_browser_pauses_and_triggers_on_its_first_clicks() {
    let Some((ui, _held)) = open_ui(&[]).await else {
        return;
    };
    ui.goto("/").await;
    ui.find("#dag-bench_chain form.inline button").await;
    // What a browser does behind the page's back: ask for the favicon, and
    // hit some path that does not exist. Both used to set a new CSRF cookie.
    let favicon = ui
        .js("return fetch('/favicon.ico').then(r => r.status + ' ' + r.headers.get('content-type'));")
        .await;
    assert_eq!(favicon, json!("200 image/svg+xml"), "the favicon is served");
    let missing = ui
        .js("return fetch('/no-such-page').then(r => r.status);")
        .await;
    assert_eq!(missing, json!(404));

    ui.find("#dag-bench_chain form.inline button")
        .await
        .click()
        .await
        .unwrap();
    let toggle = ui
        .wait_text(
            "#dag-bench_chain form.inline button",
            Duration::from_secs(15),
            |t| t == "paused",
        )
        .await;
    assert_eq!(toggle, "paused", "the pause click took effect");
    ui.shot("10-fresh-profile-paused").await;

    ui.find("#dag-churn_retrain a.button")
        .await
        .click()
        .await
        .unwrap();
    ui.find("#trigger-submit").await.click().await.unwrap();
    ui.find("#run-state").await;
    let url = ui.client.current_url().await.unwrap();
    if !url.path().starts_with("/runs/") {
        let body = ui.text("main").await;
        ui.fail(&format!("the trigger led to {url}, not a run page: {body}"));
    }
    ui.shot("11-fresh-profile-triggered").await;
    ui.client.clone().close().await.unwrap();
}

/// A task that fails its first attempt and stores an output and a metric on
/// its second, and a `deploy` gated on that metric (which is too low).
const STORY: &str = r#"
id = "story"
[params]
min_auc = 0.75
[tasks.train]
retries = 1
retry_delay = "1s"
shell = """
echo "attempt $TRAINYARD_ATTEMPT starts"
if [ "$TRAINYARD_ATTEMPT" = 1 ]; then echo "first try fails" >&2; exit 3; fi
echo weights > "$TRAINYARD_OUTPUT_DIR/model.bin"
echo '{"auc": 0.0197}' > "$TRAINYARD_METRICS_FILE"
"""
[tasks.deploy]
depends_on = ["train"]
when = "metrics.train.auc >= params.min_auc"
command = ["true"]
"#;

/// A task no worker of `--gpus 2xA100-80GB` can ever hold.
const BIG: &str = r#"
id = "big"
[tasks.train]
command = ["true"]
resources = { gpus = 8, gpu_model = "H100" }
"#;

/// Triggers `dag` from its form and returns the run page's path.
async fn trigger_from_form(ui: &Ui, dag: &str) -> String {
    ui.goto(&format!("/dags/{dag}/trigger")).await;
    ui.find("#trigger-submit").await.click().await.unwrap();
    ui.find("#run-state").await;
    let url = ui.client.current_url().await.unwrap();
    if !url.path().starts_with("/runs/") {
        ui.fail(&format!("triggering {dag} led to {url}, not a run page"));
    }
    url.path().to_owned()
}

/// The run page explains itself: a timeline with both attempts of the
/// retried task and the wait between them, its metric and artifact, the
/// gate's reason for skipping `deploy`, and for a task no worker can hold
/// the reason it waits. The retried task's page shows attempt 1's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_page_explains_itself_and_a_retried_tasks_first_attempt_log_is_readable() {
    let Some((ui, _held)) = open_ui(&[("story", STORY), ("big", BIG)]).await else {
        return;
    };
    let run = trigger_from_form(&ui, "story").await;
    ui.wait_text("#run-state", Duration::from_secs(90), |s| {
        matches!(s, "success" | "failed" | "cancelled")
    })
    .await;
    // The timeline and artifacts are drawn by the server: load the ended run.
    ui.goto(&run).await;
    let skip = ui.text("#tasks tr[data-task=\"deploy\"] .wait").await;
    assert!(
        skip.contains("metrics.train.auc >= params.min_auc was false")
            && skip.contains("metrics.train.auc = 0.0197"),
        "deploy's skip reason on the run page: {skip:?}"
    );
    let metrics = ui.text("#tasks tr[data-task=\"train\"] .metrics").await;
    assert_eq!(metrics, "auc = 0.0197", "train's metric on the run page");
    let duration = ui.text("#run-duration").await;
    assert!(!duration.is_empty(), "the run's total duration is shown");
    let bars = ui
        .js("return Array.from(document.querySelectorAll('#timeline g.bar[data-task=\"train\"]')).map(g => g.getAttribute('class'));")
        .await;
    assert_eq!(
        bars,
        json!(["bar st-failed", "bar st-wait", "bar st-success"]),
        "train's lane: the failed attempt, the retry wait, the attempt that succeeded"
    );
    let name = ui.text("#artifacts td.name").await;
    assert_eq!(name, "model.bin", "the stored output is listed");
    let size = ui.text("#artifacts td.size").await;
    assert_eq!(size, "8 B", "the artifact's size (\"weights\\n\")");
    let sha = ui
        .find("#artifacts td.sha code")
        .await
        .attr("title")
        .await
        .unwrap()
        .unwrap_or_default();
    assert_eq!(sha.len(), 64, "the full sha256 is on the artifact: {sha:?}");
    ui.shot("20-run-timeline-artifacts").await;

    // The retried task's page: the first attempt's log, picked from the
    // attempts, searchable, with a download link and a way back to the run.
    ui.find("#tasks tr[data-task=\"train\"] a")
        .await
        .click()
        .await
        .unwrap();
    ui.find(".attempt-picker a[href$=\"?attempt=1\"]")
        .await
        .click()
        .await
        .unwrap();
    let log = ui
        .wait_text("#log", Duration::from_secs(15), |t| !t.is_empty())
        .await;
    assert!(
        log.contains("attempt 1 starts") && log.contains("first try fails"),
        "attempt 1's log: {log:?}"
    );
    assert!(
        !log.contains("attempt 2"),
        "attempt 1's page shows attempt 2: {log:?}"
    );
    let href = ui.find("#log-download").await.attr("href").await.unwrap();
    assert!(
        href.is_some_and(|h| h.ends_with("/logs?attempt=1")),
        "the download link is attempt 1's log"
    );
    ui.find("#log-search")
        .await
        .send_keys("fails")
        .await
        .unwrap();
    let found = ui
        .wait_text("#log", Duration::from_secs(5), |t| !t.contains("starts"))
        .await;
    assert_eq!(found, "first try fails", "search keeps only matching lines");
    ui.shot("22-task-log-attempt-1").await;
    ui.find("#back-to-run").await.click().await.unwrap();
    ui.find("#timeline").await;

    // The task no worker can hold waits, and the page says why.
    trigger_from_form(&ui, "big").await;
    let why = ui
        .wait_text(
            "#tasks tr[data-task=\"train\"] .wait",
            Duration::from_secs(30),
            |t| !t.is_empty(),
        )
        .await;
    assert!(
        why.contains("H100") && why.contains('8'),
        "the unschedulable task's wait reason: {why:?}"
    );
    ui.shot("21-run-unschedulable").await;
    ui.client.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_triggers_churn_retrain_watches_it_succeed_reads_logs_and_sees_gpus() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    copy_example_dags(dir.path());
    std::fs::write(dir.path().join("dags/xss_probe.toml"), hostile_dag()).unwrap();
    let (server, base) = start_standalone(dir.path());
    let (_driver, webdriver) = start_chromedriver(dir.path());
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(&webdriver, profile.path()).await;
    let ui = Ui {
        client,
        base,
        shots: screenshot_dir(),
        server,
    };

    // The DAG list shows the example pipeline and the hostile DAG, escaped.
    ui.goto("/").await;
    let churn = ui.text("#dag-churn_retrain a.dag-id").await;
    assert_eq!(churn, "churn_retrain");
    let desc = ui.text("#dag-xss_probe .desc").await;
    assert_eq!(
        desc, HOSTILE,
        "the description shows as text on the DAG list"
    );
    ui.shot("01-dag-list").await;

    // Trigger from the form with a param.
    ui.find("#dag-churn_retrain a.button")
        .await
        .click()
        .await
        .unwrap();
    let epochs = ui.find("#p-epochs").await;
    epochs.clear().await.unwrap();
    epochs.send_keys("20").await.unwrap();
    ui.shot("02-trigger-form").await;
    ui.find("#trigger-submit").await.click().await.unwrap();

    // The run page: mark the document, then watch the state change in place.
    let badge = ui.find("#run-state").await;
    let url = ui.client.current_url().await.unwrap();
    if !url.path().starts_with("/runs/") {
        ui.fail(&format!("the trigger form led to {url}, not a run page"));
    }
    let params = ui.text("pre.params").await;
    assert!(params.contains("\"epochs\": 20"), "run params: {params}");
    ui.js("window.__sameDocument = 'yes'; return null;").await;
    let first = badge.text().await.unwrap();
    // The jobs take seconds, so the page shows the run unfinished; what
    // follows proves the page itself moves it to success.
    assert!(
        !matches!(first.as_str(), "success" | "failed" | "cancelled"),
        "the run page opened on a finished run ({first}): live update not exercised"
    );
    let state = ui
        .wait_text("#run-state", Duration::from_secs(90), |s| {
            matches!(s, "success" | "failed" | "cancelled")
        })
        .await;
    ui.shot("03-run-done").await;
    assert_eq!(state, "success", "the run ended {state} (it was {first})");
    assert_eq!(
        ui.js("return window.__sameDocument || null;").await,
        json!("yes"),
        "the run page reloaded instead of updating in place"
    );
    let ended = ui.text("#run-ended").await;
    assert!(
        ended.starts_with("20"),
        "end time filled in live: {ended:?}"
    );
    let cancel = ui
        .client
        .find_all(Locator::Css("#cancel-run"))
        .await
        .unwrap();
    assert!(cancel.is_empty(), "an ended run still offers Cancel");
    let deploy = ui.text("#tasks tr[data-task=\"deploy\"] .state").await;
    assert!(
        matches!(deploy.as_str(), "success" | "skipped"),
        "deploy row updated live: {deploy}"
    );

    // A task's log shows what the task printed.
    ui.find("#tasks tr[data-task=\"evaluate\"] a")
        .await
        .click()
        .await
        .unwrap();
    ui.wait_text("#log", Duration::from_secs(15), |t| t.contains("metrics:"))
        .await;
    ui.shot("04-task-log").await;

    // The workers page lists the GPUs the worker was given.
    ui.goto("/workers").await;
    let model = ui.text("tr.gpu td.model").await;
    assert!(
        model.contains("A100"),
        "GPU model on the workers page: {model}"
    );
    let gpus = ui.client.find_all(Locator::Css("tr.gpu")).await.unwrap();
    assert_eq!(gpus.len(), 2, "both GPUs of --gpus 2xA100-80GB are listed");
    ui.shot("05-workers").await;

    // The hostile DAG's page: the markup is text, the script never ran.
    ui.goto("/dags/xss_probe").await;
    let desc = ui.text("p.desc").await;
    assert_eq!(desc, HOSTILE, "the description shows as literal text");
    let injected = ui
        .client
        .find_all(Locator::Css("p.desc b, p.desc script"))
        .await
        .unwrap();
    assert!(
        injected.is_empty(),
        "the description's markup became elements"
    );
    assert_eq!(
        ui.js("return typeof window.__pwned;").await,
        json!("undefined"),
        "the description's script ran"
    );
    ui.shot("06-script-description").await;

    ui.client.clone().close().await.unwrap();
    eprintln!("screenshots in {}", ui.shots.display());
}
