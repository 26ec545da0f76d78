// Verify: pick a model with an evaluation, drop two images, POST /verify; each face drawn on its image
// (box + 5 landmarks), the aligned crops, the distance against the model's threshold, its accuracy there.
"use strict";

(function () {
  const { $, el, setChildren, api, rows, fmtNumber, shortId } = window.FJ;
  const { faceFigure, uploadMessage, precheck, dropZone } = window.FJ.faces;
  const { artifactUrl } = window.FJ.artifacts;
  const SIDES = { a: "image A", b: "image B" };
  const files = { a: null, b: null };
  const local = { a: null, b: null }; // blob URLs of the chosen files (shown at once, if the browser decodes them)
  let busy = false;

  function fieldLabel(name) {
    const side = name === "image_a" ? "a" : name === "image_b" ? "b" : null;
    return side ? SIDES[side] + (files[side] ? " (" + files[side].name + ")" : "") : null;
  }

  function modelLabel(job) {
    const r = job.result || {};
    const cfg = (job.params && (job.params.backbone || job.params.dataset)) || "";
    const acc = typeof r.accuracy === "number" ? " · accuracy " + (100 * r.accuracy).toFixed(1) + "%" : "";
    return "job " + shortId(job.id) + (cfg ? " · " + cfg : "") + acc +
      (typeof r.threshold === "number" ? " · threshold: distance ≤ " + fmtNumber(1 - r.threshold) : "");
  }

  async function loadModels() {
    const q = new URLSearchParams({ kind: "train_embedding", status: "succeeded", limit: "100" });
    const [jobs, models] = await Promise.all([api("/jobs?" + q.toString()), api("/models?limit=100").catch(() => null)]);
    const evaluated = rows(jobs).filter((j) => j.result && typeof j.result.threshold === "number");
    const options = evaluated.map((j) => el("option", { value: "job:" + j.id }, modelLabel(j)));
    for (const m of rows(models).filter((x) => x.kind === "facenet")) {
      for (const variant of ["vggface2", "casia-webface"]) {
        options.push(el("option", { value: "facenet:" + variant, "data-weights": "model:" + m.id },
          "FaceNet " + variant + " · " + m.name + " (" + shortId(m.id) + ")"));
      }
    }
    const select = $("#v-model");
    if (!options.length) {
      setChildren(select, el("option", { value: "" }, "no model with an evaluation yet"));
      $("#v-model-help").textContent = "Train one first: a train_embedding job records its threshold and accuracy.";
      return;
    }
    setChildren(select, options);
    const wanted = new URLSearchParams(location.search).get("model");
    if (wanted && options.some((o) => o.value === wanted)) select.value = wanted;
    onModel();
  }

  function onModel() {
    const opt = $("#v-model").selectedOptions[0];
    const facenet = !!(opt && opt.dataset.weights);
    $("#v-threshold-row").hidden = !facenet;
    $("#v-threshold-label").hidden = !facenet;
    $("#v-threshold").required = facenet;
  }

  function choose(side, file) {
    files[side] = file;
    if (local[side]) URL.revokeObjectURL(local[side]);
    local[side] = file ? URL.createObjectURL(file) : null;
    $("#v-name-" + side).textContent = file ? file.name + " · " + window.FJ.fmtBytes(file.size) : "";
    $("#v-drop-" + side).classList.toggle("chosen", !!file);
  }

  function showError(message) {
    const err = $("#v-error");
    err.hidden = !message;
    err.textContent = message || "";
  }

  // The job's answer: from POST /verify at once, or (202: still running) from the job when it ends.
  async function answer(body) {
    if (body && typeof body.same === "boolean") return body;
    $("#v-status").textContent = "still running: waiting for job " + shortId(body.job_id) + "…";
    for (;;) {
      const job = await api("/jobs/" + encodeURIComponent(body.job_id) + "?wait_seconds=20");
      if (job.status === "succeeded") return { job_id: job.id, ...job.result };
      if (job.status === "failed" || job.status === "cancelled") {
        const first = (job.error || job.status).trim().split("\n")[0];
        throw new window.FJ.ApiError(422, "verify_failed", "the verify job " + job.status + ": " + first, { job_id: job.id });
      }
    }
  }

  async function submit(ev) {
    ev.preventDefault();
    if (busy) return;
    showError("");
    const model = $("#v-model").value;
    const problems = [model ? null : "Choose a model."].concat(["a", "b"].map((s) => precheck(files[s], SIDES[s])));
    const first = problems.find((p) => p);
    if (first) { showError(first); return; }
    const form = new FormData();
    form.append("image_a", files.a, files.a.name);
    form.append("image_b", files.b, files.b.name);
    form.append("model", model);
    const opt = $("#v-model").selectedOptions[0];
    if (opt.dataset.weights) {
      form.append("weights", opt.dataset.weights);
      form.append("threshold", $("#v-threshold").value);
    }
    busy = true;
    $("#v-submit").disabled = true;
    $("#v-status").textContent = "detecting, aligning and embedding both faces…";
    $("#v-result").hidden = true;
    try {
      const result = await answer(await api("/verify?timeout=60", { method: "POST", body: form }));
      render(result);
      $("#v-status").textContent = "";
    } catch (e) {
      $("#v-status").textContent = "";
      showError(uploadMessage(e, fieldLabel));
    } finally {
      busy = false;
      $("#v-submit").disabled = false;
    }
  }

  async function showArtifact(img, jobId, name) {
    const { url } = await artifactUrl(jobId, { name, sha256: jobId });
    img.src = url;
  }

  function render(r) {
    const same = r.distance <= r.threshold;
    const verdict = $("#v-verdict");
    verdict.className = "verdict " + (same ? "same" : "different");
    verdict.dataset.same = String(same);
    verdict.textContent = same ? "Same person" : "Different people";
    verdict.append(el("span", { class: "why" }, " distance " + r.distance.toFixed(4) + (same ? " ≤ " : " > ") +
      "threshold " + r.threshold.toFixed(4)));
    $("#v-distance").textContent = r.distance.toFixed(4) + " (similarity " + r.similarity.toFixed(4) + ")";
    $("#v-thr").textContent = r.threshold.toFixed(4) + " (" + r.threshold_source + ")";
    const ev = r.evaluation;
    $("#v-accuracy").textContent = ev ? (100 * ev.accuracy).toFixed(2) + "%" +
      (typeof ev.accuracy_std === "number" ? " ± " + (100 * ev.accuracy_std).toFixed(2) : "") +
      (ev.num_pairs ? " on " + ev.num_pairs + " held-out pairs (k-fold)" : "") : "– (threshold given, not evaluated)";
    $("#v-model-id").textContent = r.model;
    const job = $("#v-job");
    job.textContent = "job " + shortId(r.job_id);
    job.href = "/ui/jobs/" + encodeURIComponent(r.job_id);
    $("#v-result").dataset.jobId = r.job_id;
    for (const side of ["a", "b"]) renderSide(side, r.job_id, r.faces["image_" + side]);
    $("#v-result").hidden = false;
  }

  function renderSide(side, jobId, face) {
    const holder = $("#v-view-" + side);
    const draw = (url) => setChildren(holder, faceFigure(url, face.image_width, face.image_height,
      [{ box: [face.x1, face.y1, face.x2, face.y2], landmarks: face.landmarks, label: (100 * face.prob).toFixed(1) + "%" }],
      { alt: SIDES[side] }));
    draw(local[side] || "");
    // The browser cannot show every format (PGM, TIFF): then the job's decoded copy.
    const img = holder.querySelector("img");
    img.addEventListener("error", () => {
      if (face.view && !img.dataset.fallback) {
        img.dataset.fallback = "1";
        showArtifact(img, jobId, face.view).catch(() => {});
      }
    });
    const crop = $("#v-crop-" + side);
    crop.removeAttribute("src");
    if (face.crop) showArtifact(crop, jobId, face.crop).catch((e) => { crop.alt = "could not load the crop: " + e.message; });
    $("#v-face-" + side).textContent = "face " + Math.round(face.x2 - face.x1) + "×" + Math.round(face.y2 - face.y1) +
      " px in " + face.image_width + "×" + face.image_height + " · detection " + (100 * face.prob).toFixed(1) + "%";
  }

  function init() {
    for (const side of ["a", "b"]) dropZone($("#v-drop-" + side), $("#v-file-" + side), (f) => choose(side, f));
    $("#v-model").addEventListener("change", onModel);
    $("#v-form").addEventListener("submit", submit);
    loadModels().catch((e) => showError("Could not list your models: " + e.message));
  }

  window.FJ.start(init);
})();
