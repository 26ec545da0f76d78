// A job's captured output (stdout, stderr, logging) on its page: tailed from a byte offset while the
// attempt runs, one attempt at a time (the latest unless one is picked), downloadable whole.
"use strict";

(function () {
  const { $, el, setChildren, api } = window.FJ;
  const MAX_CHARS = 400000; // what the panel keeps of a long log (the download has all of it)

  function createLog(jobId) {
    return { jobId, attempt: null, picked: null, offset: 0, text: "", done: false, attempts: -1 };
  }

  function logPath(L, extra) {
    return "/jobs/" + encodeURIComponent(L.jobId) + "/logs" + extra;
  }

  function renderAttempts(L, attempts) {
    if (attempts === L.attempts) return;
    L.attempts = attempts;
    const sel = $("#j-out-attempt");
    const opts = [el("option", { value: "" }, "latest")];
    for (let n = attempts; n >= 1; n--) opts.push(el("option", { value: String(n) }, "attempt " + n));
    setChildren(sel, opts);
    sel.value = L.picked === null ? "" : String(L.picked);
  }

  function render(L) {
    const box = $("#j-out");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
    box.textContent = L.text || (L.done ? "(this attempt printed nothing)" : "(no output yet)");
    if (atBottom) box.scrollTop = box.scrollHeight;
    $("#j-out-note").textContent = L.attempt ? "attempt " + L.attempt + " · " + L.offset + " bytes" +
      (L.done ? "" : " · live") : "";
  }

  // One read of what is new; called on every poll of the page (nothing to do once an attempt is done).
  async function tailLog(L, job) {
    const want = L.picked === null ? job.attempt : L.picked;
    if (want !== L.attempt) Object.assign(L, { attempt: want, offset: 0, text: "", done: false });
    renderAttempts(L, job.attempt);
    if (!want || L.done) { render(L); return; }
    for (let i = 0; i < 8; i++) { // up to 8 MiB per poll; the rest on the next
      const page = await api(logPath(L, "?attempt=" + want + "&offset=" + L.offset));
      L.text = (L.text + page.text).slice(-MAX_CHARS);
      L.offset = page.next_offset;
      L.done = page.done;
      if (page.done || page.next_offset >= page.size) break;
    }
    render(L);
  }

  async function downloadLog(L) {
    const q = L.picked === null ? "" : "?attempt=" + L.picked;
    const resp = await api(logPath(L, "/download" + q), { raw: true });
    const url = URL.createObjectURL(await resp.blob());
    const a = el("a", { href: url, download: L.jobId + ".log", hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function bindLog(L, refresh, onError) {
    $("#j-out-attempt").addEventListener("change", (e) => {
      L.picked = e.target.value ? Number(e.target.value) : null;
      refresh();
    });
    $("#j-out-download").addEventListener("click", () => downloadLog(L).catch(onError));
  }

  window.FJ.joblog = { createLog, tailLog, bindLog };
})();
