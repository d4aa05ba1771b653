//! `when` conditions: CEL expressions (via the `cel` crate) over `params.X`,
//! `metrics.TASK.NAME` and `previous.metrics.TASK.NAME`. This module compiles
//! them, lists the names they read (for validation) and evaluates them.

use std::collections::{BTreeMap, HashMap};

use cel::common::ast::Expr;
use cel::objects::{Key, Map};
use cel::{Context, IdedExpr, Program, Value};

use super::params::ParamValue;

/// Why a `when` expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhenError {
    #[error("`when` does not parse: {0}")]
    Parse(String),
    #[error(
        "`when` reads metrics.{task}.{metric}, but task `{task}` reported no metric `{metric}`"
    )]
    MissingMetric { task: String, metric: String },
    #[error(
        "`when` reads previous.metrics.{task}.{metric}, but the previous successful run has no such metric; guard it with has(previous.metrics.{task}.{metric})"
    )]
    MissingPreviousMetric { task: String, metric: String },
    #[error("`when` failed: {0}")]
    Eval(String),
    #[error("`when` must give a bool, it gave {0}")]
    NotBool(String),
}

/// A name path the expression reads, e.g. `["metrics", "evaluate", "auc"]`.
pub(crate) type NamePath = Vec<String>;

/// A compiled expression and the (root-bound) name paths it reads.
pub(crate) struct Compiled {
    pub(crate) program: Program,
    pub(crate) paths: Vec<NamePath>,
}

/// Compiles `expr`, turning the parser's message into one line.
pub(crate) fn compile(expr: &str) -> Result<Compiled, WhenError> {
    // The CEL parser is generated code; a panic there must not take the
    // scheduler down with it, so it is caught and reported as a parse error.
    let program = std::panic::catch_unwind(|| Program::compile(expr))
        .map_err(|_| WhenError::Parse("the expression could not be parsed".into()))?
        .map_err(|e| {
            let msg = e
                .errors
                .iter()
                .map(|e| format!("{}:{}: {}", e.pos.0, e.pos.1, e.msg))
                .collect::<Vec<_>>()
                .join("; ");
            WhenError::Parse(msg)
        })?;
    let mut paths = Vec::new();
    collect_paths(program.expression(), &mut Vec::new(), &mut paths);
    Ok(Compiled { program, paths })
}

/// Qualified names read by `e`, skipping variables bound by comprehensions
/// (`xs.all(x, x > 0)` binds `x`).
fn collect_paths(e: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<NamePath>) {
    if let Some(path) = name_path(&e.expr) {
        if !bound.iter().any(|b| *b == path[0]) {
            out.push(path);
        }
        return;
    }
    match &e.expr {
        Expr::Select(sel) => collect_paths(&sel.operand, bound, out),
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                collect_paths(t, bound, out);
            }
            for a in &call.args {
                collect_paths(a, bound, out);
            }
        }
        Expr::Comprehension(c) => {
            collect_paths(&c.iter_range, bound, out);
            collect_paths(&c.accu_init, bound, out);
            let before = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(c.accu_var.clone());
            collect_paths(&c.loop_cond, bound, out);
            collect_paths(&c.loop_step, bound, out);
            collect_paths(&c.result, bound, out);
            bound.truncate(before);
        }
        Expr::List(l) => {
            for el in &l.elements {
                collect_paths(el, bound, out);
            }
        }
        Expr::Map(m) => {
            for entry in &m.entries {
                if let cel::common::ast::EntryExpr::MapEntry(me) = &entry.expr {
                    collect_paths(&me.key, bound, out);
                    collect_paths(&me.value, bound, out);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let cel::common::ast::EntryExpr::StructField(f) = &entry.expr {
                    collect_paths(&f.value, bound, out);
                }
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// `a.b.c` as `["a", "b", "c"]`; `None` for anything that is not an
/// identifier with plain field selections (presence tests included).
fn name_path(e: &Expr) -> Option<NamePath> {
    let mut segments = Vec::new();
    let mut cur = e;
    loop {
        match cur {
            Expr::Ident(name) => {
                segments.push(name.clone());
                segments.reverse();
                return Some(segments);
            }
            Expr::Select(sel) if !sel.test => {
                segments.push(sel.field.clone());
                cur = &sel.operand.expr;
            }
            _ => return None,
        }
    }
}

fn param_to_cel(v: &ParamValue) -> Value {
    match v {
        ParamValue::Bool(b) => Value::Bool(*b),
        ParamValue::Int(i) => Value::Int(*i),
        ParamValue::Float(f) => Value::Float(*f),
        ParamValue::String(s) => Value::from(s.as_str()),
    }
}

fn metrics_to_cel(m: &BTreeMap<String, BTreeMap<String, f64>>) -> Value {
    let tasks: HashMap<Key, Value> = m
        .iter()
        .map(|(task, metrics)| {
            let inner: HashMap<Key, Value> = metrics
                .iter()
                .map(|(k, v)| (Key::from(k.as_str()), Value::Float(*v)))
                .collect();
            (Key::from(task.as_str()), Value::Map(Map::from(inner)))
        })
        .collect();
    Value::Map(Map::from(tasks))
}

/// Evaluates a `when` expression. `previous` holds the metrics of the DAG's
/// previous successful run (`None` before the first one; reading it then is
/// an error unless guarded with `has(...)`).
pub fn eval_when(
    expr: &str,
    params: &BTreeMap<String, ParamValue>,
    metrics: &BTreeMap<String, BTreeMap<String, f64>>,
    previous: Option<&BTreeMap<String, BTreeMap<String, f64>>>,
) -> Result<bool, WhenError> {
    eval_compiled(&compile(expr)?, params, metrics, previous)
}

/// A `when` result with the value of every name the expression read, so a
/// closed gate can say why: see [`WhenOutcome::explain`].
#[derive(Debug, Clone, PartialEq)]
pub struct WhenOutcome {
    pub value: bool,
    /// Each name path the expression reads (`metrics.evaluate.auc`), in the
    /// order it first appears, with its value as CEL saw it (`absent` when
    /// it has none, e.g. a metric of the previous run that did not exist).
    pub inputs: Vec<(String, String)>,
}

impl WhenOutcome {
    /// `EXPR was false (name = value, …)`, or `EXPR was true (…)`.
    pub fn explain(&self, expr: &str) -> String {
        let mut out = format!("{} was {}", expr.trim(), self.value);
        if !self.inputs.is_empty() {
            let values: Vec<String> = self
                .inputs
                .iter()
                .map(|(name, value)| format!("{name} = {value}"))
                .collect();
            out.push_str(&format!(" ({})", values.join(", ")));
        }
        out
    }
}

/// [`eval_when`], and the values of the names it read.
pub fn eval_when_explained(
    expr: &str,
    params: &BTreeMap<String, ParamValue>,
    metrics: &BTreeMap<String, BTreeMap<String, f64>>,
    previous: Option<&BTreeMap<String, BTreeMap<String, f64>>>,
) -> Result<WhenOutcome, WhenError> {
    let compiled = compile(expr)?;
    let value = eval_compiled(&compiled, params, metrics, previous)?;
    let mut inputs: Vec<(String, String)> = Vec::new();
    for path in &compiled.paths {
        let name = path.join(".");
        if inputs.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if let Some(v) = input_value(path, params, metrics, previous) {
            inputs.push((name, v));
        }
    }
    Ok(WhenOutcome { value, inputs })
}

/// The value of one name path as text; `None` for a path that names a whole
/// map (`previous.metrics` in `has(previous.metrics.x)`), which has no one value.
fn input_value(
    path: &[String],
    params: &BTreeMap<String, ParamValue>,
    metrics: &BTreeMap<String, BTreeMap<String, f64>>,
    previous: Option<&BTreeMap<String, BTreeMap<String, f64>>>,
) -> Option<String> {
    let metric = |m: Option<&BTreeMap<String, BTreeMap<String, f64>>>, t: &str, n: &str| {
        Some(
            m.and_then(|m| m.get(t))
                .and_then(|t| t.get(n))
                .map_or_else(|| "absent".to_owned(), |v| v.to_string()),
        )
    };
    match path {
        [root, name] if root == "params" => Some(match params.get(name) {
            Some(ParamValue::String(s)) => format!("{s:?}"),
            Some(v) => v.to_string(),
            None => "absent".to_owned(),
        }),
        [root, task, name] if root == "metrics" => metric(Some(metrics), task, name),
        [root, m, task, name] if root == "previous" && m == "metrics" => {
            metric(previous, task, name)
        }
        _ => None,
    }
}

fn eval_compiled(
    compiled: &Compiled,
    params: &BTreeMap<String, ParamValue>,
    metrics: &BTreeMap<String, BTreeMap<String, f64>>,
    previous: Option<&BTreeMap<String, BTreeMap<String, f64>>>,
) -> Result<bool, WhenError> {
    let mut ctx = Context::default();
    let params_map: HashMap<Key, Value> = params
        .iter()
        .map(|(k, v)| (Key::from(k.as_str()), param_to_cel(v)))
        .collect();
    ctx.add_variable_from_value("params", Value::Map(Map::from(params_map)));
    ctx.add_variable_from_value("metrics", metrics_to_cel(metrics));
    let empty = BTreeMap::new();
    let prev: HashMap<Key, Value> = HashMap::from([(
        Key::from("metrics"),
        metrics_to_cel(previous.unwrap_or(&empty)),
    )]);
    ctx.add_variable_from_value("previous", Value::Map(Map::from(prev)));

    match compiled.program.execute(&ctx) {
        Ok(Value::Bool(b)) => Ok(b),
        Ok(other) => Err(WhenError::NotBool(format!("{:?}", other.type_of()))),
        Err(e) => Err(explain_missing(&compiled.paths, metrics, previous)
            .unwrap_or_else(|| WhenError::Eval(e.to_string()))),
    }
}

/// Turns CEL's terse "no such key" into the metric that is missing.
fn explain_missing(
    paths: &[NamePath],
    metrics: &BTreeMap<String, BTreeMap<String, f64>>,
    previous: Option<&BTreeMap<String, BTreeMap<String, f64>>>,
) -> Option<WhenError> {
    let has = |m: Option<&BTreeMap<String, BTreeMap<String, f64>>>, t: &str, n: &str| {
        m.and_then(|m| m.get(t)).is_some_and(|t| t.contains_key(n))
    };
    paths.iter().find_map(|p| match p.as_slice() {
        [root, task, metric, ..] if root == "metrics" && !has(Some(metrics), task, metric) => {
            Some(WhenError::MissingMetric {
                task: task.clone(),
                metric: metric.clone(),
            })
        }
        [root, m, task, metric, ..]
            if root == "previous" && m == "metrics" && !has(previous, task, metric) =>
        {
            Some(WhenError::MissingPreviousMetric {
                task: task.clone(),
                metric: metric.clone(),
            })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(task: &str, name: &str, v: f64) -> BTreeMap<String, BTreeMap<String, f64>> {
        BTreeMap::from([(task.to_owned(), BTreeMap::from([(name.to_owned(), v)]))])
    }

    #[test]
    fn gate_passes_and_fails_on_metric() {
        let p = BTreeMap::new();
        let e = "metrics.evaluate.auc >= 0.85";
        assert_eq!(
            eval_when(e, &p, &metrics("evaluate", "auc", 0.9), None),
            Ok(true)
        );
        assert_eq!(
            eval_when(e, &p, &metrics("evaluate", "auc", 0.8), None),
            Ok(false)
        );
    }

    #[test]
    fn params_and_previous_run_are_visible() {
        let p = BTreeMap::from([
            ("force".to_owned(), ParamValue::Bool(false)),
            ("min_auc".to_owned(), ParamValue::Int(0)),
        ]);
        let cur = metrics("evaluate", "auc", 0.91);
        let prev = metrics("evaluate", "auc", 0.90);
        let e = "params.force || metrics.evaluate.auc > previous.metrics.evaluate.auc";
        assert_eq!(eval_when(e, &p, &cur, Some(&prev)), Ok(true));
        assert_eq!(eval_when(e, &p, &prev, Some(&cur)), Ok(false));
        // int param compared with a float metric
        assert_eq!(
            eval_when("metrics.evaluate.auc > params.min_auc", &p, &cur, None),
            Ok(true)
        );
    }

    #[test]
    fn guarded_previous_works_on_first_run() {
        let e = "!has(previous.metrics.evaluate) || metrics.evaluate.auc > previous.metrics.evaluate.auc";
        assert_eq!(
            eval_when(e, &BTreeMap::new(), &metrics("evaluate", "auc", 0.5), None),
            Ok(true)
        );
    }

    #[test]
    fn missing_metric_is_a_clear_error() {
        let err = eval_when(
            "metrics.evaluate.auc > 0.5",
            &BTreeMap::new(),
            &metrics("evaluate", "loss", 0.1),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            WhenError::MissingMetric {
                task: "evaluate".into(),
                metric: "auc".into()
            }
        );
        let err = eval_when(
            "metrics.evaluate.auc > previous.metrics.evaluate.auc",
            &BTreeMap::new(),
            &metrics("evaluate", "auc", 0.1),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(err, WhenError::MissingPreviousMetric { .. }),
            "{err}"
        );
    }

    #[test]
    fn non_bool_and_unparsable_are_errors() {
        let m = metrics("evaluate", "auc", 0.9);
        assert!(matches!(
            eval_when("metrics.evaluate.auc", &BTreeMap::new(), &m, None),
            Err(WhenError::NotBool(_))
        ));
        assert!(matches!(
            eval_when("metrics.evaluate.auc >=", &BTreeMap::new(), &m, None),
            Err(WhenError::Parse(_))
        ));
    }

    #[test]
    fn a_closed_gate_names_every_value_it_read() {
        let p = BTreeMap::from([("min_auc".to_owned(), ParamValue::Float(0.75))]);
        let e = "metrics.evaluate.auc >= params.min_auc";
        let out = eval_when_explained(e, &p, &metrics("evaluate", "auc", 0.0197), None).unwrap();
        assert!(!out.value);
        assert_eq!(
            out.explain(e),
            "metrics.evaluate.auc >= params.min_auc was false \
             (metrics.evaluate.auc = 0.0197, params.min_auc = 0.75)"
        );
        // A guarded previous metric that does not exist reads as absent;
        // a name read twice is listed once; string params are quoted.
        let p = BTreeMap::from([("stage".to_owned(), ParamValue::String("prod".into()))]);
        let e = "params.stage == 'dev' || (has(previous.metrics.evaluate) && \
                 metrics.evaluate.auc > previous.metrics.evaluate.auc) || params.stage == 'x'";
        let out = eval_when_explained(e, &p, &metrics("evaluate", "auc", 0.5), None).unwrap();
        assert_eq!(
            out.inputs,
            vec![
                ("params.stage".to_owned(), "\"prod\"".to_owned()),
                ("metrics.evaluate.auc".to_owned(), "0.5".to_owned()),
                (
                    "previous.metrics.evaluate.auc".to_owned(),
                    "absent".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn paths_skip_comprehension_variables() {
        let c = compile("[1, 2].all(x, x < params.limit) && metrics.train.loss < 1.0").unwrap();
        let mut paths = c.paths;
        paths.sort();
        assert_eq!(
            paths,
            vec![
                vec!["metrics".to_owned(), "train".into(), "loss".into()],
                vec!["params".to_owned(), "limit".into()],
            ]
        );
    }
}
