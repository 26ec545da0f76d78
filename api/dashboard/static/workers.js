// Workers: host, device, queues, current job and heartbeat; stale ones are marked. Polled every 5 s.
"use strict";

(function () {
  const { $, el, setChildren, api, rows, poll, fmtAgo, fmtTime, parseTime, shortId } = window.FJ;

  function state(w) {
    if (w.stale) return el("span", { class: "badge s-failed", title: "no heartbeat for too long: dead or cut off" }, "stale");
    if (w.draining) return el("span", { class: "badge s-cancelled" }, "draining");
    if (w.busy) return el("span", { class: "badge s-running" }, "busy");
    return el("span", { class: "badge s-queued" }, "idle");
  }

  // The latest utilisation sample of the worker's process tree (its heartbeat's): CPU, memory, GPU where NVML answers.
  function loadText(load) {
    if (!load) return "–";
    const parts = ["cpu " + Math.round(load["sys/cpu_pct"] || 0) + "%", "mem " + Math.round(load["sys/rss_mb"] || 0) + " MiB"];
    if (load["sys/gpu_util_pct"] !== undefined) parts.push("gpu " + Math.round(load["sys/gpu_util_pct"]) + "%");
    if (load["sys/gpu_mem_mb"] !== undefined) parts.push("gpu mem " + Math.round(load["sys/gpu_mem_mb"]) + " MiB");
    return parts.join(" · ");
  }

  async function load() {
    const workers = rows(await api("/workers"));
    setChildren($("#workers-table tbody"), workers.map((w) => {
      const beat = parseTime(w.last_heartbeat);
      const started = parseTime(w.started_at);
      return el("tr", { class: w.stale ? "stale" : "", "data-id": w.id },
        el("td", { class: "mono" }, w.id),
        el("td", {}, w.hostname + (w.pid ? " " : ""), w.pid ? el("span", { class: "muted small" }, "pid " + w.pid) : null),
        el("td", { class: "mono small" }, w.device),
        el("td", {}, String(w.queues).split(",").filter(Boolean).map((q) => el("span", { class: "tag" }, q.trim()))),
        el("td", {}, state(w)),
        el("td", { class: "mono" }, w.current_job_id ?
          el("a", { href: "/ui/jobs/" + encodeURIComponent(w.current_job_id), title: w.current_job_id },
            shortId(w.current_job_id)) : "–"),
        el("td", { title: fmtTime(beat), class: w.stale ? "bad" : "" }, fmtAgo(beat)),
        el("td", { title: fmtTime(started) }, fmtAgo(started)),
        el("td", { class: "mono small" }, loadText(w.load)));
    }));
    $("#w-empty").hidden = workers.length > 0;
    $("#workers-table").hidden = workers.length === 0;
    const stale = workers.filter((w) => w.stale).length;
    $("#w-count").textContent = workers.length + " worker" + (workers.length === 1 ? "" : "s") +
      (stale ? " · " + stale + " stale" : "");
  }

  window.FJ.start(() => poll(load, 5000));
})();
