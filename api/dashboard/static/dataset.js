// One dataset: thumbnails per identity, a page at a time (GET /datasets/{id}/files), with a finished embed
// job's detections drawn on them (box + landmarks) and the files it could not use listed with reasons.
"use strict";

(function () {
  const { $, el, setChildren, api, rows, toast, fmtBytes, shortId } = window.FJ;
  const { faceFigure } = window.FJ.faces;
  const PAGE = 48;
  const THUMB = 160;
  const state = { id: document.body.dataset.datasetId, offset: 0, total: 0, token: 0, failOffset: 0 };
  const blobs = [];

  function base() { return "/datasets/" + encodeURIComponent(state.id); }

  function query(extra) {
    const q = new URLSearchParams(extra);
    const identity = $("#d-identity").value;
    const embed = $("#d-embed").value;
    if (identity) q.set("identity", identity);
    if (embed) q.set("embed", embed);
    return q;
  }

  // Fetch thumbnails a few at a time (with the key, so into blob URLs).
  async function fillThumbs(items, token) {
    let next = 0;
    async function worker() {
      while (next < items.length && token === state.token) {
        const { file, holder } = items[next++];
        try {
          const resp = await api(file.thumbnail + "?size=" + THUMB, { raw: true });
          const url = URL.createObjectURL(await resp.blob());
          blobs.push(url);
          if (token !== state.token) return;
          drawThumb(holder, file, url);
        } catch (e) {
          setChildren(holder, el("div", { class: "nothumb", title: e.message }, "no thumbnail"));
        }
      }
    }
    await Promise.all([worker(), worker(), worker(), worker()]);
  }

  function drawThumb(holder, file, url) {
    const faces = file.faces || [];
    const first = faces[0];
    const fig = (w, h) => faceFigure(url, w, h, faces.map((f) => ({ box: f.box, landmarks: f.landmarks,
      label: faces.length > 1 ? String(f.face + 1) : null })), { small: true, alt: file.path });
    if (first && first.image_width) { setChildren(holder, fig(first.image_width, first.image_height)); return; }
    window.FJ.faces.imageSize(url).then(({ width, height }) => setChildren(holder, fig(width || 1, height || 1)));
  }

  function thumbCard(file) {
    const holder = el("div", { class: "fv-holder" }, el("div", { class: "fv-frame small" }));
    const faces = file.faces;
    let note = null;
    if (file.failure) {
      note = el("div", { class: "bad", title: file.failure.detail }, file.failure.reason);
    } else if (faces) {
      note = el("div", { class: "muted" }, faces.length + (faces.length === 1 ? " face" : " faces"));
    }
    const card = el("figure", { class: "thumb" + (file.failure ? " failed" : ""), "data-path": file.path,
      "data-faces": faces ? faces.length : "" }, holder,
    el("figcaption", {}, el("div", { class: "mono" }, file.path.split("/").pop()), note));
    return { card, holder };
  }

  async function load() {
    const token = ++state.token;
    while (blobs.length) URL.revokeObjectURL(blobs.pop());
    const failed = $("#d-failed").checked && $("#d-embed").value;
    const q = query({ offset: String(state.offset), limit: String(PAGE) });
    if (failed) q.set("failed", "true");
    const err = $("#d-error");
    let page;
    try {
      page = await api(base() + "/files?" + q.toString());
      err.hidden = true;
    } catch (e) {
      err.hidden = false;
      err.textContent = "Could not list the files: " + e.message;
      return;
    }
    if (token !== state.token) return;
    state.total = page.total;
    fillIdentities(page.identities);
    renderSummary(page.embed);
    const groups = new Map();
    const items = [];
    for (const file of page.data) {
      if (!groups.has(file.identity)) groups.set(file.identity, []);
      const made = thumbCard(file);
      groups.get(file.identity).push(made.card);
      items.push({ file, holder: made.holder });
    }
    const counts = Object.fromEntries(page.identities.map((i) => [i.name, i.files]));
    setChildren($("#d-groups"), [...groups.entries()].map(([name, cards]) => el("section", { class: "identity", "data-identity": name },
      el("h3", {}, name || "(flat dataset)", el("span", { class: "muted small" }, " · " + (counts[name] || cards.length) + " files")),
      el("div", { class: "thumbs" }, cards))));
    $("#d-empty").hidden = page.data.length > 0;
    $("#d-range").textContent = page.total ? (page.offset + 1) + "–" + (page.offset + page.data.length) + " of " + page.total : "";
    $("#d-prev").disabled = page.offset === 0;
    $("#d-next").disabled = page.next_offset === null;
    await fillThumbs(items, token);
  }

  function fillIdentities(identities) {
    const select = $("#d-identity");
    if (select.options.length > 1 || !identities.length || (identities.length === 1 && !identities[0].name)) {
      select.disabled = select.options.length <= 1;
      return;
    }
    for (const i of identities) select.append(el("option", { value: i.name }, i.name + " (" + i.files + ")"));
    const wanted = new URLSearchParams(location.search).get("identity");
    if (wanted) select.value = wanted;
  }

  function renderSummary(embed) {
    const box = $("#d-embed-summary");
    if (!embed) { box.textContent = ""; $("#d-failures-card").hidden = true; return; }
    const reasons = Object.entries(embed.failure_reasons).map(([r, n]) => r + " " + n).join(", ");
    box.textContent = "embed job " + shortId(embed.job_id) + ": " + embed.faces + " faces in " + embed.files + " files · " +
      embed.failures + " failures" + (reasons ? " (" + reasons + ")" : "");
    $("#d-failures-count").textContent = "(" + embed.failures + ")";
    $("#d-failures-card").hidden = embed.failures === 0;
  }

  async function loadFailures(more) {
    const embed = $("#d-embed").value;
    if (!embed) return;
    if (!more) state.failOffset = 0;
    const q = new URLSearchParams({ embed, failed: "true", offset: String(state.failOffset), limit: "50" });
    const page = await api(base() + "/files?" + q.toString());
    const body = $("#d-failures tbody");
    const trs = page.data.map((f) => el("tr", { "data-path": f.path }, el("td", { class: "mono" }, f.path),
      el("td", {}, el("span", { class: "tag t-error" }, f.failure.reason)), el("td", {}, f.failure.detail)));
    if (more) body.append(...trs);
    else setChildren(body, trs);
    state.failOffset = page.next_offset || 0;
    $("#d-failures-more").hidden = page.next_offset === null;
  }

  async function loadEmbedJobs() {
    const q = new URLSearchParams({ kind: "embed", status: "succeeded", limit: "100" });
    const jobs = rows(await api("/jobs?" + q.toString())).filter((j) => j.params && j.params.dataset === "dataset:" + state.id);
    const select = $("#d-embed");
    for (const j of jobs) {
      const r = j.result || {};
      select.append(el("option", { value: "job:" + j.id }, "embed " + shortId(j.id) +
        (typeof r.faces === "number" ? " · " + r.faces + " faces, " + r.failures + " failures" : "")));
    }
    const wanted = new URLSearchParams(location.search).get("embed");
    if (wanted && jobs.some((j) => "job:" + j.id === wanted || j.id === wanted)) select.value = wanted.startsWith("job:") ? wanted : "job:" + wanted;
    else if (jobs.length) select.value = "job:" + jobs[0].id; // the newest finished one
  }

  async function init() {
    let ds;
    try {
      ds = await api(base());
    } catch (e) {
      if (e.status === 404) { $("#d-notfound").hidden = false; return; }
      toast("Could not load the dataset: " + e.message, "bad");
      return;
    }
    $("#d-title").textContent = ds.name;
    $("#d-ref").textContent = ds.ref;
    $("#d-counts").textContent = ds.num_files + " files · " + (ds.layout === "flat" ? "flat" : ds.num_identities + " identities") +
      " · " + fmtBytes(ds.size_bytes);
    document.title = ds.name + " · facejobs";
    $("#d-body").hidden = false;
    await loadEmbedJobs().catch((e) => toast("Could not list embed jobs: " + e.message, "bad"));
    const reload = () => { state.offset = 0; load(); };
    $("#d-identity").addEventListener("change", reload);
    $("#d-failed").addEventListener("change", reload);
    $("#d-embed").addEventListener("change", () => { reload(); loadFailures(false).catch(() => {}); });
    $("#d-prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); load(); });
    $("#d-next").addEventListener("click", () => { state.offset += PAGE; load(); });
    $("#d-failures-more").addEventListener("click", () => loadFailures(true).catch((e) => toast(e.message, "bad")));
    await load();
    await loadFailures(false).catch((e) => toast("Could not list failures: " + e.message, "bad"));
  }

  window.FJ.start(init);
})();
