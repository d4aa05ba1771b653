// Trainyard UI: live updates without reloads. Every text that comes from a
// DAG or a task is set with textContent, never innerHTML.
"use strict";

const TERMINAL = new Set(["success", "failed", "cancelled", "skipped", "upstream_failed"]);

function setBadge(el, state) {
  if (!el || el.textContent === state) return;
  el.textContent = state;
  el.className = el.className.replace(/\bst-[a-z_]+/g, "").trim() + " st-" + state;
}

function fmtDuration(start, end) {
  if (!start || !end) return "";
  const ms = Math.max(0, Date.parse(end) - Date.parse(start));
  if (ms < 1000) return ms + " ms";
  if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
  return Math.floor(ms / 60000) + " min";
}

// A timestamp as the server renders it (`when` in layout.rs): UTC, to the second.
function setTime(el, iso) {
  if (!el || !iso) return;
  const t = document.createElement("time");
  t.setAttribute("datetime", iso);
  t.textContent = new Date(iso).toISOString().slice(0, 19).replace("T", " ");
  el.replaceChildren(t);
}

// Run page: poll the run every second until it ends.
function followRun(badge) {
  const run = badge.dataset.run;
  const tick = async () => {
    let data;
    try {
      const resp = await fetch("/api/v1/runs/" + encodeURIComponent(run), { credentials: "same-origin" });
      if (!resp.ok) return setTimeout(tick, 2000);
      data = await resp.json();
    } catch (e) {
      return setTimeout(tick, 2000);
    }
    setBadge(badge, data.run.state);
    setTime(document.getElementById("run-started"), data.run.started_at);
    setTime(document.getElementById("run-ended"), data.run.ended_at);
    for (const t of data.tasks) {
      const row = document.querySelector('#tasks tr[data-task="' + CSS.escape(t.task_id) + '"]');
      if (row) {
        setBadge(row.querySelector(".state .badge"), t.state);
        row.querySelector(".attempt").textContent = t.attempt + " / " + t.max_attempts;
        row.querySelector(".worker").textContent = t.worker || "";
        row.querySelector(".gpus").textContent = (t.gpus || []).join(",");
        row.querySelector(".duration").textContent = fmtDuration(t.started_at, t.ended_at);
        row.querySelector(".wait").textContent = t.wait_reason || t.skip_reason || "";
      }
      const node = document.querySelector('svg.graph g.node[data-task="' + CSS.escape(t.task_id) + '"]');
      if (node) node.setAttribute("class", "node st-" + t.state);
    }
    if (!["success", "failed", "cancelled"].includes(data.run.state)) return setTimeout(tick, 1000);
    // An ended run cannot be cancelled: drop the button rather than offer it.
    const cancel = document.getElementById("cancel-run");
    if (cancel) cancel.remove();
  };
  setTimeout(tick, 1000);
}

// Task page: tail the log over SSE; poll the task's state; reload the full
// log once the task ends (covers lines written between render and connect).
function followTask(badge, log) {
  const run = badge.dataset.run, task = badge.dataset.task;
  let source = null;
  if (!TERMINAL.has(badge.textContent) && window.EventSource) {
    source = new EventSource(log.dataset.stream);
    source.addEventListener("line", (ev) => {
      try {
        const line = JSON.parse(ev.data);
        log.appendChild(document.createTextNode(line.line + "\n"));
        log.scrollTop = log.scrollHeight;
      } catch (e) { /* a malformed event is dropped */ }
    });
    // The task finished: the server ends the stream; do not reconnect.
    source.addEventListener("end", () => source.close());
  }
  const tick = async () => {
    try {
      const resp = await fetch("/api/v1/runs/" + encodeURIComponent(run), { credentials: "same-origin" });
      if (resp.ok) {
        const data = await resp.json();
        const t = data.tasks.find((x) => x.task_id === task);
        if (t) {
          setBadge(badge, t.state);
          if (TERMINAL.has(t.state)) {
            if (source) source.close();
            const full = await fetch(log.dataset.full, { credentials: "same-origin" });
            if (full.ok) log.textContent = await full.text();
            return;
          }
        }
      }
    } catch (e) { /* retry below */ }
    setTimeout(tick, 1000);
  };
  if (!TERMINAL.has(badge.textContent)) setTimeout(tick, 1000);
}

// Task page: show only the log lines containing the search text (case-insensitive).
function searchLog(input, log) {
  let full = null;
  const count = document.getElementById("log-matches");
  input.addEventListener("input", () => {
    const q = input.value.toLowerCase();
    if (full === null) full = log.textContent;
    if (!q) {
      log.textContent = full;
      full = null;
      count.textContent = "";
      return;
    }
    const hits = full.split("\n").filter((l) => l.toLowerCase().includes(q));
    log.textContent = hits.join("\n");
    count.textContent = hits.length + (hits.length === 1 ? " line" : " lines");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const runBadge = document.getElementById("run-state");
  if (runBadge && !["success", "failed", "cancelled"].includes(runBadge.textContent)) followRun(runBadge);
  const taskBadge = document.getElementById("task-state");
  const log = document.getElementById("log");
  if (taskBadge && log && log.dataset.stream) followTask(taskBadge, log);
  const search = document.getElementById("log-search");
  if (search && log) searchLog(search, log);
});

// Forms that change a lot ask first (`data-confirm`); CSP forbids inline handlers.
document.addEventListener("submit", (ev) => {
  const msg = ev.target instanceof HTMLFormElement ? ev.target.dataset.confirm : undefined;
  if (msg && !window.confirm(msg)) ev.preventDefault();
});
