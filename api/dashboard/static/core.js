// facejobs dashboard core: the API key, the fetch wrapper, the poller, DOM and formatting helpers.
// Every page script calls FJ.start(init); init runs once a key is known. No framework, no build step.
"use strict";

(function () {
  const KEY_STORAGE = "facejobs.apiKey";
  const POLL_MS = 2000;
  const pollers = [];
  let pageInit = null;
  let started = false;
  let clockSkewMs = 0; // server time minus browser time, from the Date header

  // ---- DOM ---------------------------------------------------------------------------------
  function $(sel, root) { return (root || document).querySelector(sel); }

  // el("td", {class: "x", title: "y", onclick: fn}, child, "text", ...): text is always text, never HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "class") node.className = v;
      else if (k === "style") node.style.cssText = v; // CSSOM, which the CSP allows (a style attribute it does not)
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function setChildren(node, ...children) {
    node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  function toast(message, kind) {
    const t = $("#toast");
    t.textContent = message;
    t.className = "toast " + (kind || "");
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  // ---- formatting --------------------------------------------------------------------------
  function parseTime(s) { return s ? new Date(s) : null; }
  function serverNow() { return Date.now() + clockSkewMs; }

  function pad2(n) { return String(n).padStart(2, "0"); }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    const s = Math.max(0, seconds);
    if (s < 10) return s.toFixed(1) + " s";
    if (s < 60) return Math.floor(s) + " s";
    if (s < 3600) return Math.floor(s / 60) + " m " + pad2(Math.floor(s % 60)) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + pad2(Math.floor((s % 3600) / 60)) + " m";
    return Math.floor(s / 86400) + " d " + pad2(Math.floor((s % 86400) / 3600)) + " h";
  }

  function fmtTime(d) {
    if (!d) return "–";
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + " " +
      pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }

  function fmtClock(d) { return d ? pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds()) : "–"; }

  function fmtAgo(d) {
    if (!d) return "–";
    const s = (serverNow() - d.getTime()) / 1000;
    if (s < 5) return "just now";
    if (s < 60) return Math.floor(s) + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h " + pad2(Math.floor((s % 3600) / 60)) + " m ago";
    return fmtTime(d).slice(0, 16);
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? v : v.toFixed(v < 10 ? 2 : 1)) + " " + units[i];
  }

  function fmtNumber(v) {
    if (typeof v !== "number") return String(v);
    if (!isFinite(v)) return String(v);
    if (Number.isInteger(v)) return Math.abs(v) >= 1e6 ? v.toExponential(2) : String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
    return v.toPrecision(4).replace(/\.?0+$/, "");
  }

  function shortId(id) { return id ? id.slice(0, 8) : ""; }

  // Seconds the job has run (or waited): started->finished, started->now, or created->now if queued.
  function jobDuration(job) {
    const start = parseTime(job.started_at);
    if (!start) return null;
    const end = parseTime(job.finished_at);
    return ((end ? end.getTime() : serverNow()) - start.getTime()) / 1000;
  }

  function statusBadge(job) {
    const status = typeof job === "string" ? job : job.status;
    const cancelling = typeof job === "object" && job.cancel_requested && status === "running";
    // A failed job's badge says why on hover: the last line of its error (the exception itself).
    const why = typeof job === "object" && job.error ? job.error.trim().split("\n").pop() : status;
    return el("span", { class: "badge s-" + status + (cancelling ? " cancelling" : ""),
      title: cancelling ? "cancel requested; the worker stops at its next check" : why },
    cancelling ? "cancelling" : status);
  }

  function progressBar(job) {
    const pct = Math.round((job.progress || 0) * 1000) / 10;
    const label = job.progress_total ? pct.toFixed(pct < 10 ? 1 : 0) + "%" : "";
    const bar = el("div", { class: "bar s-" + job.status, role: "progressbar", "aria-valuemin": 0,
      "aria-valuemax": 100, "aria-valuenow": pct }, el("span", { style: "width:" + pct + "%" }));
    return el("div", { class: "progress", title: job.progress_total ?
      job.progress_step + " / " + job.progress_total : "no progress reported yet" }, bar,
    el("span", { class: "pct" }, label));
  }

  // ---- API ---------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details;
    }
  }

  function getKey() { return sessionStorage.getItem(KEY_STORAGE); }

  function noteDate(resp) {
    const d = resp.headers.get("Date");
    if (d) {
      const skew = new Date(d).getTime() - Date.now();
      // The header is whole seconds, and servers refresh it about once a second: it lags by up to ~2 s.
      // Correct only a clock that is clearly off, so "10 min ago" does not read "9 min ago" here.
      clockSkewMs = Math.abs(skew) > 5000 ? skew : 0;
    }
  }

  async function api(path, opts) {
    const o = opts || {};
    const key = getKey();
    if (!key) { needKey(); throw new ApiError(401, "unauthorized", "no API key"); }
    const headers = { "X-API-Key": key, Accept: "application/json" };
    let body = o.body;
    if (o.json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(o.json); }
    let resp;
    try {
      resp = await fetch(path, { method: o.method || "GET", headers, body, cache: "no-store", signal: o.signal });
    } catch (e) {
      throw new ApiError(0, "network", "the API is unreachable (" + e.message + ")");
    }
    noteDate(resp);
    return readResponse(resp, o.raw);
  }

  async function readResponse(resp, raw) {
    if (resp.status === 401) {
      needKey("Your API key was rejected (wrong or revoked): enter it again.");
      throw new ApiError(401, "unauthorized", "API key rejected");
    }
    if (raw && resp.ok) return resp;
    const type = resp.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await resp.json().catch(() => null) : null;
    if (!resp.ok) {
      const err = (data && data.error) || {};
      throw new ApiError(resp.status, err.code || "http_" + resp.status, err.message || resp.statusText, err.details);
    }
    return data;
  }

  // A list route may answer a bare list or a page {data, ...}: the rows either way.
  function rows(body) { return Array.isArray(body) ? body : (body && body.data) || []; }

  // ---- polling -----------------------------------------------------------------------------
  // poll(fn, ms): run fn now and then every ms (a number or a function returning one) after it ends,
  // never overlapping, and not at all while the tab is hidden (resumes at once when it is shown).
  function poll(fn, ms) {
    const p = { timer: null, running: false, stopped: false, pending: false };
    const delay = () => (typeof ms === "function" ? ms() : ms || POLL_MS);
    async function tick() {
      p.timer = null;
      if (p.stopped || document.visibilityState === "hidden") return;
      p.running = true;
      try {
        await fn();
        setLive("ok");
      } catch (e) {
        if (e instanceof ApiError && e.status === 401) { p.running = false; return; }
        setLive("error", e.message);
        if (!(e instanceof ApiError)) console.error(e); // eslint-disable-line no-console
      }
      p.running = false;
      // A now() during the run (a filter changed, a button pressed) gets a fresh run at once.
      const soon = p.pending;
      p.pending = false;
      if (!p.stopped && p.timer === null) p.timer = setTimeout(tick, soon ? 0 : delay());
    }
    p.now = function () {
      if (p.stopped) return;
      if (p.running) { p.pending = true; return; }
      clearTimeout(p.timer);
      tick();
    };
    p.stop = function () { p.stopped = true; clearTimeout(p.timer); p.timer = null; };
    p.onVisibility = function () {
      if (document.visibilityState === "hidden") {
        clearTimeout(p.timer);
        p.timer = null;
      } else p.now();
    };
    pollers.push(p);
    tick();
    return p;
  }

  document.addEventListener("visibilitychange", () => {
    for (const p of pollers) p.onVisibility();
    if (document.visibilityState === "hidden") setLive("paused");
  });

  function setLive(state, message) {
    const live = $("#live");
    if (!live) return;
    live.className = "live " + state;
    if (state === "ok") live.textContent = "● live · " + fmtClock(new Date());
    else if (state === "paused") live.textContent = "❚❚ paused (tab hidden)";
    else live.textContent = "▲ " + (message || "connection problem") + " · retrying";
  }

  // ---- key and start -----------------------------------------------------------------------
  function needKey(message) {
    for (const p of pollers) p.stop();
    pollers.length = 0;
    sessionStorage.removeItem(KEY_STORAGE);
    $("#main").hidden = true;
    $("#whoami").hidden = true;
    $("#login").hidden = false;
    const err = $("#login-error");
    err.hidden = !message;
    err.textContent = message || "";
    setLive("");
    $("#live").textContent = "";
    $("#login-key").focus();
  }

  async function login(ev) {
    ev.preventDefault();
    const input = $("#login-key");
    const key = input.value.trim();
    const err = $("#login-error");
    if (!key) return;
    let resp;
    try {
      resp = await fetch("/kinds", { headers: { "X-API-Key": key, Accept: "application/json" }, cache: "no-store" });
    } catch (e) {
      err.hidden = false;
      err.textContent = "The API is unreachable: " + e.message;
      return;
    }
    if (resp.status === 401) {
      err.hidden = false;
      err.textContent = "This key was rejected: check it, or create one with facejobs keys create NAME.";
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    input.value = "";
    if (started) location.reload(); // a page that ran before: start it from a clean slate
    else boot();
  }

  function boot() {
    const key = getKey();
    if (!key) { needKey(); return; }
    $("#login").hidden = true;
    $("#main").hidden = false;
    $("#whoami").hidden = false;
    const m = /^fj_([0-9a-f]{8})_/.exec(key);
    $("#key-prefix").textContent = "key " + (m ? "fj_" + m[1] + "_…" : "(custom)");
    started = true;
    if (pageInit) pageInit();
  }

  function start(init) {
    pageInit = init;
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
    else boot();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#login-form").addEventListener("submit", login);
    $("#logout").addEventListener("click", () => { needKey("Key forgotten. Enter a key to continue."); });
    const page = document.body.dataset.page;
    for (const a of document.querySelectorAll("nav a")) if (a.dataset.nav === page) a.classList.add("active");
  });

  window.FJ = {
    $, el, setChildren, toast, api, rows, poll, start, ApiError, getKey, readResponse,
    parseTime, serverNow, fmtDuration, fmtTime, fmtClock, fmtAgo, fmtBytes, fmtNumber, shortId,
    jobDuration, statusBadge, progressBar, POLL_MS,
  };
})();
