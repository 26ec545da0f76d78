// The pipeline page: its steps as an SVG graph (boxes coloured by status, arrows from upstreams), and a table.
"use strict";

(function () {
  const { $, el, setChildren, api, poll, start, statusBadge, shortId, ApiError } = window.FJ;
  const SVG = "http://www.w3.org/2000/svg";
  const W = 170, H = 44, GX = 60, GY = 22;

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  // Column = longest path from a step without upstreams; row = order within the column.
  function layout(steps) {
    const byId = new Map(steps.map((s) => [s.id, s]));
    const depth = new Map();
    const d = (s) => {
      if (depth.has(s.id)) return depth.get(s.id);
      const ups = s.upstreams.filter((u) => byId.has(u));
      const v = ups.length ? 1 + Math.max(...ups.map((u) => d(byId.get(u)))) : 0;
      depth.set(s.id, v);
      return v;
    };
    const rows = new Map();
    const pos = new Map();
    for (const s of steps) {
      const col = d(s);
      const row = rows.get(col) || 0;
      rows.set(col, row + 1);
      pos.set(s.id, { x: 10 + col * (W + GX), y: 10 + row * (H + GY) });
    }
    return pos;
  }

  function draw(steps) {
    const pos = layout(steps);
    const width = Math.max(...[...pos.values()].map((p) => p.x)) + W + 10;
    const height = Math.max(...[...pos.values()].map((p) => p.y)) + H + 10;
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "pipeline graph" });
    root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto" }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a94a3" }))));
    for (const s of steps) {
      for (const u of s.upstreams) {
        const a = pos.get(u), b = pos.get(s.id);
        if (!a) continue;
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
        root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)",
          "data-from": u, "data-to": s.id }));
      }
    }
    for (const s of steps) {
      const p = pos.get(s.id);
      const link = svg("a", { href: `/ui/jobs/${s.id}` },
        svg("rect", { x: p.x, y: p.y, width: W, height: H, class: "n-" + s.status, "data-step": s.name || s.id }),
        svg("text", { x: p.x + 10, y: p.y + 18 }, (s.name || shortId(s.id)) + " · " + s.kind),
        svg("text", { x: p.x + 10, y: p.y + 34 }, s.status));
      root.append(link);
    }
    return root;
  }

  async function refresh(id) {
    let p;
    try {
      p = await api(`/pipelines/${encodeURIComponent(id)}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) { $("#not-found").hidden = false; return; }
      throw e;
    }
    $("#pipeline").hidden = false;
    $("#p-name").textContent = p.name;
    setChildren($("#p-status"), statusBadge(p.status));
    setChildren($("#p-graph"), draw(p.steps));
    const names = new Map(p.steps.map((s) => [s.id, s.name]));
    setChildren($("#p-steps tbody"), p.steps.map((s) => el("tr", {},
      el("td", {}, s.name), el("td", {}, s.kind), el("td", {}, statusBadge(s)),
      el("td", { class: "mono" }, el("a", { href: `/ui/jobs/${s.id}` }, shortId(s.id))),
      el("td", {}, s.upstreams.map((u) => names.get(u) || shortId(u)).join(", ")))));
  }

  start(() => {
    const id = document.body.dataset.pipelineId;
    poll(() => refresh(id));
  });
  window.FJGraph = { draw };
})();
