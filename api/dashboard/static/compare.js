// The compare page (/ui/compare?ids=a,b,c): GET /compare once, then tables, overlaid curves and plots.
// The URL is the whole state, so it can be shared; the exports are the same route as CSV or JSON.
"use strict";

(function () {
  const { $, el, setChildren, api, fmtNumber, shortId } = window.FJ;

  function idsFromUrl() {
    const raw = new URLSearchParams(location.search).get("ids") || "";
    return raw.split(",").map((s) => s.trim()).filter(Boolean);
  }

  function label(job) { return job.name ? job.name + " (" + shortId(job.id) + ")" : shortId(job.id) + " " + job.kind; }

  function cell(v) {
    if (v === null || v === undefined) return el("td", { class: "muted" }, "–");
    if (typeof v === "number") return el("td", { class: "num mono" }, fmtNumber(v));
    return el("td", { class: "mono" }, typeof v === "object" ? JSON.stringify(v) : String(v));
  }

  function swatch(i) {
    const ns = "http://www.w3.org/2000/svg";
    const s = document.createElementNS(ns, "svg");
    s.setAttribute("width", "10");
    s.setAttribute("height", "10");
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("width", "10");
    r.setAttribute("height", "10");
    r.setAttribute("fill", window.FJ.chartColour(i));
    s.append(r);
    return s;
  }

  function jobHead(data) {
    return el("tr", {}, el("th", {}, ""), ...data.jobs.map((j, i) =>
      el("th", { class: "mono" }, swatch(i), " ", el("a", { href: "/ui/jobs/" + encodeURIComponent(j.id) }, label(j)))));
  }

  function renderJobs(data) {
    const rows = [["kind", (j) => j.kind], ["status", (j) => j.status], ["tags", (j) => j.tags.join(" ") || null]];
    setChildren($("#c-jobs"), jobHead(data), rows.map(([name, f]) =>
      el("tr", {}, el("th", { class: "mono" }, name), data.jobs.map((j) => cell(f(j))))));
  }

  function renderParams(data) {
    const keys = Object.keys(data.params_diff);
    setChildren($("#c-params"), jobHead(data), keys.length ? keys.map((k) =>
      el("tr", { "data-param": k }, el("th", { class: "mono" }, k), data.params_diff[k].map(cell))) :
      el("tr", {}, el("td", { class: "muted" }, "Every param is the same.")));
    const same = Object.entries(data.params_same);
    $("#c-same-summary").textContent = same.length + " params all share";
    setChildren($("#c-same"), same.map(([k, v]) => el("tr", {}, el("th", { class: "mono" }, k), cell(v))));
  }

  function renderCharts(data) {
    const names = [...new Set(data.jobs.flatMap((j) => Object.keys(j.series)))].sort();
    setChildren($("#c-charts"), names.map((name) => window.FJ.multiLineChart(name,
      data.jobs.map((j) => ({ label: label(j), points: j.series[name] || [] })))));
    $("#c-charts-note").textContent = names.length ? "One chart per metric, one line per job (from progress events)."
      : "No job reported progress metrics.";
  }

  function renderFinal(data) {
    const names = [...new Set(data.jobs.flatMap((j) => Object.keys(j.final)))].sort();
    setChildren($("#c-final"), jobHead(data), names.map((m) =>
      el("tr", { "data-metric": m }, el("th", { class: "mono" }, m), data.jobs.map((j) => cell(j.final[m])))));
  }

  function renderGroups(data) {
    const params = Object.keys(data.params_diff).filter((k) => k.split(".").pop() !== "seed");
    const metrics = [...new Set(data.groups.flatMap((g) => Object.keys(g.metrics)))].sort();
    const head = el("tr", {}, params.map((p) => el("th", { class: "mono" }, p)), el("th", { class: "num" }, "n"),
      el("th", {}, "seeds"), metrics.map((m) => el("th", { class: "num mono" }, m + " mean ± std")));
    const body = data.groups.map((g) => el("tr", {}, params.map((p) => cell(g.params[p])), cell(g.n),
      cell(g.seeds.join(", ")), metrics.map((m) => {
        const s = g.metrics[m];
        if (!s || s.mean === null) return cell(null);
        return el("td", { class: "num mono", title: "n = " + s.n },
          fmtNumber(s.mean) + (s.std === null ? "" : " ± " + fmtNumber(s.std)));
      })));
    setChildren($("#c-groups"), head, body);
    $("#c-groups-note").textContent = "Grouped by " + data.group_by + "; std: " + data.std + ".";
  }

  function renderPlots(data) {
    const cols = data.jobs.map((j, i) => el("div", { class: "plot-col" },
      el("h3", { class: "small" }, swatch(i), " ", label(j)),
      j.plots.length ? j.plots.map((p) => {
        const img = el("img", { alt: p.name, title: p.name, class: "plot", "data-name": p.name });
        window.FJ.artifacts.showImage(img, j.id, p);
        return el("figure", {}, img, el("figcaption", { class: "small mono" }, p.name));
      }) : el("p", { class: "muted small" }, "no plots")));
    setChildren($("#c-plots"), cols);
  }

  async function init() {
    const ids = idsFromUrl();
    const q = "ids=" + encodeURIComponent(ids.join(","));
    $("#c-csv").href = "/compare?" + q + "&format=csv";
    $("#c-groups-csv").href = "/compare?" + q + "&format=csv&table=groups";
    $("#c-json").href = "/compare?" + q + "&download=true";
    for (const [sel, suffix, name] of [["#c-csv", "&format=csv", "compare-jobs.csv"],
      ["#c-groups-csv", "&format=csv&table=groups", "compare-groups.csv"], ["#c-json", "&download=true", "compare.json"]]) {
      // The export routes need the key header: fetch, then save the blob.
      $(sel).addEventListener("click", async (ev) => {
        ev.preventDefault();
        const resp = await api("/compare?" + q + suffix, { raw: true });
        const url = URL.createObjectURL(await resp.blob());
        const a = el("a", { href: url, download: name, hidden: true });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
      });
    }
    if (!ids.length) {
      $("#c-error").hidden = false;
      $("#c-error").textContent = "No jobs to compare: tick jobs in the jobs table and press Compare selected.";
      return;
    }
    let data;
    try {
      data = await api("/compare?" + q);
    } catch (e) {
      $("#c-error").hidden = false;
      $("#c-error").textContent = e.message;
      return;
    }
    $("#c-count").textContent = data.jobs.length + " jobs";
    renderJobs(data);
    renderParams(data);
    renderCharts(data);
    renderFinal(data);
    renderGroups(data);
    renderPlots(data);
    $("#compare").hidden = false;
    document.body.dataset.ready = "1";
  }

  window.FJ.start(init);
})();
