//! Builds a [`DagSpec`] from the spanned TOML tree: top-level keys, params,
//! `[defaults]` and tasks, applying defaults and recording the spans that
//! graph, placeholder and `when` validation (in `validate`) point at.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use toml::de::{DeTable, DeValue};

use super::error::{Collector, DagErrorKind as K, DagErrors};
use super::params::MAX_PARAMS_BYTES;
use super::raw::{self, Span, check_keys, entry, get_bool, get_str, get_str_array, get_table};
use super::{
    ByteSize, DagSpec, EnvSource, EnvVar, Overlap, ParamValue, ResourceRequest, RetryBackoff,
    TaskExec, TaskSpec, TriggerRule, validate,
};

const TOP_KEYS: &[&str] = &[
    "id",
    "description",
    "schedule",
    "timezone",
    "start_date",
    "end_date",
    "catchup",
    "max_active_runs",
    "max_active_tasks",
    "overlap",
    "tags",
    "params",
    "defaults",
    "tasks",
];
const SETTING_KEYS: &[&str] = &[
    "retries",
    "retry_delay",
    "retry_backoff",
    "max_retry_delay",
    "timeout",
    "priority",
    "pool",
    "trigger_rule",
    "working_dir",
    "env",
    "inherit_env",
    "resources",
];
const TASK_ONLY_KEYS: &[&str] = &["description", "depends_on", "command", "shell", "when"];
const RESOURCE_KEYS: &[&str] = &["cpus", "memory", "gpus", "gpu_memory", "gpu_model"];
const ENV_KEYS: &[&str] = &["value", "from_env", "secret"];
/// Variables the scheduler and worker set; a DAG may not override them.
const RESERVED_ENV: &[&str] = &["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"];

/// Where the parts of one task were written, for later validation.
#[derive(Default)]
pub(crate) struct TaskSpans {
    pub(crate) header: Span,
    pub(crate) deps: Vec<(String, Span)>,
    pub(crate) argv: Vec<Span>,
    pub(crate) shell: Option<Span>,
    /// Literal env values (from the task or `[defaults]`).
    pub(crate) env: Vec<(String, Span)>,
    pub(crate) when: Option<Span>,
}

/// Settings a task may inherit from `[defaults]`; `None` = not written.
#[derive(Default, Clone)]
struct Settings {
    retries: Option<u32>,
    retry_delay: Option<Duration>,
    retry_backoff: Option<RetryBackoff>,
    max_retry_delay: Option<Duration>,
    timeout: Option<Duration>,
    priority: Option<i32>,
    pool: Option<String>,
    trigger_rule: Option<TriggerRule>,
    working_dir: Option<String>,
    env: BTreeMap<String, (EnvVar, Option<Span>)>,
    inherit_env: Option<bool>,
    cpus: Option<f64>,
    memory: Option<ByteSize>,
    gpus: Option<u32>,
    gpu_memory: Option<(ByteSize, Span)>,
    gpu_model: Option<(String, Span)>,
}

/// Parses `source` and validates it completely.
pub(crate) fn parse(file: &str, source: &str) -> Result<DagSpec, DagErrors> {
    let mut c = Collector::new(source);
    let (root, syntax) = DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        // A broken tree would only produce confusing follow-on errors.
        for e in syntax {
            let msg = e.message().lines().next().unwrap_or("invalid TOML").trim();
            c.push(
                K::Syntax,
                e.span().unwrap_or(0..0),
                format!("invalid TOML: {msg}"),
            );
        }
        return Err(c.into_errors(file));
    }
    let root = root.get_ref();
    check_nul(&mut c, root);
    check_keys(&mut c, root, TOP_KEYS, "the DAG file");

    let id = match get_str(&mut c, root, "id") {
        Some((id, span)) => {
            if !raw::is_id(id) {
                c.push(
                    K::BadId,
                    span,
                    format!("DAG id {id:?} must match [A-Za-z0-9_-]+"),
                );
            }
            id.to_owned()
        }
        None => {
            if entry(root, "id").is_none() {
                c.push(
                    K::MissingKey,
                    0..0,
                    "missing `id`: every DAG needs an id, e.g. id = \"churn_retrain\"",
                );
            }
            String::new()
        }
    };
    let tz = read_timezone(&mut c, root);
    let schedule = get_str(&mut c, root, "schedule").map(|(expr, span)| {
        if let Err(e) = crate::cron::parse(expr) {
            c.push(K::BadCron, span, format!("bad `schedule`: {e}"));
        }
        expr.to_owned()
    });
    let start_date = read_date(&mut c, root, "start_date", tz);
    let end_date = read_date(&mut c, root, "end_date", tz);
    if let (Some((s, span)), Some((e, _))) = (&start_date, &end_date)
        && s > e
    {
        c.push(
            K::StartAfterEnd,
            span.clone(),
            format!("start_date {s} is after end_date {e}"),
        );
    }
    let overlap = get_str(&mut c, root, "overlap").and_then(|(s, span)| match s {
        "skip" => Some(Overlap::Skip),
        "buffer" => Some(Overlap::Buffer),
        "cancel_previous" => Some(Overlap::CancelPrevious),
        _ => {
            c.push(
                K::BadOverlap,
                span,
                format!("unknown overlap {s:?}; use \"skip\", \"buffer\" or \"cancel_previous\""),
            );
            None
        }
    });

    let mut spec = DagSpec {
        id,
        description: get_str(&mut c, root, "description").map(|(s, _)| s.to_owned()),
        schedule,
        timezone: tz.name().to_owned(),
        start_date: start_date.map(|(d, _)| d),
        end_date: end_date.map(|(d, _)| d),
        catchup: get_bool(&mut c, root, "catchup").unwrap_or(false),
        max_active_runs: raw::get_u32(&mut c, root, "max_active_runs", 1).map_or(1, |(n, _)| n),
        max_active_tasks: raw::get_u32(&mut c, root, "max_active_tasks", 1).map(|(n, _)| n),
        overlap: overlap.unwrap_or_default(),
        tags: get_str_array(&mut c, root, "tags")
            .map(|(v, _)| v.into_iter().map(|(s, _)| s.to_owned()).collect())
            .unwrap_or_default(),
        params: read_params(&mut c, root),
        tasks: BTreeMap::new(),
        code: None,
    };

    let defaults = match get_table(&mut c, root, "defaults") {
        Some((t, _, _)) => {
            check_keys(&mut c, t, SETTING_KEYS, "[defaults]");
            read_settings(&mut c, t)
        }
        None => Settings::default(),
    };
    let mut spans = BTreeMap::new();
    read_tasks(&mut c, root, &defaults, &mut spec, &mut spans);

    validate::validate(&mut c, source, &mut spec, &spans);
    if c.has_errors() {
        Err(c.into_errors(file))
    } else {
        Ok(spec)
    }
}

fn read_timezone(c: &mut Collector<'_>, root: &DeTable<'_>) -> Tz {
    let Some((name, span)) = get_str(c, root, "timezone") else {
        return chrono_tz::UTC;
    };
    match name.parse::<Tz>() {
        Ok(tz) => tz,
        Err(_) => {
            let hint = chrono_tz::TZ_VARIANTS
                .iter()
                .map(|t| (strsim::levenshtein(t.name(), name), t.name()))
                .min()
                .filter(|(d, _)| *d <= 3)
                .map(|(_, n)| format!("; did you mean \"{n}\"?"))
                .unwrap_or_else(|| {
                    "; use an IANA name such as \"Europe/Berlin\" or \"UTC\"".into()
                });
            c.push(
                K::UnknownTimezone,
                span,
                format!("unknown timezone {name:?}{hint}"),
            );
            chrono_tz::UTC
        }
    }
}

/// A date ("2026-01-01"), a datetime without offset (read in the DAG's
/// timezone) or RFC 3339; as a string or a TOML date/datetime.
fn read_date(
    c: &mut Collector<'_>,
    root: &DeTable<'_>,
    key: &str,
    tz: Tz,
) -> Option<(DateTime<Utc>, Span)> {
    let (_, v) = entry(root, key)?;
    let text = match v.get_ref() {
        DeValue::String(s) => s.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        _ => {
            raw::wrong_type(
                c,
                v,
                key,
                "a date such as \"2026-01-01\" or an RFC 3339 datetime",
            );
            return None;
        }
    };
    match parse_date(&text, tz) {
        Ok(d) => Some((d, v.span())),
        Err(why) => {
            c.push(K::BadDate, v.span(), format!("`{key}` {text:?}: {why}"));
            None
        }
    }
}

pub(crate) fn parse_date(text: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    let s = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Ok(d.with_timezone(&Utc));
    }
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .ok_or("not a date; write \"2026-01-01\", \"2026-01-01T03:00:00\" or RFC 3339 \"2026-01-01T03:00:00Z\"")?;
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|d| d.with_timezone(&Utc))
        .ok_or_else(|| {
            format!(
                "{naive} does not exist in {} (skipped by a DST change)",
                tz.name()
            )
        })
}

/// No string in a DAG may hold a NUL: no argv element, environment value
/// or database text column can carry one, so it is refused here rather than
/// failing every run (or the store) later.
fn check_nul(c: &mut Collector<'_>, table: &DeTable<'_>) {
    fn walk(c: &mut Collector<'_>, v: &raw::Val<'_>) {
        match v.get_ref() {
            DeValue::String(s) if s.contains('\0') => c.push(
                K::WrongType,
                v.span(),
                "this string contains a NUL character (\\u0000), which no command argument, environment variable or stored text can hold; remove it",
            ),
            DeValue::Array(items) => items.iter().for_each(|i| walk(c, i)),
            DeValue::Table(t) => t.iter().for_each(|(_, i)| walk(c, i)),
            _ => {}
        }
    }
    table.iter().for_each(|(_, v)| walk(c, v));
}

fn read_params(c: &mut Collector<'_>, root: &DeTable<'_>) -> BTreeMap<String, ParamValue> {
    let Some((table, key_span, _)) = get_table(c, root, "params") else {
        return BTreeMap::new();
    };
    let out = read_param_values(c, table, BTreeMap::new());
    let size = super::params::params_json_size(&out);
    if size > MAX_PARAMS_BYTES {
        c.push(
            K::BadParam,
            key_span,
            format!(
                "the declared params' defaults are {size} bytes as JSON, over the {} ({MAX_PARAMS_BYTES} bytes) limit for a run's params; keep large data in files or artifacts and pass their path or URL as a param",
                ByteSize(MAX_PARAMS_BYTES as u64)
            ),
        );
    }
    out
}

fn read_param_values(
    c: &mut Collector<'_>,
    table: &DeTable<'_>,
    mut out: BTreeMap<String, ParamValue>,
) -> BTreeMap<String, ParamValue> {
    for (key, v) in table.iter() {
        let name: &str = key.get_ref();
        if !raw::is_ident(name) {
            c.push(
                K::BadParam,
                key.span(),
                format!("param name {name:?} must match [A-Za-z_][A-Za-z0-9_]*"),
            );
            continue;
        }
        let value = match v.get_ref() {
            DeValue::Boolean(b) => ParamValue::Bool(*b),
            DeValue::String(s) => ParamValue::String(s.to_string()),
            DeValue::Float(_) => ParamValue::Float(raw::float_value(v.get_ref()).unwrap_or(0.0)),
            DeValue::Integer(_) => match raw::int_value(v.get_ref()) {
                Some(Ok(i)) => ParamValue::Int(i),
                _ => {
                    c.push(
                        K::OutOfRange,
                        v.span(),
                        format!("param `{name}` does not fit in a 64-bit integer"),
                    );
                    continue;
                }
            },
            other => {
                c.push(
                    K::BadParam,
                    v.span(),
                    format!(
                        "param `{name}` must default to a bool, integer, float or string, found {}",
                        raw::type_name(other)
                    ),
                );
                continue;
            }
        };
        out.insert(name.to_owned(), value);
    }
    out
}

fn read_settings(c: &mut Collector<'_>, t: &DeTable<'_>) -> Settings {
    let mut s = Settings {
        retries: raw::get_u32(c, t, "retries", 0).map(|(n, _)| n),
        retry_delay: raw::get_duration(c, t, "retry_delay").map(|(d, _)| d),
        max_retry_delay: raw::get_duration(c, t, "max_retry_delay").map(|(d, _)| d),
        timeout: raw::get_duration(c, t, "timeout").and_then(|(d, span)| {
            if d.is_zero() {
                c.push(
                    K::BadDuration,
                    span,
                    "`timeout` must be longer than zero; leave it out for no timeout",
                );
                None
            } else {
                Some(d)
            }
        }),
        priority: raw::get_int(c, t, "priority", i64::from(i32::MIN), i64::from(i32::MAX))
            .map(|(n, _)| n as i32),
        working_dir: get_str(c, t, "working_dir").map(|(s, _)| s.to_owned()),
        inherit_env: get_bool(c, t, "inherit_env"),
        ..Settings::default()
    };
    s.retry_backoff = get_str(c, t, "retry_backoff").and_then(|(v, span)| match v {
        "fixed" => Some(RetryBackoff::Fixed),
        "exponential" => Some(RetryBackoff::Exponential),
        _ => {
            c.push(
                K::BadRetryBackoff,
                span,
                format!("unknown retry_backoff {v:?}; use \"fixed\" or \"exponential\""),
            );
            None
        }
    });
    s.trigger_rule = get_str(c, t, "trigger_rule").and_then(|(v, span)| {
        let rule = match v {
            "all_success" => TriggerRule::AllSuccess,
            "all_done" => TriggerRule::AllDone,
            "one_success" => TriggerRule::OneSuccess,
            "one_failed" => TriggerRule::OneFailed,
            "none_failed" => TriggerRule::NoneFailed,
            _ => {
                c.push(
                    K::BadTriggerRule,
                    span,
                    format!("unknown trigger_rule {v:?}; use all_success, all_done, one_success, one_failed or none_failed"),
                );
                return None;
            }
        };
        Some(rule)
    });
    s.pool = get_str(c, t, "pool").map(|(p, span)| {
        if !raw::is_id(p) {
            c.push(
                K::BadId,
                span,
                format!("pool name {p:?} must match [A-Za-z0-9_-]+"),
            );
        }
        p.to_owned()
    });
    if let Some((env, _, _)) = get_table(c, t, "env") {
        read_env(c, env, &mut s);
    }
    if let Some((res, _, _)) = get_table(c, t, "resources") {
        read_resources(c, res, &mut s);
    }
    s
}

fn read_env(c: &mut Collector<'_>, env: &DeTable<'_>, s: &mut Settings) {
    for (key, v) in env.iter() {
        let name: &str = key.get_ref();
        if !raw::is_ident(name) {
            c.push(
                K::BadEnv,
                key.span(),
                format!("env name {name:?} must match [A-Za-z_][A-Za-z0-9_]*"),
            );
            continue;
        }
        if name.starts_with("TRAINYARD_") || RESERVED_ENV.contains(&name) {
            c.push(
                K::BadEnv,
                key.span(),
                format!("env `{name}` is set by Trainyard and cannot be overridden"),
            );
            continue;
        }
        let var = match v.get_ref() {
            DeValue::String(val) => (
                EnvVar {
                    source: EnvSource::Value(val.to_string()),
                    secret: false,
                },
                Some(v.span()),
            ),
            DeValue::Table(t) => {
                check_keys(c, t, ENV_KEYS, &format!("env.{name}"));
                let secret = get_bool(c, t, "secret").unwrap_or(false);
                let value = get_str(c, t, "value");
                let from = get_str(c, t, "from_env");
                match (value, from) {
                    (Some((val, span)), None) => (
                        EnvVar {
                            source: EnvSource::Value(val.to_owned()),
                            secret,
                        },
                        Some(span),
                    ),
                    (None, Some((from, span))) => {
                        if !raw::is_ident(from) {
                            c.push(
                                K::BadEnv,
                                span,
                                format!("from_env {from:?} is not a variable name"),
                            );
                        }
                        (
                            EnvVar {
                                source: EnvSource::FromEnv(from.to_owned()),
                                secret,
                            },
                            None,
                        )
                    }
                    _ => {
                        c.push(
                            K::BadEnv,
                            v.span(),
                            format!("env `{name}` needs exactly one of `value` or `from_env`"),
                        );
                        continue;
                    }
                }
            }
            _ => {
                raw::wrong_type(
                    c,
                    v,
                    &format!("env.{name}"),
                    "a string or { value = \"...\", secret = true }",
                );
                continue;
            }
        };
        s.env.insert(name.to_owned(), var);
    }
}

fn read_resources(c: &mut Collector<'_>, res: &DeTable<'_>, s: &mut Settings) {
    check_keys(c, res, RESOURCE_KEYS, "resources");
    if let Some((_, v)) = entry(res, "cpus") {
        match raw::float_value(v.get_ref()) {
            Some(f) if f.is_finite() && f >= 0.0 => s.cpus = Some(f),
            Some(f) => c.push(
                K::ImpossibleResources,
                v.span(),
                format!("cpus must be zero or more, not {f}"),
            ),
            None => raw::wrong_type(c, v, "cpus", "a number"),
        }
    }
    if let Some((_, v)) = entry(res, "gpus") {
        match raw::int_value(v.get_ref()) {
            Some(Ok(n)) if n >= 0 => match u32::try_from(n) {
                Ok(n) => s.gpus = Some(n),
                Err(_) => c.push(
                    K::ImpossibleResources,
                    v.span(),
                    format!("gpus = {n} is more than any machine has"),
                ),
            },
            Some(_) => c.push(
                K::ImpossibleResources,
                v.span(),
                "gpus must be zero or more",
            ),
            None => raw::wrong_type(c, v, "gpus", "a whole number"),
        }
    }
    s.memory = read_size(c, res, "memory").map(|(b, _)| b);
    s.gpu_memory = read_size(c, res, "gpu_memory");
    s.gpu_model =
        get_str(c, res, "gpu_model").and_then(|(pat, span)| match regex::Regex::new(pat) {
            Ok(_) => Some((pat.to_owned(), span)),
            Err(e) => {
                let why = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("invalid")
                    .trim()
                    .trim_start_matches("error: ")
                    .to_owned();
                c.push(
                    K::BadGpuModel,
                    span,
                    format!("gpu_model {pat:?} is not a valid regex: {why}"),
                );
                None
            }
        });
}

fn read_size(c: &mut Collector<'_>, t: &DeTable<'_>, key: &str) -> Option<(ByteSize, Span)> {
    let (_, v) = entry(t, key)?;
    match v.get_ref() {
        DeValue::String(s) => match ByteSize::parse(s) {
            Ok(b) => Some((b, v.span())),
            Err(e) => {
                c.push(K::BadSize, v.span(), format!("`{key}`: {e}"));
                None
            }
        },
        DeValue::Integer(_) => match raw::int_value(v.get_ref()) {
            Some(Ok(n)) if n >= 0 => Some((ByteSize(n as u64), v.span())),
            _ => {
                c.push(
                    K::ImpossibleResources,
                    v.span(),
                    format!("`{key}` must be zero or more bytes"),
                );
                None
            }
        },
        _ => {
            raw::wrong_type(c, v, key, "a size such as \"4GiB\"");
            None
        }
    }
}

fn read_tasks(
    c: &mut Collector<'_>,
    root: &DeTable<'_>,
    defaults: &Settings,
    spec: &mut DagSpec,
    spans: &mut BTreeMap<String, TaskSpans>,
) {
    let Some((tasks, key_span, _)) = get_table(c, root, "tasks") else {
        if entry(root, "tasks").is_none() {
            c.push(
                K::NoTasks,
                0..0,
                "the DAG has no tasks; add one with [tasks.NAME]",
            );
        }
        return;
    };
    if tasks.is_empty() {
        c.push(
            K::NoTasks,
            key_span,
            "the DAG has no tasks; add one with [tasks.NAME]",
        );
    }
    for (key, v) in tasks.iter() {
        let id: &str = key.get_ref();
        if !raw::is_id(id) {
            c.push(
                K::BadId,
                key.span(),
                format!("task id {id:?} must match [A-Za-z0-9_-]+"),
            );
        }
        let DeValue::Table(t) = v.get_ref() else {
            raw::wrong_type(c, v, &format!("tasks.{id}"), "a table");
            continue;
        };
        let (task, task_spans) = read_task(c, id, key.span(), t, defaults);
        spans.insert(id.to_owned(), task_spans);
        spec.tasks.insert(id.to_owned(), task);
    }
}

fn read_task(
    c: &mut Collector<'_>,
    id: &str,
    header: Span,
    t: &DeTable<'_>,
    defaults: &Settings,
) -> (TaskSpec, TaskSpans) {
    let allowed: Vec<&str> = SETTING_KEYS.iter().chain(TASK_ONLY_KEYS).copied().collect();
    check_keys(c, t, &allowed, &format!("[tasks.{id}]"));
    let own = read_settings(c, t);
    let mut spans = TaskSpans {
        header: header.clone(),
        ..TaskSpans::default()
    };

    let mut depends_on: Vec<String> = Vec::new();
    if let Some((deps, _)) = get_str_array(c, t, "depends_on") {
        for (d, span) in deps {
            spans.deps.push((d.to_owned(), span));
            depends_on.push(d.to_owned());
        }
    }
    depends_on.sort();
    depends_on.dedup();

    let command = get_str_array(c, t, "command");
    let shell = get_str(c, t, "shell");
    let exec = match (command, shell) {
        (Some((argv, span)), None) => {
            if argv.is_empty() {
                c.push(
                    K::EmptyCommand,
                    span,
                    format!("task `{id}` has an empty `command`"),
                );
            } else if argv[0].0.trim().is_empty() {
                c.push(
                    K::EmptyCommand,
                    argv[0].1.clone(),
                    format!("task `{id}`: the program (first element of `command`) is empty"),
                );
            }
            spans.argv = argv.iter().map(|(_, s)| s.clone()).collect();
            TaskExec::Command(argv.into_iter().map(|(s, _)| s.to_owned()).collect())
        }
        (None, Some((script, span))) => {
            if script.trim().is_empty() {
                c.push(
                    K::EmptyCommand,
                    span.clone(),
                    format!("task `{id}` has an empty `shell`"),
                );
            }
            spans.shell = Some(span);
            TaskExec::Shell(script.to_owned())
        }
        (Some(_), Some(_)) => {
            let span = entry(t, "shell").map_or(header.clone(), |(k, _)| k);
            c.push(
                K::CommandAndShell,
                span,
                format!("task `{id}` sets both `command` and `shell`; keep one"),
            );
            TaskExec::Command(Vec::new())
        }
        (None, None) => {
            // A present but mistyped key was reported already.
            if entry(t, "command").is_none() && entry(t, "shell").is_none() {
                c.push(
                    K::MissingKey,
                    header.clone(),
                    format!("task `{id}` needs `command` (an argv array) or `shell` (a string)"),
                );
            }
            TaskExec::Command(Vec::new())
        }
    };

    let when = get_str(c, t, "when").map(|(w, span)| {
        spans.when = Some(span);
        w.to_owned()
    });

    let mut env = BTreeMap::new();
    for (name, (var, span)) in defaults.env.iter().chain(own.env.iter()) {
        env.insert(name.clone(), var.clone());
        if let Some(span) = span {
            spans.env.retain(|(n, _)| n != name);
            spans.env.push((name.clone(), span.clone()));
        }
    }

    let gpus = own.gpus.or(defaults.gpus).unwrap_or(0);
    let gpu_memory = own
        .gpu_memory
        .clone()
        .or_else(|| defaults.gpu_memory.clone());
    let gpu_model = own.gpu_model.clone().or_else(|| defaults.gpu_model.clone());
    if gpus == 0 {
        for (what, span) in [
            ("gpu_memory", gpu_memory.as_ref().map(|(_, s)| s)),
            ("gpu_model", gpu_model.as_ref().map(|(_, s)| s)),
        ] {
            if let Some(span) = span {
                c.push(
                    K::ImpossibleResources,
                    span.clone(),
                    format!("task `{id}` sets {what} but asks for no gpus; add gpus = 1 (or more)"),
                );
            }
        }
    }
    let resources = ResourceRequest {
        cpus: own.cpus.or(defaults.cpus).unwrap_or(1.0),
        memory: own.memory.or(defaults.memory),
        gpus,
        gpu_memory: gpu_memory.map(|(b, _)| b),
        gpu_model: gpu_model.map(|(p, _)| p),
    };

    let task = TaskSpec {
        id: id.to_owned(),
        description: get_str(c, t, "description").map(|(s, _)| s.to_owned()),
        depends_on,
        downstream: Vec::new(),
        exec,
        env,
        working_dir: own.working_dir.or_else(|| defaults.working_dir.clone()),
        inherit_env: own.inherit_env.or(defaults.inherit_env).unwrap_or(false),
        resources,
        retries: own.retries.or(defaults.retries).unwrap_or(0),
        retry_delay: own
            .retry_delay
            .or(defaults.retry_delay)
            .unwrap_or(Duration::from_secs(30)),
        retry_backoff: own
            .retry_backoff
            .or(defaults.retry_backoff)
            .unwrap_or_default(),
        max_retry_delay: own.max_retry_delay.or(defaults.max_retry_delay),
        timeout: own.timeout.or(defaults.timeout),
        trigger_rule: own
            .trigger_rule
            .or(defaults.trigger_rule)
            .unwrap_or_default(),
        when,
        priority: own.priority.or(defaults.priority).unwrap_or(0),
        pool: own
            .pool
            .or_else(|| defaults.pool.clone())
            .unwrap_or_else(|| "default".to_owned()),
    };
    (task, spans)
}
