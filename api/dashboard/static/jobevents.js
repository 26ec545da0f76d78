// A job's events on its page: the metric series, the ETA, the attempts, the status history, the log tail.
// Events arrive oldest first and are fetched incrementally (?after=<last id>), so each poll costs only
// what is new; a long job's first load pages through its history a few hundred events at a time.
"use strict";

(function () {
  const { $, el, setChildren, api, rows, parseTime, fmtClock, fmtTime, fmtDuration, fmtNumber } = window.FJ;
  const PAGE = 200;
  const PAGES_PER_POLL = 25;
  const TAIL = 300;
  const RATE_WINDOW_MS = 60000;

  function createEvents(jobId) {
    return {
      jobId,
      after: null,
      series: new Map(), // metric -> Map(step -> value); a resumed attempt overwrites the steps it repeats
      seriesDirty: false,
      progress: [], // the latest progress points {t, step, total, attempt} (for the rate and ETA)
      history: [], // every status and error event
      tail: [], // the latest non-progress events
      progressTail: [], // the latest progress events
      historyDirty: false,
      logDirty: false,
    };
  }

  function ingest(ev, e) {
    if (e.type === "progress") {
      const d = e.data || {};
      const step = Number(d.step);
      for (const [k, v] of Object.entries(d)) {
        if (k === "step" || k === "total" || typeof v !== "number") continue;
        if (!ev.series.has(k)) ev.series.set(k, new Map());
        ev.series.get(k).set(step, v);
        ev.seriesDirty = true;
      }
      ev.progress.push({ t: parseTime(e.created_at).getTime(), step, total: Number(d.total), attempt: e.attempt });
      if (ev.progress.length > 400) ev.progress.splice(0, ev.progress.length - 400);
      ev.progressTail.push(e);
      if (ev.progressTail.length > TAIL) ev.progressTail.shift();
    } else if (e.type === "sys") {
      // The worker's utilisation samples (sys/cpu_pct, sys/rss_mb, sys/gpu_*), by seconds since the attempt began;
      // each attempt starts again at 0, so a series holds the latest attempt's curve over the earlier ones' tail.
      const d = e.data || {};
      for (const [k, v] of Object.entries(d)) {
        if (!k.startsWith("sys/") || typeof v !== "number") continue;
        if (!ev.series.has(k)) ev.series.set(k, new Map());
        ev.series.get(k).set(Number(d.t), v);
        ev.seriesDirty = true;
      }
      return;
    } else {
      if (e.type === "status" || e.type === "error") { ev.history.push(e); ev.historyDirty = true; }
      ev.tail.push(e);
      if (ev.tail.length > TAIL) ev.tail.shift();
    }
    ev.logDirty = true;
  }

  // Fetch what is new (at most PAGES_PER_POLL pages; the rest comes on the next polls).
  async function fetchEvents(ev) {
    for (let i = 0; i < PAGES_PER_POLL; i++) {
      const q = new URLSearchParams({ limit: String(PAGE) });
      if (ev.after !== null) q.set("after", String(ev.after));
      const page = rows(await api("/jobs/" + encodeURIComponent(ev.jobId) + "/events?" + q.toString()));
      for (const e of page) { ingest(ev, e); ev.after = e.id; }
      if (page.length < PAGE) return true;
    }
    return false;
  }

  // Steps per second over the last minute of the current attempt, and the seconds left at that rate.
  function eta(ev, job) {
    const pts = ev.progress.filter((p) => p.attempt === job.attempt);
    if (job.status !== "running" || pts.length < 2) return null;
    const last = pts[pts.length - 1];
    let first = pts[0];
    for (const p of pts) if (last.t - p.t <= RATE_WINDOW_MS) { first = p; break; }
    if (first === last) first = pts[pts.length - 2];
    const dt = (last.t - first.t) / 1000;
    const ds = last.step - first.step;
    if (dt <= 0 || ds <= 0) return null;
    const rate = ds / dt;
    const total = job.progress_total || last.total;
    const left = Math.max(0, total - job.progress_step) / rate;
    // The estimate is of the last recorded step: subtract the time since it was recorded.
    const since = Math.max(0, (window.FJ.serverNow() - last.t) / 1000);
    return { rate, seconds: Math.max(0, left - since), lastAt: last.t };
  }

  function fmtRate(rate) {
    return rate >= 1 ? fmtNumber(rate) + " steps/s" : fmtNumber(1 / rate) + " s/step";
  }

  function renderCharts(ev) {
    if (!ev.seriesDirty) return;
    ev.seriesDirty = false;
    const card = $("#j-charts-card");
    card.hidden = ev.series.size === 0;
    const charts = [];
    let n = 0;
    for (const [name, byStep] of ev.series) {
      const pts = [...byStep.entries()].sort((a, b) => a[0] - b[0]);
      n = Math.max(n, pts.length);
      charts.push(window.FJ.lineChart(name, pts, name.startsWith("sys/") ? "s" : "step"));
    }
    setChildren($("#j-charts"), charts);
    $("#j-charts-note").textContent = n + " point" + (n === 1 ? "" : "s") + " from progress events";
  }

  function firstLine(text) { return String(text || "").split("\n")[0]; }

  function messageCell(e) {
    const msg = String(e.message || "");
    if (!msg.includes("\n")) return el("td", { class: "msg" }, msg);
    return el("td", { class: "msg" }, el("details", {}, el("summary", {}, firstLine(msg)), el("pre", {}, msg)));
  }

  function attempts(ev, job) {
    const by = new Map();
    for (const e of ev.history) {
      if (!e.attempt) continue;
      const t = parseTime(e.created_at);
      const a = by.get(e.attempt) || { attempt: e.attempt, start: t, end: t, outcome: "" };
      a.end = t;
      a.outcome = firstLine(e.message);
      by.set(e.attempt, a);
    }
    const list = [...by.values()].sort((x, y) => x.attempt - y.attempt);
    const current = list.find((a) => a.attempt === job.attempt);
    if (current && job.status === "running") { current.end = null; current.outcome = "running"; }
    return list;
  }

  function renderHistory(ev, job) {
    const list = attempts(ev, job);
    setChildren($("#j-attempts tbody"), list.map((a) => el("tr", {},
      el("td", { class: "num" }, String(a.attempt)),
      el("td", { title: fmtTime(a.start) }, fmtTime(a.start)),
      el("td", {}, a.end ? fmtTime(a.end) : "–"),
      el("td", { class: "num" }, fmtDuration(((a.end ? a.end.getTime() : window.FJ.serverNow()) - a.start.getTime()) / 1000)),
      el("td", { class: "msg" }, a.outcome))));
    $("#j-attempts").hidden = list.length === 0;
    if (!ev.historyDirty) return;
    ev.historyDirty = false;
    setChildren($("#j-history tbody"), ev.history.map((e) => {
      const t = parseTime(e.created_at);
      return el("tr", { class: "ev-" + e.type },
        el("td", { title: fmtTime(t), class: "nowrap" }, fmtTime(t)),
        el("td", { class: "num" }, String(e.attempt)),
        el("td", {}, el("span", { class: "tag t-" + e.type }, e.type)),
        messageCell(e));
    }));
  }

  function progressLine(e) {
    const d = e.data || {};
    const metrics = Object.entries(d).filter(([k]) => k !== "step" && k !== "total")
      .map(([k, v]) => k + "=" + fmtNumber(v)).join(" ");
    return "step " + d.step + "/" + d.total + (metrics ? "  " + metrics : "");
  }

  function renderLog(ev) {
    if (!ev.logDirty) return;
    ev.logDirty = false;
    const box = $("#j-log");
    const withProgress = $("#j-log-progress").checked;
    let items = ev.tail;
    if (withProgress) items = [...ev.tail, ...ev.progressTail].sort((a, b) => a.id - b.id).slice(-TAIL);
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
    setChildren(box, items.map((e) => el("div", { class: "line t-" + e.type },
      el("span", { class: "t", title: fmtTime(parseTime(e.created_at)) }, fmtClock(parseTime(e.created_at))),
      el("span", { class: "a" }, "#" + e.attempt),
      el("span", { class: "ty" }, e.type),
      el("span", { class: "m" }, e.type === "progress" ? progressLine(e) : e.message))));
    if (!items.length) box.append(el("div", { class: "muted" }, "No events yet."));
    if (atBottom) box.scrollTop = box.scrollHeight;
    $("#j-log-note").textContent = "last " + items.length + " events";
  }

  window.FJ.events = { createEvents, fetchEvents, eta, fmtRate, renderCharts, renderHistory, renderLog };
})();
