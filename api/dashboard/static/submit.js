// The submit page: pick a kind, fill the form built from its params schema, POST /jobs.
// ?kind=<name> preselects a kind; ?clone=<job id> fills the form with that job's kind and params.
"use strict";

(function () {
  const { $, el, setChildren, api, toast, shortId, ApiError } = window.FJ;
  const S = { kinds: [], form: null };

  function kindByName(name) { return S.kinds.find((k) => k.name === name); }

  function selectKind(name, values) {
    const kind = kindByName(name) || S.kinds[0];
    if (!kind) return;
    $("#s-kind").value = kind.name;
    setChildren($("#s-kind-help"), kind.description, " ", el("span", { class: "type" }, "(default queue: " + kind.queue + ")"));
    S.form = window.FJ.schemaForm.build($("#s-params"), kind.params_schema);
    if (values) S.form.setValues(values);
    showErrors([]);
    const q = new URLSearchParams(location.search);
    q.set("kind", kind.name);
    q.delete("clone");
    history.replaceState(null, "", "?" + q.toString());
  }

  function showErrors(messages) {
    const box = $("#s-errors");
    box.hidden = messages.length === 0;
    setChildren(box, messages.length ? el("ul", {}, messages.map((m) => el("li", {}, m))) : []);
  }

  // Map the API's error details (pydantic locs) onto the fields; the rest is listed under the form.
  function fieldName(loc) {
    const names = new Set(S.form.fields.map((f) => f.name));
    const parts = (loc || []).filter((p) => p !== "body" && p !== "params");
    return parts.find((p) => names.has(p)) || (parts.length ? parts.join(".") : "");
  }

  async function submit(ev) {
    ev.preventDefault();
    const { params, errors } = S.form.read();
    const local = Object.entries(errors);
    if (local.length) { showErrors(S.form.showErrors(local)); return; }
    S.form.showErrors([]);
    const body = { kind: $("#s-kind").value, params, priority: Number($("#s-priority").value || 0) };
    if ($("#s-queue").value) body.queue = $("#s-queue").value;
    if ($("#s-attempts").value) body.max_attempts = Number($("#s-attempts").value);
    const button = $("#s-submit");
    button.disabled = true;
    $("#s-status").textContent = "submitting…";
    try {
      const job = await api("/jobs", { method: "POST", json: body });
      showErrors([]);
      const href = "/ui/jobs/" + encodeURIComponent(job.id);
      setChildren($("#s-status"), "Submitted ", el("a", { href, class: "mono", id: "s-last-job" }, shortId(job.id)),
        " (" + job.kind + ", " + job.status + ").");
      $("#s-recent-card").hidden = false;
      $("#s-recent").prepend(el("li", {}, el("a", { href, class: "mono" }, job.id), " ", job.kind, " ",
        el("span", { class: "muted" }, JSON.stringify(job.params))));
      toast("Job " + shortId(job.id) + " submitted", "good");
    } catch (e) {
      $("#s-status").textContent = "";
      if (e instanceof ApiError && Array.isArray(e.details) && e.details.length) {
        const pairs = e.details.map((d) => [fieldName(d.loc), d.msg]);
        showErrors([e.message, ...S.form.showErrors(pairs)]);
      } else showErrors([e.message]);
    } finally {
      button.disabled = false;
    }
  }

  async function init() {
    S.kinds = await api("/kinds").catch((e) => { showErrors(["Could not load the job kinds: " + e.message]); return []; });
    const select = $("#s-kind");
    setChildren(select, S.kinds.map((k) => el("option", { value: k.name }, k.name + "  (" + k.queue + ")")));
    $("#s-kind").addEventListener("change", () => selectKind(select.value));
    $("#submit-form").addEventListener("submit", submit);
    $("#s-reset").addEventListener("click", () => { S.form.reset(); S.form.showErrors([]); showErrors([]); });
    const q = new URLSearchParams(location.search);
    const clone = q.get("clone");
    if (clone) {
      try {
        const job = await api("/jobs/" + encodeURIComponent(clone));
        selectKind(job.kind, job.params);
        $("#s-queue").value = job.queue;
        $("#s-priority").value = job.priority;
        $("#s-status").textContent = "Params copied from job " + shortId(job.id) + ": change what you need and submit.";
        return;
      } catch (e) {
        toast("Could not copy job " + clone + ": " + e.message, "bad");
      }
    }
    selectKind(q.get("kind") || (S.kinds[0] && S.kinds[0].name));
  }

  window.FJ.start(init);
})();
