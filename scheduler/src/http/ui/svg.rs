//! Inline SVG drawn on the server: the DAG graph in topological layers and
//! line charts of a metric across runs. Text goes through maud, so task ids
//! and descriptions are escaped like everywhere else.

use std::collections::BTreeMap;

use maud::{Markup, html};

use crate::http::read::Graph;

const NODE_W: f64 = 150.0;
const NODE_H: f64 = 34.0;
const COL_GAP: f64 = 60.0;
const ROW_GAP: f64 = 18.0;

/// The graph left to right, one column per layer; `states` colours nodes
/// (task id → state) and links them to the selected run's task pages.
pub fn graph(g: &Graph, states: &BTreeMap<String, String>, run: Option<&str>) -> Markup {
    let rows = g.nodes.iter().map(|n| n.index + 1).max().unwrap_or(1);
    let layers = g.nodes.iter().map(|n| n.layer + 1).max().unwrap_or(1);
    let width = layers as f64 * (NODE_W + COL_GAP) - COL_GAP + 20.0;
    let height = rows as f64 * (NODE_H + ROW_GAP) - ROW_GAP + 20.0;
    let pos: BTreeMap<&str, (f64, f64)> = g
        .nodes
        .iter()
        .map(|n| {
            let x = 10.0 + n.layer as f64 * (NODE_W + COL_GAP);
            let y = 10.0 + n.index as f64 * (NODE_H + ROW_GAP);
            (n.id.as_str(), (x, y))
        })
        .collect();
    html! {
        svg class="graph" width=(width) height=(height) viewBox={"0 0 " (width) " " (height)}
            xmlns="http://www.w3.org/2000/svg" role="img" aria-label="task graph" {
            defs {
                marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto" {
                    path d="M 0 0 L 10 5 L 0 10 z" fill="#7a8699" {}
                }
            }
            @for e in &g.edges {
                @if let (Some((x1, y1)), Some((x2, y2))) = (pos.get(e.from.as_str()), pos.get(e.to.as_str())) {
                    path class="edge" marker-end="url(#arrow)"
                        d={"M " (x1 + NODE_W) " " (y1 + NODE_H / 2.0) " C " (x1 + NODE_W + COL_GAP / 2.0) " " (y1 + NODE_H / 2.0) ", "
                            (x2 - COL_GAP / 2.0) " " (y2 + NODE_H / 2.0) ", " (x2) " " (y2 + NODE_H / 2.0)} {}
                }
            }
            @for n in &g.nodes {
                @let (x, y) = pos.get(n.id.as_str()).copied().unwrap_or((0.0, 0.0));
                @let state = states.get(&n.id).map_or("none", String::as_str);
                g class={"node st-" (state)} data-task=(n.id) {
                    title { (n.id) ": " (state) @if let Some(w) = &n.when { " — when " (w) } }
                    @if let Some(run) = run {
                        a href={"/runs/" (run) "/tasks/" (n.id)} {
                            rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {}
                            text x=(x + 10.0) y=(y + 22.0) { (truncate(&n.id, 18)) }
                        }
                    } @else {
                        rect x=(x) y=(y) width=(NODE_W) height=(NODE_H) rx="6" {}
                        text x=(x + 10.0) y=(y + 22.0) { (truncate(&n.id, 18)) }
                    }
                }
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max - 1).collect();
        out.push('…');
        out
    }
}

/// One point of a chart: a label (run) and a value.
pub struct Point {
    pub label: String,
    pub value: f64,
    pub href: String,
}

/// A line chart of values across runs, with an optional dashed threshold line.
pub fn line_chart(title: &str, points: &[Point], threshold: Option<(f64, &str)>) -> Markup {
    const W: f64 = 520.0;
    const H: f64 = 180.0;
    const PAD: f64 = 36.0;
    let mut lo = points.iter().map(|p| p.value).fold(f64::INFINITY, f64::min);
    let mut hi = points
        .iter()
        .map(|p| p.value)
        .fold(f64::NEG_INFINITY, f64::max);
    if let Some((t, _)) = threshold {
        lo = lo.min(t);
        hi = hi.max(t);
    }
    if !lo.is_finite() || !hi.is_finite() {
        lo = 0.0;
        hi = 1.0;
    }
    if (hi - lo).abs() < f64::EPSILON {
        lo -= 0.5;
        hi += 0.5;
    }
    let n = points.len().max(2) - 1;
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / n as f64;
    let y = |v: f64| H - PAD + (H - 2.0 * PAD) * -((v - lo) / (hi - lo));
    let line: String = points
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.value)))
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        figure class="chart" {
            figcaption { (title) }
            svg width=(W) height=(H) viewBox={"0 0 " (W) " " (H)} xmlns="http://www.w3.org/2000/svg" role="img" aria-label=(title) {
                line class="axis" x1=(PAD) y1=(H - PAD) x2=(W - PAD) y2=(H - PAD) {}
                line class="axis" x1=(PAD) y1=(PAD) x2=(PAD) y2=(H - PAD) {}
                text class="tick" x="4" y=(PAD + 4.0) { (fmt_num(hi)) }
                text class="tick" x="4" y=(H - PAD + 4.0) { (fmt_num(lo)) }
                @if let Some((t, label)) = threshold {
                    line class="threshold" x1=(PAD) y1=(y(t)) x2=(W - PAD) y2=(y(t)) {}
                    text class="threshold-label" x=(W - PAD - 4.0) y=(y(t) - 4.0) text-anchor="end" { (label) " " (fmt_num(t)) }
                }
                polyline class="series" points=(line) {}
                @for (i, p) in points.iter().enumerate() {
                    a href=(p.href) {
                        circle class="dot" cx=(x(i)) cy=(y(p.value)) r="3.5" {
                            title { (p.label) ": " (fmt_num(p.value)) }
                        }
                    }
                }
            }
        }
    }
}

pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e9 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    }
}

/// One bar of the run timeline: an attempt, or the wait before a retry.
pub struct Span {
    pub task: String,
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
    /// `wait` for a retry wait, else the attempt's outcome (or `running`).
    pub kind: String,
    /// Shown on hover and read by screen readers.
    pub label: String,
}

const LANE_H: f64 = 22.0;
const LABEL_W: f64 = 150.0;
const TRACK_W: f64 = 700.0;

/// The run as a Gantt chart: one lane per task (in `tasks` order), each
/// attempt a bar from its start to its end, retry waits as hatched bars
/// between attempts. Drawn with SVG attributes, not inline styles, so the
/// page's CSP (`style-src 'self'`) holds.
pub fn timeline(tasks: &[String], spans: &[Span]) -> Markup {
    let (Some(t0), Some(t1)) = (
        spans.iter().map(|s| s.start).min(),
        spans.iter().map(|s| s.end).max(),
    ) else {
        return html! { p class="muted" { "No attempt has started yet." } };
    };
    let total_ms = (t1 - t0).num_milliseconds().max(1) as f64;
    let x = |t: chrono::DateTime<chrono::Utc>| {
        LABEL_W + (t - t0).num_milliseconds() as f64 / total_ms * TRACK_W
    };
    let height = tasks.len() as f64 * LANE_H + 24.0;
    let width = LABEL_W + TRACK_W + 10.0;
    html! {
        svg class="timeline" width=(width) height=(height) viewBox={"0 0 " (width) " " (height)}
            xmlns="http://www.w3.org/2000/svg" role="img" aria-label="timeline of attempts" {
            @for (i, task) in tasks.iter().enumerate() {
                @let y = i as f64 * LANE_H;
                text class="lane" x="0" y=(y + 15.0) { (task) }
                @for s in spans.iter().filter(|s| &s.task == task) {
                    @let x0 = x(s.start);
                    g class={"bar st-" (s.kind)} data-task=(task) {
                        title { (s.label) }
                        rect x=(x0) y=(y + 3.0) width=((x(s.end) - x0).max(2.0)) height=(LANE_H - 6.0) rx="2" {}
                    }
                }
            }
            line class="axis" x1=(LABEL_W) x2=(LABEL_W + TRACK_W) y1=(height - 20.0) y2=(height - 20.0) {}
            text class="tick" x=(LABEL_W) y=(height - 6.0) { "0 s" }
            text class="tick" x=(LABEL_W + TRACK_W) y=(height - 6.0) text-anchor="end" {
                (super::layout::duration(Some(t0), Some(t1)))
            }
        }
    }
}
