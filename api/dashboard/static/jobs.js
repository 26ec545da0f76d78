// The jobs table: filters (status, kind, text search, tag chips), keyset pages, a poll of the current page every
// 2 s, and checkboxes whose "Compare selected" opens /ui/compare?ids=... (kept across pages and filters).
"use strict";

(function () {
  const { $, el, setChildren, api, poll, fmtAgo, fmtTime, fmtDuration, fmtNumber, shortId,
    parseTime, jobDuration, statusBadge, progressBar } = window.FJ;
  const PAGE_SIZE = 50;

  // The view lives in the URL (?status=&kind=&q=&tag=&tag=&cursor=), so a filtered page can be linked and reloaded.
  const state = { status: "", kind: "", q: "", tags: [], cursor: "", back: [], next: null };
  const picked = new Set(); // ids ticked for comparing
  const MAX_COMPARE = 50;
  const TAG_RE = /^[A-Za-z0-9_.:-]{1,64}$/;
  const rowsById = new Map();
  let poller = null;

  function readUrl() {
    const q = new URLSearchParams(location.search);
    state.status = q.get("status") || "";
    state.kind = q.get("kind") || "";
    state.q = q.get("q") || "";
    state.tags = q.getAll("tag").filter((t) => TAG_RE.test(t));
    state.cursor = q.get("cursor") || "";
  }

  // The filters of the view as query parameters (the URL and the API take the same ones).
  function filterParams(q) {
    if (state.status) q.set("status", state.status);
    if (state.kind) q.set("kind", state.kind);
    if (state.q) q.set("q", state.q);
    for (const t of state.tags) q.append("tag", t);
    return q;
  }

  function writeUrl() {
    const q = filterParams(new URLSearchParams());
    if (state.cursor) q.set("cursor", state.cursor);
    const qs = q.toString();
    history.replaceState(null, "", qs ? "?" + qs : location.pathname);
  }

  function metricsText(metrics) {
    const entries = Object.entries(metrics || {}).filter(([, v]) => typeof v === "number");
    return entries.slice(0, 3).map(([k, v]) => k + " " + fmtNumber(v)).join("  ·  ");
  }

  function attemptText(job) {
    let s = job.attempt + "/" + job.max_attempts;
    if (job.preemptions) s += " (+" + job.preemptions + " preempted)";
    return s;
  }

  function durationCell(job, duration) {
    if (duration !== null) return el("td", { class: "num", title: "run time" }, fmtDuration(duration));
    if (job.status !== "queued") return el("td", { class: "num" }, "–");
    const waited = (window.FJ.serverNow() - parseTime(job.created_at).getTime()) / 1000;
    return el("td", { class: "num muted", title: "queued, waiting for a worker" }, "waiting " + fmtDuration(waited));
  }

  function renderRow(job) {
    const href = "/ui/jobs/" + encodeURIComponent(job.id);
    const created = parseTime(job.created_at);
    const duration = jobDuration(job);
    const box = el("input", { type: "checkbox", class: "pick", "aria-label": "select " + job.id,
      checked: picked.has(job.id) });
    box.addEventListener("change", () => {
      if (box.checked) picked.add(job.id); else picked.delete(job.id);
      updatePicked();
    });
    const tags = (job.tags || []).map((t) => el("button", { type: "button", class: "chip", title: "filter by " + t,
      onclick: (ev) => { ev.stopPropagation(); addTag(t); } }, t));
    const tr = el("tr", { "data-id": job.id, "data-status": job.status, class: "s-row-" + job.status },
      el("td", { class: "c-pick" }, box),
      el("td", { class: "mono c-id" }, el("a", { href, title: job.id }, shortId(job.id))),
      el("td", { class: "c-name" }, job.name ? el("a", { href, class: "name" }, job.name) : null, tags),
      el("td", {}, el("a", { href, class: "kind" }, job.kind)),
      el("td", { class: "c-status" }, statusBadge(job)),
      el("td", { class: "c-progress" }, progressBar(job)),
      el("td", { class: "metrics small mono" }, metricsText(job.metrics)),
      el("td", { class: "num" }, attemptText(job)),
      el("td", { title: fmtTime(created) }, fmtAgo(created)),
      durationCell(job, duration));
    tr.addEventListener("click", (ev) => {
      // A click anywhere on the row opens the job, unless it was on a link or a text selection.
      if (ev.target.closest("a, input, button") || String(window.getSelection())) return;
      location.href = href;
    });
    return tr;
  }

  function render(page) {
    const body = $("#jobs-body");
    const jobs = page.data;
    // Rebuild rows but keep the element order stable; a row is replaced only when its content changed,
    // so hover and text selection survive a poll.
    const wanted = [];
    for (const job of jobs) {
      const sig = JSON.stringify([job.name, job.tags, picked.has(job.id), job.status, job.progress, job.attempt, job.metrics, job.cancel_requested,
        job.started_at, job.finished_at, job.error,
        job.status === "running" || job.status === "queued" ? Math.floor(Date.now() / 1000) : 0]);
      let entry = rowsById.get(job.id);
      if (!entry || entry.sig !== sig) {
        entry = { sig, tr: renderRow(job) };
        rowsById.set(job.id, entry);
      }
      wanted.push(entry.tr);
    }
    const ids = new Set(jobs.map((j) => j.id));
    for (const id of [...rowsById.keys()]) if (!ids.has(id)) rowsById.delete(id);
    const current = [...body.children];
    if (current.length !== wanted.length || current.some((tr, i) => tr !== wanted[i])) setChildren(body, wanted);

    const empty = $("#jobs-empty");
    empty.hidden = jobs.length > 0;
    if (!jobs.length) {
      const filtered = state.status || state.kind || state.q || state.tags.length;
      setChildren(empty, filtered ? "No jobs match these filters." : "No jobs yet. ",
        filtered ? null : el("a", { href: "/ui/submit" }, "Submit your first job →"));
    }
    state.next = page.next_cursor;
    $("#pg-next").disabled = !state.next;
    $("#pg-prev").disabled = state.back.length === 0 && !state.cursor;
    $("#pg-newest").disabled = !state.cursor;
    // A cursor that came in the URL has no known page number: the pages before it were not walked here.
    const pageNo = !state.cursor ? "page 1" : state.back.length ? "page " + (state.back.length + 1) : "older page";
    $("#pg-info").textContent = pageNo + " · " + jobs.length + " job" + (jobs.length === 1 ? "" : "s") +
      (state.cursor ? "" : " · newest first");
    updatePicked();
  }

  async function load() {
    const view = viewKey();
    const q = filterParams(new URLSearchParams({ limit: String(PAGE_SIZE) }));
    if (state.cursor) q.set("cursor", state.cursor);
    const page = await api("/jobs?" + q.toString());
    if (view === viewKey()) render(page); // the filters changed while it was in flight: a new load follows
  }

  function viewKey() { return JSON.stringify([state.status, state.kind, state.q, state.tags, state.cursor]); }

  function renderTags() {
    setChildren($("#f-tags"), state.tags.map((t) => el("button", { type: "button", class: "chip active",
      title: "remove this filter", "data-tag": t, onclick: () => { state.tags = state.tags.filter((x) => x !== t);
        renderTags(); go("", []); } }, t, " ×")));
  }

  function addTag(t) {
    if (!TAG_RE.test(t) || state.tags.includes(t) || state.tags.length >= 32) return;
    state.tags = [...state.tags, t];
    renderTags();
    go("", []);
  }

  function updatePicked() {
    const btn = $("#btn-compare");
    btn.disabled = picked.size < 1 || picked.size > MAX_COMPARE;
    btn.textContent = picked.size ? "Compare selected (" + picked.size + ")" : "Compare selected";
    const boxes = [...document.querySelectorAll("#jobs-body input.pick")];
    $("#pick-all").checked = boxes.length > 0 && boxes.every((b) => b.checked);
  }

  function go(cursor, back) {
    state.cursor = cursor || "";
    state.back = back;
    writeUrl();
    rowsById.clear();
    poller.now();
  }

  async function loadKinds() {
    try {
      const kinds = await api("/kinds");
      const select = $("#f-kind");
      for (const k of kinds) select.append(el("option", { value: k.name }, k.name));
      select.value = state.kind;
    } catch (e) { /* the table works without the kind list */ }
  }

  function init() {
    readUrl();
    $("#f-status").value = state.status;
    $("#f-status").addEventListener("change", (e) => { state.status = e.target.value; go("", []); });
    $("#f-kind").addEventListener("change", (e) => { state.kind = e.target.value; go("", []); });
    $("#f-q").value = state.q;
    let typing = null;
    $("#f-q").addEventListener("input", (e) => {
      clearTimeout(typing);
      typing = setTimeout(() => { state.q = e.target.value.trim(); go("", []); }, 300);
    });
    $("#f-tag").addEventListener("keydown", (e) => {
      if (e.key !== "Enter") return;
      e.preventDefault();
      addTag(e.target.value.trim());
      e.target.value = "";
    });
    renderTags();
    $("#pick-all").addEventListener("change", (e) => {
      for (const b of document.querySelectorAll("#jobs-body input.pick")) {
        b.checked = e.target.checked;
        const id = b.closest("tr").dataset.id;
        if (b.checked) picked.add(id); else picked.delete(id);
      }
      updatePicked();
    });
    $("#btn-compare").addEventListener("click", () => {
      location.href = "/ui/compare?ids=" + [...picked].join(",");
    });
    $("#pg-next").addEventListener("click", () => {
      if (state.next) go(state.next, [...state.back, state.cursor]);
    });
    $("#pg-prev").addEventListener("click", () => {
      const back = [...state.back];
      const prev = back.pop();
      go(prev || "", back);
    });
    $("#pg-newest").addEventListener("click", () => go("", []));
    loadKinds();
    poller = poll(load);
  }

  window.FJ.start(init);
})();
