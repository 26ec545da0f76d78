// Datasets: upload an archive with a progress bar (XMLHttpRequest reports upload progress; fetch does not),
// and list the caller's datasets with the ref a job's params use.
"use strict";

(function () {
  const { $, el, setChildren, api, rows, toast, getKey, fmtBytes, fmtAgo, fmtTime, parseTime, fmtDuration } = window.FJ;
  let xhr = null;
  const list = { cursor: null, items: [] };

  function renderList() {
    const body = $("#ds-table tbody");
    setChildren(body, list.items.map((d) => el("tr", { "data-id": d.id },
      el("td", {}, el("a", { href: "/ui/datasets/" + encodeURIComponent(d.id) }, d.name)),
      el("td", {}, el("code", { class: "mono copy", title: "click to copy", onclick: () => copy(d.ref || "dataset:" + d.id) },
        d.ref || "dataset:" + d.id)),
      el("td", {}, d.layout),
      el("td", { class: "num" }, String(d.num_files)),
      el("td", { class: "num" }, String(d.num_identities)),
      el("td", { class: "num" }, fmtBytes(d.size_bytes)),
      el("td", { title: fmtTime(parseTime(d.created_at)) }, fmtAgo(parseTime(d.created_at))))));
    $("#ds-empty").hidden = list.items.length > 0;
    $("#ds-table").hidden = list.items.length === 0;
    $("#ds-more").hidden = !list.cursor;
  }

  function copy(text) {
    navigator.clipboard.writeText(text).then(() => toast("Copied " + text, "good"), () => toast(text));
  }

  async function load(more) {
    const q = new URLSearchParams({ limit: "50" });
    if (more && list.cursor) q.set("cursor", list.cursor);
    const body = await api("/datasets?" + q.toString());
    list.items = more ? [...list.items, ...rows(body)] : rows(body);
    list.cursor = (body && body.next_cursor) || null;
    renderList();
  }

  function setBar(fraction) {
    const bar = $("#u-bar");
    bar.hidden = false;
    bar.firstElementChild.style.width = (fraction * 100).toFixed(1) + "%";
  }

  function upload(ev) {
    ev.preventDefault();
    const file = $("#u-file").files[0];
    const name = $("#u-name").value.trim();
    const err = $("#u-error");
    err.hidden = true;
    if (!file) { err.hidden = false; err.textContent = "Choose an archive to upload."; return; }
    const form = new FormData();
    if (name) form.append("name", name);
    form.append("file", file, file.name);
    const req = new XMLHttpRequest();
    xhr = req;
    const t0 = performance.now();
    req.open("POST", "/datasets");
    req.setRequestHeader("X-API-Key", getKey());
    req.setRequestHeader("Accept", "application/json");
    req.upload.onprogress = (e) => {
      if (!e.lengthComputable) return;
      setBar(e.loaded / e.total);
      const secs = (performance.now() - t0) / 1000;
      const rate = e.loaded / Math.max(secs, 0.001);
      $("#u-status").textContent = fmtBytes(e.loaded) + " of " + fmtBytes(e.total) + " · " + fmtBytes(rate) + "/s" +
        (e.loaded < e.total ? " · " + fmtDuration((e.total - e.loaded) / rate) + " left" : " · unpacking on the server…");
    };
    req.onload = () => {
      done();
      let data = null;
      try { data = JSON.parse(req.responseText); } catch (e) { data = null; }
      if (req.status === 401) { location.reload(); return; }
      if (req.status >= 200 && req.status < 300 && data) {
        setBar(1);
        $("#u-bar").classList.add("s-succeeded");
        const skipped = data.skipped && data.skipped.length ? " · skipped " + data.skipped.length + " non-image file(s)" : "";
        $("#u-status").textContent = "Stored " + data.name + " as " + (data.ref || "dataset:" + data.id) + ": " +
          data.num_files + " files, " + data.num_identities + " identities" + skipped + ".";
        $("#upload-form").reset();
        load(false).catch(() => {});
      } else {
        err.hidden = false;
        err.textContent = "Upload failed (" + req.status + "): " +
          ((data && data.error && data.error.message) || req.statusText || "no answer");
        $("#u-bar").hidden = true;
      }
    };
    req.onerror = () => { done(); err.hidden = false; err.textContent = "Upload failed: the connection broke."; };
    req.onabort = () => { done(); $("#u-status").textContent = "Upload aborted."; $("#u-bar").hidden = true; };
    $("#u-submit").disabled = true;
    $("#u-abort").hidden = false;
    $("#u-bar").classList.remove("s-succeeded");
    setBar(0);
    $("#u-status").textContent = "starting…";
    req.send(form);
  }

  function done() {
    $("#u-submit").disabled = false;
    $("#u-abort").hidden = true;
    xhr = null;
  }

  function init() {
    $("#upload-form").addEventListener("submit", upload);
    $("#u-abort").addEventListener("click", () => { if (xhr) xhr.abort(); });
    $("#ds-more").addEventListener("click", () => load(true).catch((e) => toast(e.message, "bad")));
    load(false).catch((e) => toast("Could not list datasets: " + e.message, "bad"));
  }

  window.FJ.start(init);
})();
