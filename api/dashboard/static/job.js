// One job's page: overview, progress with ETA, metric curves, previews, plots, artifacts, history, log.
"use strict";

(function () {
  const { $, el, setChildren, api, rows, poll, toast, parseTime, fmtTime, fmtAgo, fmtDuration, fmtBytes,
    fmtNumber, jobDuration, statusBadge, ApiError } = window.FJ;
  const E = window.FJ.events;
  const A = window.FJ.artifacts;
  const O = window.FJ.joblog;
  const MAX_PLOTS = 12;
  const ACTIVE_MS = 2000;
  const TERMINAL_MS = 10000;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

  const jobId = document.body.dataset.jobId;
  const ev = E.createEvents(jobId);
  const out = O.createLog(jobId);
  const S = { job: null, artifactsSig: "", artifactsAfterEnd: false, poller: null, images: new Map() };

  function kv(list) {
    return list.filter(Boolean).flatMap(([k, v, attrs]) => [el("dt", {}, k), el("dd", attrs || {}, v)]);
  }

  function timeCell(s) {
    const d = parseTime(s);
    return d ? el("span", { title: fmtTime(d) }, fmtTime(d) + " (" + fmtAgo(d) + ")") : "–";
  }

  function renderOverview(job) {
    const dur = jobDuration(job);
    const waited = job.started_at ? null : (window.FJ.serverNow() - parseTime(job.created_at).getTime()) / 1000;
    setChildren($("#j-overview"), kv([
      ["Status", statusBadge(job)],
      ["Queue", job.queue + " · priority " + job.priority],
      ["Attempt", job.attempt + " of " + job.max_attempts +
        (job.preemptions ? " · " + job.preemptions + " preemption" + (job.preemptions > 1 ? "s" : "") : "")],
      job.lease_owner ? ["Worker", job.lease_owner, { class: "mono" }] : null,
      ["Created", timeCell(job.created_at)],
      ["Started", timeCell(job.started_at)],
      job.finished_at ? ["Finished", timeCell(job.finished_at)] : null,
      dur !== null ? ["Duration", fmtDuration(dur)] : ["Waiting", fmtDuration(waited)],
      ["Checkpoint", job.checkpoint_step === null || job.checkpoint_step === undefined ? "none" :
        "step " + job.checkpoint_step],
    ]));
  }

  function renderProgress(job) {
    const pct = (job.progress || 0) * 100;
    $("#j-bar").style.width = pct.toFixed(2) + "%";
    $("#j-bar").parentElement.className = "bar s-" + job.status;
    $("#j-pct").textContent = job.progress_total ? pct.toFixed(1) + "%" : "";
    const est = E.eta(ev, job);
    const metrics = Object.entries(job.metrics || {}).map(([k, v]) => [k, fmtNumber(v), { class: "mono" }]);
    let etaText = "–";
    if (est) etaText = "~" + fmtDuration(est.seconds) + " (" + E.fmtRate(est.rate) + ")";
    else if (job.status === "running") etaText = "estimating…";
    else if (job.status === "succeeded") etaText = "done";
    setChildren($("#j-progress"), kv([
      ["Step", job.progress_total ? job.progress_step + " / " + job.progress_total : "no progress reported yet"],
      ["ETA", etaText, { id: "j-eta" }],
      ["Updated", timeCell(job.updated_at)],
      ...metrics,
    ]));
  }

  function renderActions(job) {
    const cancellable = (job.status === "queued" || job.status === "running") && !job.cancel_requested;
    $("#btn-cancel").disabled = !cancellable;
    $("#btn-cancel").textContent = job.cancel_requested && job.status === "running" ? "Cancelling…" : "Cancel";
    $("#btn-retry").disabled = !(job.status === "failed" || job.status === "cancelled");
  }

  function renderJob(job) {
    $("#j-kind").textContent = job.kind;
    setChildren($("#j-status"), statusBadge(job));
    document.title = job.kind + " " + job.id.slice(0, 8) + " · " + job.status + " · facejobs";
    renderOverview(job);
    renderProgress(job);
    renderActions(job);
    $("#j-error-card").hidden = !job.error;
    $("#j-error").textContent = job.error || "";
    $("#j-result").textContent = job.result ? JSON.stringify(job.result, null, 2) :
      TERMINAL.has(job.status) ? "no result" : "not finished yet";
    const params = Object.entries(job.params || {}).map(([k, v]) =>
      [k, v !== null && typeof v === "object" ? JSON.stringify(v) : String(v)]);
    setChildren($("#j-params"), params.length ? kv(params) : [el("dd", { class: "muted" }, "none")]);
  }

  // ---- artifacts ----------------------------------------------------------------------------
  function isImage(a) { return /^image\/(png|jpeg|gif|webp)$/.test(a.content_type) || /\.(png|jpe?g)$/i.test(a.name); }

  function imageFigure(a, caption) {
    let entry = S.images.get(a.name);
    if (!entry) {
      const img = el("img", { alt: a.name, loading: "lazy" });
      const cap = el("figcaption", {});
      entry = { fig: el("figure", { class: "shot", "data-name": a.name }, img, cap), img, cap };
      S.images.set(a.name, entry);
    }
    setChildren(entry.cap, el("span", { class: "mono" }, caption), el("span", { class: "muted" }, fmtAgo(parseTime(a.created_at))));
    A.showImage(entry.img, jobId, a);
    return entry.fig;
  }

  function downloadLink(a) {
    return el("a", { href: A.artifactPath(jobId, a.name), class: "download mono", "data-name": a.name,
      onclick: (e) => {
        e.preventDefault();
        A.download(jobId, a).catch((err) => toast("Download failed: " + err.message, "bad"));
      } }, a.name);
  }

  function renderArtifacts(list) {
    const previews = list.filter((a) => a.name.startsWith("previews/") && isImage(a))
      .sort((x, y) => (x.created_at < y.created_at ? 1 : -1));
    const plots = list.filter((a) => !a.name.startsWith("previews/") && !a.name.includes("/") && isImage(a))
      .slice(0, MAX_PLOTS);
    $("#j-previews-card").hidden = previews.length === 0;
    setChildren($("#j-previews"), previews.map((a) => imageFigure(a, a.name.slice("previews/".length))));
    $("#j-plots-card").hidden = plots.length === 0;
    setChildren($("#j-plots"), plots.map((a) => imageFigure(a, a.name)));

    const filter = $("#j-art-filter");
    filter.hidden = list.length <= 15;
    const needle = filter.value.trim().toLowerCase();
    const shown = needle ? list.filter((a) => a.name.toLowerCase().includes(needle)) : list;
    setChildren($("#j-artifacts tbody"), shown.map((a) => el("tr", {},
      el("td", {}, downloadLink(a)),
      el("td", { class: "num" }, fmtBytes(a.size)),
      el("td", { class: "muted small" }, a.content_type),
      el("td", { class: "mono small", title: a.sha256 }, a.sha256.slice(0, 12)),
      el("td", { title: fmtTime(parseTime(a.created_at)) }, fmtAgo(parseTime(a.created_at))))));
    $("#j-art-empty").hidden = list.length > 0;
    $("#j-artifacts").hidden = list.length === 0;
    $("#j-art-count").textContent = list.length ? String(list.length) : "";
  }

  async function loadArtifacts(job) {
    // Poll while the job can still write; once it has ended, one last read catches its final files.
    if (TERMINAL.has(job.status) && S.artifactsAfterEnd) return;
    const list = rows(await api("/jobs/" + encodeURIComponent(jobId) + "/artifacts"));
    S.artifactsAfterEnd = TERMINAL.has(job.status);
    S.artifacts = list;
    // Re-render on a change only (and every 30 s for the "updated" times), so a link is not
    // replaced under the pointer; a preview's new sha256 is a change.
    const sig = JSON.stringify([list.map((a) => [a.name, a.sha256]), Math.floor(Date.now() / 30000)]);
    if (sig !== S.artifactsSig) {
      S.artifactsSig = sig;
      renderArtifacts(list);
    }
  }

  // ---- the poll -----------------------------------------------------------------------------
  function notFound() {
    S.poller.stop();
    $("#job").hidden = true;
    $("#not-found").hidden = false;
    document.title = "Job not found · facejobs";
  }

  async function tick() {
    let job;
    try {
      job = await api("/jobs/" + encodeURIComponent(jobId));
    } catch (e) {
      if (e instanceof ApiError && (e.status === 404 || e.status === 422)) { notFound(); return; }
      throw e;
    }
    if (S.job && S.job.status !== job.status) S.artifactsAfterEnd = false;
    S.job = job;
    $("#job").hidden = false;
    await E.fetchEvents(ev);
    renderJob(job);
    E.renderCharts(ev);
    E.renderHistory(ev, job);
    E.renderLog(ev);
    await O.tailLog(out, job);
    await loadArtifacts(job);
  }

  async function act(what) {
    const button = what === "cancel" ? $("#btn-cancel") : $("#btn-retry");
    button.disabled = true;
    try {
      const job = await api("/jobs/" + encodeURIComponent(jobId) + "/" + what, { method: "POST" });
      toast(what === "cancel" ? (job.status === "cancelled" ? "Cancelled." : "Cancel requested: the worker stops within seconds.")
        : "Queued again; it resumes from its last checkpoint.", "good");
    } catch (e) {
      toast((what === "cancel" ? "Cancel" : "Retry") + " failed: " + e.message, "bad");
    }
    S.artifactsAfterEnd = false;
    S.poller.now();
  }

  function init() {
    $("#btn-cancel").addEventListener("click", () => act("cancel"));
    $("#btn-retry").addEventListener("click", () => act("retry"));
    $("#j-log-progress").addEventListener("change", () => { ev.logDirty = true; E.renderLog(ev); });
    $("#j-art-filter").addEventListener("input", () => renderArtifacts(S.artifacts || []));
    O.bindLog(out, () => S.poller.now(), (err) => toast("Download failed: " + err.message, "bad"));
    S.poller = poll(tick, () => (S.job && TERMINAL.has(S.job.status) ? TERMINAL_MS : ACTIVE_MS));
  }

  window.FJ.start(init);
})();
