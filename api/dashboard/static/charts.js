// Small inline-SVG line charts, one per metric, drawn from a job's progress events. No library.
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 360;
  const H = 150;
  const PAD = { left: 52, right: 10, top: 8, bottom: 22 };
  const MAX_POINTS = 600;

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Keep at most MAX_POINTS: per bucket of neighbouring points keep its min and max, so spikes stay visible.
  function downsample(points) {
    if (points.length <= MAX_POINTS) return points;
    const buckets = MAX_POINTS / 2;
    const size = points.length / buckets;
    const out = [];
    for (let b = 0; b < buckets; b++) {
      const lo = Math.floor(b * size);
      const hi = Math.min(points.length, Math.floor((b + 1) * size));
      let min = points[lo];
      let max = points[lo];
      for (let i = lo; i < hi; i++) {
        if (points[i][1] < min[1]) min = points[i];
        if (points[i][1] > max[1]) max = points[i];
      }
      if (min[0] <= max[0]) out.push(min, max); else out.push(max, min);
    }
    return out;
  }

  function niceRange(lo, hi) {
    if (lo === hi) { const d = Math.abs(lo) * 0.05 || 1; return [lo - d, hi + d]; }
    const pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  // A chart for points [[step, value], ...] sorted by step. Log scale when the values span 3+ decades.
  // `xName` labels the x axis: "step" (training metrics) or "s" (utilisation, seconds into the attempt).
  function lineChart(name, points, xName) {
    const xn = xName || "step";
    const fmt = window.FJ.fmtNumber;
    const finite = points.filter((p) => isFinite(p[1]));
    const figure = document.createElement("figure");
    figure.className = "chart";
    figure.dataset.metric = name;
    const last = finite.length ? finite[finite.length - 1] : null;
    const cap = document.createElement("figcaption");
    const title = document.createElement("span");
    title.className = "mono";
    title.textContent = name;
    const value = document.createElement("span");
    value.className = "num last";
    value.textContent = last ? fmt(last[1]) : "–";
    cap.append(title, value);
    figure.append(cap);
    if (finite.length === 0) return figure;

    const values = finite.map((p) => p[1]);
    const vmin = Math.min(...values);
    const vmax = Math.max(...values);
    const log = vmin > 0 && vmax / vmin >= 1000;
    const tf = log ? Math.log10 : (v) => v;
    const [y0, y1] = niceRange(tf(vmin), tf(vmax));
    const xs0 = finite[0][0];
    const xs1 = finite[finite.length - 1][0];
    const xspan = xs1 - xs0 || 1;
    const pw = W - PAD.left - PAD.right;
    const ph = H - PAD.top - PAD.bottom;
    const X = (s) => PAD.left + ((s - xs0) / xspan) * pw;
    const Y = (v) => PAD.top + (1 - (tf(v) - y0) / (y1 - y0)) * ph;

    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img",
      "aria-label": `${name}: ${finite.length} points, last ${fmt(last[1])}` });
    // Grid lines and y labels at the bottom, middle and top of the data.
    const ticks = [y0 + (y1 - y0) * 0.05, (y0 + y1) / 2, y1 - (y1 - y0) * 0.05];
    for (const t of ticks) {
      const v = log ? 10 ** t : t;
      const y = Y(v);
      root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y, class: "grid" }));
      root.append(svg("text", { x: PAD.left - 6, y: y + 3.5, class: "ylab", "text-anchor": "end" }, fmt(v)));
    }
    root.append(svg("text", { x: PAD.left, y: H - 6, class: "xlab" }, xn + " " + xs0));
    root.append(svg("text", { x: W - PAD.right, y: H - 6, class: "xlab", "text-anchor": "end" }, String(xs1)));
    if (log) root.append(svg("text", { x: PAD.left + pw / 2, y: H - 6, class: "xlab", "text-anchor": "middle" }, "log scale"));

    const shown = downsample(finite);
    const d = shown.map((p, i) => (i ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join("");
    root.append(svg("path", { d, class: "line" }));
    if (shown.length === 1) root.append(svg("circle", { cx: X(shown[0][0]), cy: Y(shown[0][1]), r: 2.5, class: "dot" }));

    // Hover: the nearest recorded point, with its step and value.
    const cursor = svg("g", { class: "hover", visibility: "hidden" });
    const vline = svg("line", { y1: PAD.top, y2: H - PAD.bottom, class: "vline" });
    const dot = svg("circle", { r: 3, class: "dot" });
    const label = svg("text", { y: PAD.top + 10, class: "hlab" });
    cursor.append(vline, dot, label);
    root.append(cursor);
    root.addEventListener("mousemove", (ev) => {
      const box = root.getBoundingClientRect();
      const sx = ((ev.clientX - box.left) / box.width) * W;
      const step = xs0 + ((sx - PAD.left) / pw) * xspan;
      let lo = 0;
      let hi = finite.length - 1;
      while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (finite[mid][0] < step) lo = mid; else hi = mid; }
      const p = Math.abs(finite[lo][0] - step) <= Math.abs(finite[hi][0] - step) ? finite[lo] : finite[hi];
      const x = X(p[0]);
      vline.setAttribute("x1", x);
      vline.setAttribute("x2", x);
      dot.setAttribute("cx", x);
      dot.setAttribute("cy", Y(p[1]));
      label.textContent = xn + " " + p[0] + ": " + fmt(p[1]);
      const right = x > PAD.left + pw / 2;
      label.setAttribute("x", right ? x - 5 : x + 5);
      label.setAttribute("text-anchor", right ? "end" : "start");
      cursor.setAttribute("visibility", "visible");
    });
    root.addEventListener("mouseleave", () => cursor.setAttribute("visibility", "hidden"));
    figure.append(root);
    return figure;
  }

  // Several series on one chart (the compare page): [{label, points: [[step, value], ...]}, ...], one colour
  // each, a legend by label. Same axes and log rule as lineChart; colours are SVG attributes (the CSP allows them).
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22"];

  function colour(i) { return COLOURS[i % COLOURS.length]; }

  function multiLineChart(name, series) {
    const fmt = window.FJ.fmtNumber;
    const lines = series.map((s, i) => ({ ...s, colour: colour(i), finite: s.points.filter((p) => p[1] !== null && isFinite(p[1])) }));
    const all = lines.flatMap((l) => l.finite);
    const figure = document.createElement("figure");
    figure.className = "chart multi";
    figure.dataset.metric = name;
    figure.dataset.series = String(lines.filter((l) => l.finite.length).length);
    const cap = document.createElement("figcaption");
    const title = document.createElement("span");
    title.className = "mono";
    title.textContent = name;
    cap.append(title);
    figure.append(cap);
    if (all.length === 0) return figure;
    const values = all.map((p) => p[1]);
    const steps = all.map((p) => p[0]);
    const vmin = Math.min(...values);
    const vmax = Math.max(...values);
    const log = vmin > 0 && vmax / vmin >= 1000;
    const tf = log ? Math.log10 : (v) => v;
    const [y0, y1] = niceRange(tf(vmin), tf(vmax));
    const xs0 = Math.min(...steps);
    const xs1 = Math.max(...steps);
    const xspan = xs1 - xs0 || 1;
    const pw = W - PAD.left - PAD.right;
    const ph = H - PAD.top - PAD.bottom;
    const X = (s) => PAD.left + ((s - xs0) / xspan) * pw;
    const Y = (v) => PAD.top + (1 - (tf(v) - y0) / (y1 - y0)) * ph;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img",
      "aria-label": `${name}: ${lines.length} series` });
    for (const t of [y0 + (y1 - y0) * 0.05, (y0 + y1) / 2, y1 - (y1 - y0) * 0.05]) {
      const v = log ? 10 ** t : t;
      root.append(svg("line", { x1: PAD.left, x2: W - PAD.right, y1: Y(v), y2: Y(v), class: "grid" }));
      root.append(svg("text", { x: PAD.left - 6, y: Y(v) + 3.5, class: "ylab", "text-anchor": "end" }, fmt(v)));
    }
    root.append(svg("text", { x: PAD.left, y: H - 6, class: "xlab" }, "step " + xs0));
    root.append(svg("text", { x: W - PAD.right, y: H - 6, class: "xlab", "text-anchor": "end" }, String(xs1)));
    if (log) root.append(svg("text", { x: PAD.left + pw / 2, y: H - 6, class: "xlab", "text-anchor": "middle" }, "log scale"));
    for (const l of lines) {
      if (!l.finite.length) continue;
      const shown = downsample(l.finite);
      const d = shown.map((p, i) => (i ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join("");
      const path = svg("path", { d, class: "series", fill: "none", stroke: l.colour, "stroke-width": 1.6 });
      path.dataset.label = l.label;
      root.append(path);
      if (shown.length === 1) root.append(svg("circle", { cx: X(shown[0][0]), cy: Y(shown[0][1]), r: 3, fill: l.colour }));
    }
    figure.append(root);
    const legend = document.createElement("div");
    legend.className = "legend small";
    for (const l of lines) {
      const item = document.createElement("span");
      item.className = "legend-item";
      const sw = svg("svg", { width: 12, height: 8, class: "swatch" });
      sw.append(svg("rect", { width: 12, height: 8, fill: l.colour }));
      const last = l.finite.length ? l.finite[l.finite.length - 1][1] : null;
      item.append(sw, document.createTextNode(" " + l.label + (last === null ? " (no points)" : " " + fmt(last))));
      legend.append(item);
    }
    figure.append(legend);
    return figure;
  }

  window.FJ.lineChart = lineChart;
  window.FJ.multiLineChart = multiLineChart;
  window.FJ.chartColour = colour;
})();
