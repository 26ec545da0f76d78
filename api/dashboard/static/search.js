// Embed and search: one image -> POST /search -> every face drawn on it, each with its aligned crop, its
// embedding to download (JSON, or .npy built here) and its top matches in the chosen index with the
// open-set decision (the best identity, or "unknown" under the model's evaluated threshold).
"use strict";

(function () {
  const { $, el, setChildren, api, rows, fmtNumber, shortId } = window.FJ;
  const { faceFigure, uploadMessage, precheck, dropZone, downloadEmbedding } = window.FJ.faces;
  const { artifactUrl } = window.FJ.artifacts;
  let file = null;
  let localUrl = null;
  let busy = false;
  const indexes = new Map(); // "job:<id>" -> the index job's result

  function showError(message) {
    const err = $("#s-error");
    err.hidden = !message;
    err.textContent = message || "";
  }

  async function loadChoices() {
    const q = (kind) => api("/jobs?" + new URLSearchParams({ kind, status: "succeeded", limit: "100" }).toString());
    const [idx, models] = await Promise.all([q("index"), q("train_embedding")]);
    const options = [el("option", { value: "" }, "none: only embed the faces")];
    for (const j of rows(idx)) {
      const r = j.result || {};
      indexes.set("job:" + j.id, r);
      const name = (j.params && j.params.name) || "index " + shortId(j.id);
      options.push(el("option", { value: "job:" + j.id }, name + " · " + (r.rows ?? "?") + " faces of " +
        (r.identities ?? "?") + " people · " + (r.type || "") + (r.version ? " v" + r.version : "")));
    }
    setChildren($("#s-index"), options);
    if (options.length > 1) $("#s-index").value = options[1].value; // the newest index
    const modelOptions = [el("option", { value: "" }, "the index's own")];
    for (const j of rows(models)) modelOptions.push(el("option", { value: "job:" + j.id }, "job " + shortId(j.id)));
    setChildren($("#s-model"), modelOptions);
    const wanted = new URLSearchParams(location.search).get("index");
    if (wanted && indexes.has(wanted)) $("#s-index").value = wanted;
    onIndex();
  }

  function onIndex() {
    const none = !$("#s-index").value;
    $("#s-model-help").textContent = none ? "Without an index, choose the model that embeds the faces."
      : "What embeds the faces: an index is searched with the model that built it.";
    $("#s-model").options[0].textContent = none ? "— choose a model —" : "the index's own";
  }

  function choose(f) {
    file = f;
    if (localUrl) URL.revokeObjectURL(localUrl);
    localUrl = f ? URL.createObjectURL(f) : null;
    $("#s-name").textContent = f ? f.name + " · " + window.FJ.fmtBytes(f.size) : "";
    $("#s-drop").classList.toggle("chosen", !!f);
  }

  async function answer(body) {
    if (body && Array.isArray(body.faces)) return body;
    $("#s-status").textContent = "still running: waiting for job " + shortId(body.job_id) + "…";
    for (;;) {
      const job = await api("/jobs/" + encodeURIComponent(body.job_id) + "?wait_seconds=20");
      if (job.status === "succeeded") return { job_id: job.id, ...job.result };
      if (job.status === "failed" || job.status === "cancelled") {
        const first = (job.error || job.status).trim().split("\n")[0];
        throw new window.FJ.ApiError(422, "search_failed", "the search job " + job.status + ": " + first, {});
      }
    }
  }

  async function submit(ev) {
    ev.preventDefault();
    if (busy) return;
    showError("");
    const index = $("#s-index").value;
    const model = $("#s-model").value;
    const problem = precheck(file, "an image") || (!index && !model ? "Choose an index, or a model to embed with." : null);
    if (problem) { showError(problem); return; }
    const form = new FormData();
    form.append("image", file, file.name);
    if (index) form.append("index", index);
    if (model) form.append("model", model);
    form.append("k", $("#s-k").value || "5");
    busy = true;
    $("#s-submit").disabled = true;
    $("#s-result").hidden = true;
    $("#s-status").textContent = "detecting, embedding and searching…";
    try {
      const result = await answer(await api("/search?timeout=60", { method: "POST", body: form }));
      $("#s-status").textContent = "";
      if (!result.faces.length) {
        showError("No face found in the image (" + file.name + "): use a photo with a visible face.");
        return;
      }
      render(result);
    } catch (e) {
      $("#s-status").textContent = "";
      const label = () => "the image (" + file.name + ")";
      showError(e.code === "no_face" ? "No face found in " + label() + ": use a photo with a visible face."
        : uploadMessage(e, label));
    } finally {
      busy = false;
      $("#s-submit").disabled = false;
    }
  }

  function sourceThumb(source) {
    const m = /^dataset:([^/]+)\/(.+)$/.exec(source || "");
    if (!m) return null;
    const img = el("img", { class: "match-thumb", alt: source });
    const path = "/datasets/" + encodeURIComponent(m[1]) + "/thumbnails/" + m[2].split("/").map(encodeURIComponent).join("/");
    api(path + "?size=64", { raw: true }).then((r) => r.blob()).then((b) => { img.src = URL.createObjectURL(b); })
      .catch(() => { img.alt = "no thumbnail"; });
    return img;
  }

  function faceCard(face, i, result) {
    const crop = el("img", { class: "crop", alt: "aligned crop of face " + (i + 1) });
    if (face.crop) artifactUrl(result.job_id, { name: face.crop, sha256: result.job_id }).then(({ url }) => { crop.src = url; })
      .catch(() => { crop.alt = "could not load the crop"; });
    const unknown = face.decision === "unknown";
    const stem = "face-" + (i + 1) + "-" + shortId(result.job_id);
    const best = face.matches && face.matches[0];
    const why = best && typeof result.threshold === "number" ? " best similarity " + best.similarity.toFixed(4) +
      (unknown ? " < " : " ≥ ") + "threshold " + fmtNumber(result.threshold) : "";
    const decision = result.index ? el("div", { class: "decision" + (unknown ? " unknown" : ""), "data-decision": face.decision },
      unknown ? "unknown" : face.decision, el("span", { class: "muted small" }, why ? " ·" + why : "")) : null;
    const table = face.matches && face.matches.length ? el("table", { class: "grid compact matches" },
      el("thead", {}, el("tr", {}, el("th", { class: "num" }, "#"), el("th", {}, "Identity"), el("th", { class: "num" }, "Similarity"),
        el("th", {}, "Source"))),
      el("tbody", {}, face.matches.map((m) => el("tr", { "data-rank": m.rank },
        el("td", { class: "num" }, String(m.rank)), el("td", { class: "mono" }, m.identity || "–"),
        el("td", { class: "num mono" }, m.similarity.toFixed(4)),
        el("td", {}, sourceThumb(m.source), " ", el("span", { class: "mono small" }, m.source)))))) : null;
    return el("div", { class: "facecard", "data-face": i },
      el("div", {}, crop, el("div", { class: "muted small" }, "face " + (i + 1) +
        (typeof face.score === "number" ? " · " + (100 * face.score).toFixed(1) + "%" : ""))),
      el("div", {}, decision,
        el("div", { class: "muted small" }, face.embedding.length + "-d embedding"),
        el("div", { class: "downloads" },
          el("button", { type: "button", class: "dl-json", onclick: () => downloadEmbedding(face.embedding, stem, "json") }, "embedding .json"),
          el("button", { type: "button", class: "dl-npy", onclick: () => downloadEmbedding(face.embedding, stem, "npy") }, "embedding .npy")),
        table));
  }

  async function render(result) {
    const faces = result.faces;
    $("#s-summary").textContent = faces.length + (faces.length === 1 ? " face" : " faces") +
      (result.index ? " · index " + result.index.replace("job:", "").slice(0, 8) + " · similarity threshold " +
        (result.threshold === null ? "none (closed set)" : fmtNumber(result.threshold)) : " · embedded only");
    const job = $("#s-job");
    job.textContent = "job " + shortId(result.job_id);
    job.href = "/ui/jobs/" + encodeURIComponent(result.job_id);
    $("#s-result").dataset.jobId = result.job_id;
    const drawn = faces.filter((f) => f.box).map((f, i) => ({ box: f.box, landmarks: f.landmarks, label: String(i + 1),
      cls: f.decision === "unknown" ? "unknown" : "" }));
    const { width, height } = await window.FJ.faces.imageSize(localUrl);
    const view = $("#s-view");
    if (width) setChildren(view, faceFigure(localUrl, width, height, drawn, { alt: file.name, caption: file.name }));
    else setChildren(view, el("p", { class: "muted" }, "This browser cannot show " + file.name + "; the faces are listed here."));
    setChildren($("#s-faces"), faces.map((f, i) => faceCard(f, i, result)));
    $("#s-result").hidden = false;
  }

  function init() {
    dropZone($("#s-drop"), $("#s-file"), choose);
    $("#s-index").addEventListener("change", onIndex);
    $("#s-form").addEventListener("submit", submit);
    loadChoices().catch((e) => showError("Could not list your indexes: " + e.message));
  }

  window.FJ.start(init);
})();
