// The job page's dependencies card: the jobs it waits for, those waiting for it, and its sweep or pipeline.
"use strict";

(function () {
  const { $, el, setChildren, api, poll, getKey, statusBadge, shortId } = window.FJ;

  function list(nodes) {
    if (!nodes.length) return el("span", { class: "muted" }, "none");
    return el("span", {}, nodes.map((n) => el("span", { class: "dep", dataset: { id: n.id } },
      el("a", { class: "mono", href: `/ui/jobs/${n.id}` }, shortId(n.id)), " ", n.kind, " ", statusBadge(n), " ")));
  }

  async function refresh(id) {
    const g = await api(`/jobs/${encodeURIComponent(id)}/graph`);
    const card = $("#j-deps-card");
    card.hidden = !(g.upstreams.length || g.downstreams.length || g.parent_id || g.page);
    setChildren($("#j-deps"), el("dt", {}, "Waits for"), el("dd", { id: "j-upstreams" }, list(g.upstreams)),
      el("dt", {}, "Waited for by"), el("dd", { id: "j-downstreams" }, list(g.downstreams)));
    const parent = $("#j-parent");
    if (g.page) {
      parent.href = g.page;
      parent.textContent = g.page.startsWith("/ui/sweeps/") ? "open the sweep page" : "open the pipeline graph";
      parent.hidden = false;
    } else if (g.parent_id) {
      const parentJob = await api(`/jobs/${encodeURIComponent(g.parent_id)}`);
      const kind = parentJob.kind === "sweep" ? "sweeps" : parentJob.kind === "pipeline" ? "pipelines" : "jobs";
      parent.href = `/ui/${kind}/${g.parent_id}`;
      parent.textContent = `part of ${parentJob.kind} ${shortId(g.parent_id)}`;
      parent.hidden = false;
    }
  }

  // Not FJ.start (one init per page, job.js's): this card polls once the tab has a key.
  function boot() {
    if (getKey()) poll(() => refresh(document.body.dataset.jobId), 5000);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();
})();
