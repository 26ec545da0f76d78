// The sweep page: children ranked by the sweep's rank_by metric, the grouping over seeds, a link to compare.
"use strict";

(function () {
  const { $, el, setChildren, api, poll, start, statusBadge, shortId, ApiError } = window.FJ;
  const fmt = (v) => (v === null || v === undefined ? "–" : typeof v === "number" ? String(+v.toFixed(4)) : String(v));

  async function refresh(id) {
    let s;
    try {
      s = await api(`/sweeps/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) { $("#not-found").hidden = false; return; }
      throw e;
    }
    $("#sweep").hidden = false;
    $("#s-name").textContent = s.name || s.kind;
    setChildren($("#s-status"), statusBadge(s.status));
    $("#s-rank-by").textContent = (s.rank_by || "–") + (s.rank_mode === "min" ? " (lowest first)" : " (highest first)");
    $("#s-compare").href = s.compare_url;
    const ranked = s.children.filter((c) => c.rank !== null).length;
    $("#s-note").textContent = `${ranked} of ${s.children.length} ranked`;
    setChildren($("#s-children thead"), el("tr", {}, el("th", { class: "num" }, "Rank"), el("th", {}, "Job"),
      s.varied.map((n) => el("th", { class: "mono" }, n)), el("th", { class: "num" }, s.rank_by || "value"),
      el("th", {}, "Status"), el("th", {}, "Note")));
    setChildren($("#s-children tbody"), s.children.map((c) => el("tr", { class: c.rank === 1 ? "best" : null,
      dataset: { id: c.id, rank: c.rank === null ? "" : String(c.rank) } },
    el("td", { class: "num" }, c.rank === null ? "–" : c.rank),
    el("td", { class: "mono" }, el("a", { href: `/ui/jobs/${c.id}` }, shortId(c.id))),
    s.varied.map((n) => el("td", { class: "mono" }, fmt(c.params[n]))),
    el("td", { class: "num value" }, fmt(c.value)), el("td", {}, statusBadge(c)),
    el("td", { class: "small muted" }, c.stop_reason || ""))));
    const names = s.varied.filter((n) => s.groups.length && n in s.groups[0].params);
    setChildren($("#s-groups thead"), el("tr", {}, names.map((n) => el("th", { class: "mono" }, n)),
      el("th", { class: "num" }, "n"), el("th", { class: "num" }, "mean"), el("th", { class: "num" }, "std")));
    setChildren($("#s-groups tbody"), s.groups.map((g) => el("tr", {}, names.map((n) => el("td", { class: "mono" }, fmt(g.params[n]))),
      el("td", { class: "num" }, g.n), el("td", { class: "num" }, fmt(g.mean)), el("td", { class: "num" }, fmt(g.std)))));
  }

  start(() => {
    const id = document.body.dataset.sweepId;
    poll(() => refresh(id));
  });
})();
