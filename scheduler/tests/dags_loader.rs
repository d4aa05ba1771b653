//! DAG loading against a real SQLite store: initial load, edits, touches,
//! breakage and repair, deletion, duplicates, restarts, and the watcher.
//!
//! Scans are driven with `reload_all` (deterministic); only the watcher tests
//! wait for a notification, with a generous timeout instead of a fixed sleep.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};
use trainyard_core::dag::DagSpec;
use trainyard_core::dag::code::CodeSnapshot;
use trainyard_core::ids::DagId;
use trainyard_core::resources::ByteSize;
use trainyard_scheduler::dags::{
    CodeOptions, DagLimits, DagLoader, DagLoaderOptions, FileError, dag_files, exclude_set,
};
use trainyard_scheduler::store::{self, Dag, Store};

fn dag(id: &str, command: &str) -> String {
    format!("id = \"{id}\"\n\n[tasks.hello]\ncommand = [\"{command}\"]\n")
}

/// Missing `tasks`: parses as TOML, fails validation.
fn broken(id: &str) -> String {
    format!("id = \"{id}\"\nschedule = \"not a cron\"\n")
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
}

struct Fixture {
    _tmp: TempDir,
    dir: PathBuf,
    store: Arc<dyn Store>,
}

impl Fixture {
    async fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("dags");
        fs::create_dir(&dir).unwrap();
        let url = format!("sqlite:{}", tmp.path().join("trainyard.db").display());
        let store = store::connect(&url).await.unwrap();
        // Canonical, like the paths the loader records.
        let dir = dir.canonicalize().unwrap();
        Self {
            _tmp: tmp,
            dir,
            store,
        }
    }

    fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, content).unwrap();
        path
    }

    fn loader(&self) -> (DagLoader, mpsc::UnboundedReceiver<DagId>) {
        self.loader_with(DagLimits::default())
    }

    fn loader_with(&self, limits: DagLimits) -> (DagLoader, mpsc::UnboundedReceiver<DagId>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let loader = DagLoaderOptions::new(&self.dir, self.store.clone())
            .notify_channel(tx)
            .debounce(Duration::from_millis(50))
            .limits(limits)
            .build()
            .unwrap();
        (loader, rx)
    }

    async fn dag(&self, id: &str) -> Dag {
        self.store.get_dag(&DagId::new(id)).await.unwrap()
    }

    async fn current_source(&self, id: &str) -> String {
        let version = self.dag(id).await.current_version_id.unwrap();
        self.store.get_dag_version(version).await.unwrap().source
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<DagId>) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(id) = rx.try_recv() {
        ids.push(id.into_inner());
    }
    ids
}

fn ids(ids: &[DagId]) -> Vec<&str> {
    ids.iter().map(DagId::as_str).collect()
}

#[tokio::test]
async fn initial_load_registers_good_files_and_reports_bad_ones() {
    let fx = Fixture::new().await;
    fx.write("a.toml", &dag("a", "true"));
    fx.write("nested/deeper/c.toml", &dag("c", "true"));
    let bad = fx.write("b.toml", &broken("b"));
    fx.write("notes.txt", "not a dag");
    fx.write("a.toml.bak", &dag("bak", "true"));
    fx.write(".hidden.toml", &dag("hidden1", "true"));
    fx.write(".git/x.toml", &dag("hidden2", "true"));
    let (mut loader, mut rx) = fx.loader();

    let report = loader.load_all(t(0)).await.unwrap();

    assert_eq!(ids(&report.loaded), ["a", "c"]);
    assert_eq!(report.errors.len(), 1);
    let (path, error) = &report.errors[0];
    assert_eq!(path, &bad);
    assert!(matches!(error, FileError::Parse(_)), "{error}");
    assert!(error.to_string().contains("b.toml:2:"), "{error}");

    let a = fx.dag("a").await;
    assert!(a.active && a.current_version_id.is_some() && a.parse_error.is_none());
    assert_eq!(
        a.file_path.as_deref(),
        Some(fx.dir.join("a.toml").to_str().unwrap())
    );
    // A file that never parsed gets its error recorded on the id it names.
    let b = fx.dag("b").await;
    assert!(b.current_version_id.is_none());
    assert!(b.parse_error.unwrap().contains("b.toml:2:"));
    let all: Vec<String> = fx
        .store
        .list_dags()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id.into_inner())
        .collect();
    assert_eq!(all, ["a", "b", "c"]);
    let mut notified = drain(&mut rx);
    notified.sort();
    assert_eq!(notified, ["a", "b", "c"]);
}

#[tokio::test]
async fn editing_a_file_registers_a_new_version_and_notifies() {
    let fx = Fixture::new().await;
    let path = fx.write("a.toml", &dag("a", "true"));
    let (mut loader, mut rx) = fx.loader();
    loader.load_all(t(0)).await.unwrap();
    let first = fx.dag("a").await.current_version_id.unwrap();
    drain(&mut rx);

    fs::write(&path, dag("a", "false")).unwrap();
    let report = loader.reload_all(t(1)).await;

    assert_eq!(ids(&report.loaded), ["a"]);
    assert_eq!(drain(&mut rx), ["a"]);
    let second = fx.dag("a").await.current_version_id.unwrap();
    assert_ne!(first, second);
    assert_eq!(fx.current_source("a").await, dag("a", "false"));
    // The old version stays in history, for runs that started on it.
    assert_eq!(
        fx.store.get_dag_version(first).await.unwrap().source,
        dag("a", "true")
    );

    // Going back to the first content makes that version current, no new one.
    fs::write(&path, dag("a", "true")).unwrap();
    loader.reload_all(t(2)).await;
    assert_eq!(fx.dag("a").await.current_version_id, Some(first));
    assert_eq!(drain(&mut rx), ["a"]);
}

#[tokio::test]
async fn touching_or_rewriting_identical_content_registers_nothing() {
    let fx = Fixture::new().await;
    let path = fx.write("a.toml", &dag("a", "true"));
    let (mut loader, mut rx) = fx.loader();
    loader.load_all(t(0)).await.unwrap();
    let version = fx.dag("a").await.current_version_id;
    drain(&mut rx);

    fs::write(&path, dag("a", "true")).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    let report = loader.reload_all(t(1)).await;

    assert!(report.loaded.is_empty() && report.is_clean(), "{report:?}");
    assert!(drain(&mut rx).is_empty());
    assert_eq!(fx.dag("a").await.current_version_id, version);
}

#[tokio::test]
async fn broken_file_keeps_last_good_version_and_fixing_it_clears_the_error() {
    let fx = Fixture::new().await;
    let path = fx.write("a.toml", &dag("a", "true"));
    let (mut loader, mut rx) = fx.loader();
    loader.load_all(t(0)).await.unwrap();
    let good = fx.dag("a").await.current_version_id;
    drain(&mut rx);

    // Broken so badly that the id cannot even be read: the path says which DAG.
    fs::write(&path, "this is [[ not toml").unwrap();
    let report = loader.reload_all(t(1)).await;

    assert_eq!(report.errors.len(), 1);
    let a = fx.dag("a").await;
    assert_eq!(a.current_version_id, good);
    assert!(a.active);
    assert!(a.parse_error.as_deref().unwrap().contains("a.toml"));
    assert_eq!(a.parse_error_at, Some(t(1)));
    assert_eq!(drain(&mut rx), ["a"]);

    // Unchanged broken content is not recorded again.
    assert!(loader.reload_all(t(2)).await.errors.is_empty());
    assert_eq!(fx.dag("a").await.parse_error_at, Some(t(1)));

    fs::write(&path, dag("a", "false")).unwrap();
    let report = loader.reload_all(t(3)).await;

    assert!(report.is_clean(), "{report:?}");
    let a = fx.dag("a").await;
    assert!(a.parse_error.is_none() && a.parse_error_at.is_none());
    assert_ne!(a.current_version_id, good);
    assert_eq!(drain(&mut rx), ["a"]);
}

#[tokio::test]
async fn deleting_deactivates_and_a_returning_file_reactivates() {
    let fx = Fixture::new().await;
    let path = fx.write("a.toml", &dag("a", "true"));
    fx.write("b.toml", &dag("b", "true"));
    let (mut loader, mut rx) = fx.loader();
    loader.load_all(t(0)).await.unwrap();
    let version = fx.dag("a").await.current_version_id;
    drain(&mut rx);

    fs::remove_file(&path).unwrap();
    let report = loader.reload_all(t(1)).await;

    assert_eq!(ids(&report.deactivated), ["a"]);
    assert_eq!(drain(&mut rx), ["a"]);
    let a = fx.dag("a").await;
    assert!(!a.active);
    assert_eq!(a.current_version_id, version, "history is kept");
    assert!(fx.dag("b").await.active);

    fx.write("a.toml", &dag("a", "true"));
    loader.reload_all(t(2)).await;
    let a = fx.dag("a").await;
    assert!(a.active);
    assert_eq!(a.current_version_id, version);
    assert_eq!(drain(&mut rx), ["a"]);
}

#[tokio::test]
async fn a_folder_that_cannot_be_listed_keeps_its_dags() {
    let fx = Fixture::new().await;
    fx.write("a.toml", &dag("a", "true"));
    let (mut loader, _rx) = fx.loader();
    loader.load_all(t(0)).await.unwrap();

    fs::remove_dir_all(&fx.dir).unwrap();
    let report = loader.reload_all(t(1)).await;

    assert!(report.deactivated.is_empty());
    assert!(
        matches!(report.errors[..], [(_, FileError::Read { .. })]),
        "{report:?}"
    );
    assert!(fx.dag("a").await.active);
}

#[tokio::test]
async fn renaming_a_file_keeps_its_dag_active() {
    let fx = Fixture::new().await;
    let path = fx.write("a.toml", &dag("a", "true"));
    let (mut loader, mut rx) = fx.loader();
    loader.load_all(t(0)).await.unwrap();
    drain(&mut rx);

    let renamed = fx.dir.join("sub/renamed.toml");
    fs::create_dir(fx.dir.join("sub")).unwrap();
    fs::rename(&path, &renamed).unwrap();
    let report = loader.reload_all(t(1)).await;

    assert!(
        report.deactivated.is_empty() && report.is_clean(),
        "{report:?}"
    );
    let a = fx.dag("a").await;
    assert!(a.active);
    assert_eq!(a.file_path.as_deref(), Some(renamed.to_str().unwrap()));
}

#[tokio::test]
async fn second_file_claiming_an_id_is_an_error_naming_both_and_takes_over_when_freed() {
    let fx = Fixture::new().await;
    let first = fx.write("a.toml", &dag("same", "true"));
    let second = fx.write("b.toml", &dag("same", "false"));
    fx.write("c.toml", &dag("c", "true"));
    let (mut loader, _rx) = fx.loader();

    let report = loader.load_all(t(0)).await.unwrap();

    assert_eq!(ids(&report.loaded), ["c", "same"]);
    assert_eq!(report.errors.len(), 1);
    let (path, error) = &report.errors[0];
    assert_eq!(path, &second);
    let message = error.to_string();
    assert!(matches!(error, FileError::DuplicateId { .. }));
    assert!(
        message.contains(first.to_str().unwrap()) && message.contains(second.to_str().unwrap()),
        "{message}"
    );
    assert_eq!(fx.current_source("same").await, dag("same", "true"));

    // The first file lets go of the id: the second takes it, in the same scan.
    fs::write(&first, dag("other", "true")).unwrap();
    let report = loader.reload_all(t(1)).await;

    assert!(report.is_clean(), "{report:?}");
    assert!(report.deactivated.is_empty(), "{report:?}");
    assert_eq!(fx.current_source("same").await, dag("same", "false"));
    assert!(fx.dag("same").await.active);
    assert!(fx.dag("other").await.active);
}

#[tokio::test]
async fn changing_a_files_id_deactivates_the_old_dag() {
    let fx = Fixture::new().await;
    let path = fx.write("a.toml", &dag("old", "true"));
    let (mut loader, _rx) = fx.loader();
    loader.load_all(t(0)).await.unwrap();

    fs::write(&path, dag("new", "true")).unwrap();
    let report = loader.reload_all(t(1)).await;

    assert_eq!(ids(&report.loaded), ["new"]);
    assert_eq!(ids(&report.deactivated), ["old"]);
    assert!(!fx.dag("old").await.active);
}

#[tokio::test]
async fn restart_registers_nothing_for_unchanged_files_and_catches_deletions() {
    let fx = Fixture::new().await;
    fx.write("a.toml", &dag("a", "true"));
    let gone = fx.write("b.toml", &dag("b", "true"));
    let broken_path = fx.write("c.toml", &dag("c", "true"));
    {
        let (mut loader, _rx) = fx.loader();
        loader.load_all(t(0)).await.unwrap();
    }
    let version = fx.dag("a").await.current_version_id;
    fs::remove_file(&gone).unwrap();
    fs::write(&broken_path, "[[[").unwrap();

    let (mut loader, mut rx) = fx.loader();
    let report = loader.load_all(t(1)).await.unwrap();

    assert_eq!(ids(&report.loaded), ["a"]);
    assert_eq!(ids(&report.deactivated), ["b"]);
    assert_eq!(fx.dag("a").await.current_version_id, version);
    // The broken file's DAG is known from the store's record of its path.
    let c = fx.dag("c").await;
    assert!(c.active && c.current_version_id.is_some() && c.parse_error.is_some());
    let mut notified = drain(&mut rx);
    notified.sort();
    assert_eq!(notified, ["b", "c"], "unchanged `a` is not announced");
}

/// A DAG with `n` tasks, each under its own `[tasks.tN]` header.
fn wide(id: &str, n: usize) -> String {
    let mut src = format!("id = \"{id}\"\n");
    for i in 0..n {
        src.push_str(&format!("[tasks.t{i}]\ncommand = [\"true\"]\n"));
    }
    src
}

#[tokio::test]
async fn a_file_over_the_size_cap_is_an_error_on_its_dag_and_the_others_load() {
    let fx = Fixture::new().await;
    fx.write("small.toml", &dag("small", "true"));
    // Over the default 1 MiB: about 1.2 MB.
    let big = fx.write("big.toml", &wide("big", 40_000));
    let (mut loader, mut rx) = fx.loader();

    let report = loader.load_all(t(0)).await.unwrap();

    assert_eq!(ids(&report.loaded), ["small"]);
    assert_eq!(report.errors.len(), 1);
    let (path, error) = &report.errors[0];
    assert_eq!(path, &big);
    assert!(matches!(error, FileError::TooLarge { .. }), "{error}");
    let recorded = fx.dag("big").await.parse_error.unwrap();
    let size = fs::metadata(&big).unwrap().len();
    assert!(
        recorded.contains(&format!("{size} bytes"))
            && recorded.contains("1MiB")
            && recorded.contains("--max-dag-file-size"),
        "{recorded}"
    );
    assert!(fx.dag("big").await.current_version_id.is_none());
    let mut notified = drain(&mut rx);
    notified.sort();
    assert_eq!(notified, ["big", "small"]);

    // Unchanged on the next scan: nothing read, recorded or announced again.
    let report = loader.reload_all(t(1)).await;
    assert!(report.is_clean(), "{:?}", report.errors);
    assert!(drain(&mut rx).is_empty());

    // Shrunk under the cap, it loads.
    fs::write(&big, wide("big", 10)).unwrap();
    let report = loader.reload_all(t(2)).await;
    assert_eq!(ids(&report.loaded), ["big"]);
    assert!(fx.dag("big").await.parse_error.is_none());
}

#[tokio::test]
async fn the_size_cap_is_configurable() {
    let fx = Fixture::new().await;
    fx.write("mid.toml", &wide("mid", 60)); // about 2 KB
    let cap = |bytes| DagLimits {
        max_file_size: ByteSize(bytes),
        ..DagLimits::default()
    };
    let (mut small, _rx) = fx.loader_with(cap(1024));
    let report = small.load_all(t(0)).await.unwrap();
    assert!(
        report.errors[0].1.to_string().contains("1KiB limit"),
        "{:?}",
        report.errors
    );
    let (mut raised, _rx) = fx.loader_with(cap(4096));
    let report = raised.load_all(t(1)).await.unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(ids(&report.loaded), ["mid"]);
}

#[tokio::test]
async fn too_many_tasks_are_refused_before_parsing_and_inline_ones_after() {
    let fx = Fixture::new().await;
    let limits = DagLimits {
        max_tasks: 3,
        ..DagLimits::default()
    };
    let headers = fx.write("headers.toml", &wide("headers", 5));
    let inline = fx.write(
        "inline.toml",
        "id = \"inline\"\n[tasks]\na = { command = [\"true\"] }\nb = { command = [\"true\"] }\nc = { command = [\"true\"] }\nd = { command = [\"true\"] }\n",
    );
    fx.write("ok.toml", &wide("ok", 3));
    let (mut loader, _rx) = fx.loader_with(limits);

    let report = loader.load_all(t(0)).await.unwrap();

    assert_eq!(ids(&report.loaded), ["ok"]);
    let errors: Vec<(&PathBuf, String)> = report
        .errors
        .iter()
        .map(|(p, e)| (p, e.to_string()))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, &headers);
    assert!(errors[0].1.contains("defines 5 tasks"), "{errors:?}");
    assert_eq!(errors[1].0, &inline);
    assert!(errors[1].1.contains("defines 4 tasks"), "{errors:?}");
    for id in ["headers", "inline"] {
        let recorded = fx.dag(id).await.parse_error.unwrap();
        assert!(
            recorded.contains("limit of 3 tasks") && recorded.contains("--max-dag-tasks"),
            "{recorded}"
        );
    }
}

#[tokio::test]
async fn a_restart_with_an_oversized_file_present_loads_the_rest() {
    let fx = Fixture::new().await;
    fx.write("a.toml", &dag("a", "true"));
    fx.write("big.toml", &wide("big", 40_000));
    let (mut loader, _rx) = fx.loader();
    loader.load_all(t(0)).await.unwrap();
    drop(loader);

    let (mut again, _rx) = fx.loader();
    let report = again.load_all(t(1)).await.unwrap();
    assert_eq!(ids(&report.loaded), ["a"]);
    assert!(matches!(
        report.errors[..],
        [(_, FileError::TooLarge { .. })]
    ));
    assert!(fx.dag("a").await.active);
}

#[test]
fn dag_files_lists_toml_files_recursively_sorted_without_hidden_ones() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    for rel in [
        "b.toml",
        "a/z.toml",
        "a/b/c.toml",
        ".h.toml",
        ".git/d.toml",
        "x.txt",
        "a/.y.toml",
    ] {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, "").unwrap();
    }
    let rel: Vec<PathBuf> = dag_files(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().to_path_buf())
        .collect();
    assert_eq!(
        rel,
        [
            Path::new("a/b/c.toml"),
            Path::new("a/z.toml"),
            Path::new("b.toml")
        ]
    );
}

#[test]
fn build_rejects_a_missing_folder() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fx = rt.block_on(Fixture::new());
    let error = DagLoaderOptions::new(fx.dir.join("nope"), fx.store.clone())
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("nope"), "{error}");
}

/// Waits for `id` on the channel, skipping other ids; fails after 10 s.
async fn expect_notified(rx: &mut mpsc::UnboundedReceiver<DagId>, id: &str) {
    let wait = async {
        while let Some(got) = rx.recv().await {
            if got.as_str() == id {
                return;
            }
        }
        panic!("notification channel closed");
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no notification for {id} within 10 s"));
}

async fn watch_picks_up_changes(poll: Option<Duration>) {
    let fx = Fixture::new().await;
    fx.write("a.toml", &dag("a", "true"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let loader = DagLoaderOptions::new(&fx.dir, fx.store.clone())
        .notify_channel(tx)
        .debounce(Duration::from_millis(50))
        .rescan_interval(None)
        .poll_interval(poll)
        .build()
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(loader.run(async {
        let _ = stopped.await;
    }));
    // `run` does the initial load itself.
    expect_notified(&mut rx, "a").await;

    fx.write("nested/new.toml", &dag("new", "true"));
    expect_notified(&mut rx, "new").await;
    assert!(fx.dag("new").await.active);

    fx.write("a.toml", &dag("a", "false"));
    expect_notified(&mut rx, "a").await;
    assert_eq!(fx.current_source("a").await, dag("a", "false"));

    fs::remove_file(fx.dir.join("nested/new.toml")).unwrap();
    expect_notified(&mut rx, "new").await;
    assert!(!fx.dag("new").await.active);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn watcher_picks_up_new_edited_and_deleted_files() {
    watch_picks_up_changes(None).await;
}

#[tokio::test]
async fn polling_watcher_picks_up_new_edited_and_deleted_files() {
    watch_picks_up_changes(Some(Duration::from_millis(100))).await;
}

// ---- code that follows the version (dags/code.rs) ----

fn code_options(fx: &Fixture, max: u64, exclude: &[&str]) -> CodeOptions {
    let store = fx._tmp.path().join("artifacts");
    CodeOptions {
        artifacts: trainyard_artifacts::ArtifactStore::from_url(&store.display().to_string())
            .unwrap(),
        root: "dags".into(),
        max_bytes: ByteSize(max),
        exclude: exclude_set(&exclude.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
    }
}

fn code_loader(fx: &Fixture, code: CodeOptions) -> (DagLoader, mpsc::UnboundedReceiver<DagId>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let loader = DagLoaderOptions::new(&fx.dir, fx.store.clone())
        .notify_channel(tx)
        .code(Some(code))
        .build()
        .unwrap();
    (loader, rx)
}

async fn code_of(fx: &Fixture, id: &str) -> Option<CodeSnapshot> {
    let version = fx.dag(id).await.current_version_id.unwrap();
    let stored = fx.store.get_dag_version(version).await.unwrap();
    stored.spec.decode::<DagSpec>().unwrap().code
}

#[tokio::test]
async fn a_version_records_its_file_and_the_folders_code_and_stores_them() {
    let fx = Fixture::new().await;
    fx.write("a.toml", &dag("a", "true"));
    fx.write("b.toml", &dag("b", "true"));
    fx.write("jobs/train.py", "print('v1')\n");
    fx.write("jobs/__pycache__/train.cpython-311.pyc", "bytecode");
    fx.write("jobs/.swp", "editor");
    fx.write("data/big.csv", "1,2,3\n");
    let (mut loader, _rx) = code_loader(&fx, code_options(&fx, 1 << 20, &["data/**"]));
    loader.load_all(t(0)).await.unwrap();
    let code = code_of(&fx, "a").await.expect("a snapshot");
    assert_eq!(code.root, "dags");
    let paths: Vec<&str> = code.files.iter().map(|f| f.path.as_str()).collect();
    // Its own TOML, not the other DAG's; no caches, hidden or excluded files.
    assert_eq!(paths, ["a.toml", "jobs/train.py"]);
    let store = code_options(&fx, 1, &[]).artifacts;
    for f in &code.files {
        let size = store.size(&f.object_key()).await.unwrap();
        assert_eq!(size, f.size, "{} stored", f.path);
    }
}

#[tokio::test]
async fn editing_a_code_file_makes_new_versions_and_a_pyc_does_not() {
    let fx = Fixture::new().await;
    fx.write("a.toml", &dag("a", "true"));
    fx.write("jobs/train.py", "print('v1')\n");
    let (mut loader, mut rx) = code_loader(&fx, code_options(&fx, 1 << 20, &[]));
    loader.load_all(t(0)).await.unwrap();
    let first = fx.dag("a").await.current_version_id.unwrap();
    drain(&mut rx);

    fx.write("jobs/__pycache__/train.cpython-311.pyc", "bytecode");
    loader.reload_all(t(1)).await;
    assert_eq!(fx.dag("a").await.current_version_id, Some(first));
    assert!(drain(&mut rx).is_empty());

    fx.write("jobs/train.py", "print('v2')\n");
    loader.reload_all(t(2)).await;
    let second = fx.dag("a").await.current_version_id.unwrap();
    assert_ne!(first, second);
    assert_eq!(drain(&mut rx), ["a"]);
    // The first version keeps the first file's digest.
    let old = fx.store.get_dag_version(first).await.unwrap();
    let old = old.spec.decode::<DagSpec>().unwrap().code.unwrap();
    let new = code_of(&fx, "a").await.unwrap();
    let digest = |c: &CodeSnapshot| {
        c.files
            .iter()
            .find(|f| f.path == "jobs/train.py")
            .map(|f| f.sha256.clone())
    };
    assert_ne!(digest(&old), digest(&new));
}

#[tokio::test]
async fn a_folder_over_the_code_cap_ships_no_code_and_says_why() {
    let fx = Fixture::new().await;
    fx.write("a.toml", &dag("a", "true"));
    fx.write("jobs/blob.bin", &"x".repeat(2048));
    let (mut loader, _rx) = code_loader(&fx, code_options(&fx, 1024, &[]));
    let report = loader.load_all(t(0)).await.unwrap();
    assert!(fx.dag("a").await.active, "the DAG itself loads");
    assert_eq!(code_of(&fx, "a").await, None);
    let message = report
        .errors
        .iter()
        .map(|(_, e)| e.to_string())
        .find(|m| m.contains("--dag-code-max-bytes"))
        .expect("an error naming the flag");
    assert!(message.contains("2048 bytes"), "{message}");
}
