// A form built from a kind's params JSON schema (pydantic v2): one field per property, with its type,
// default, description as help, enums as selects, booleans as checkboxes, simple arrays as
// comma-separated text and anything nested as JSON.
"use strict";

(function () {
  const { el, setChildren } = window.FJ;
  // pydantic writes `Literal` as enum, but a `pattern` like ^(a|b|c)$ is an enum too: offer a select.
  const ALTERNATION = /^\^\(([\w.:-]+(?:\|[\w.:-]+)+)\)\$$/;
  const SIMPLE = new Set(["integer", "number", "string"]);

  function deref(schema, root) {
    let s = schema || {};
    for (let i = 0; i < 10 && s.$ref; i++) {
      const path = s.$ref.replace(/^#\//, "").split("/");
      let target = root;
      for (const p of path) target = target ? target[p] : undefined;
      s = { ...(target || {}), ...Object.fromEntries(Object.entries(s).filter(([k]) => k !== "$ref")) };
    }
    if (s.allOf && s.allOf.length === 1) s = { ...deref(s.allOf[0], root), ...s, allOf: undefined };
    return s;
  }

  // The field's effective schema: the non-null member of an Optional, with the outer default and help.
  function describe(name, raw, root, required) {
    const outer = deref(raw, root);
    let core = outer;
    let nullable = false;
    const options = outer.anyOf || outer.oneOf;
    if (options) {
      const members = options.map((o) => deref(o, root));
      nullable = members.some((m) => m.type === "null");
      const rest = members.filter((m) => m.type !== "null");
      core = rest.length === 1 ? rest[0] : { type: "json" };
    }
    let type = core.type || (core.enum ? "enum" : "json");
    let choices = core.enum || null;
    const alt = type === "string" && core.pattern ? ALTERNATION.exec(core.pattern) : null;
    if (alt) choices = alt[1].split("|");
    if (choices) type = "enum";
    const items = type === "array" ? deref(core.items, root) : null;
    if (type === "array" && !(items && SIMPLE.has(items.type))) type = "json";
    if (type === "object") type = "json";
    return { name, type, core, items, choices, nullable, required,
      title: outer.title || name, description: outer.description || "",
      default: "default" in outer ? outer.default : undefined };
  }

  function hint(f) {
    const c = f.core;
    const parts = [f.type === "array" ? "list of " + f.items.type + " (comma-separated)" : f.type === "json" ? "JSON" : f.type];
    if (f.type === "enum") parts[0] = "one of " + f.choices.length;
    const lo = c.minimum !== undefined ? c.minimum : c.exclusiveMinimum;
    const hi = c.maximum !== undefined ? c.maximum : c.exclusiveMaximum;
    if (lo !== undefined || hi !== undefined) {
      // Interval notation: [ ] include the bound, ( ) exclude it.
      parts[0] += " in " + (lo === undefined ? "(-∞" : (c.minimum !== undefined ? "[" : "(") + lo) + ", " +
        (hi === undefined ? "∞)" : hi + (c.maximum !== undefined ? "]" : ")"));
    }
    if (c.maxLength !== undefined && f.type === "string") parts.push("≤ " + c.maxLength + " chars");
    if (f.nullable) parts.push("optional");
    if (f.required) parts.push("required");
    return parts.join(" · ");
  }

  function toText(f, v) {
    if (v === undefined || v === null) return "";
    if (f.type === "array") return v.join(", ");
    if (f.type === "json") return JSON.stringify(v, null, 1);
    return String(v);
  }

  function makeInput(f) {
    const id = "p-" + f.name;
    const common = { id, name: f.name, "data-field": f.name, "aria-describedby": id + "-help" };
    if (f.type === "boolean" && !f.nullable) return el("input", { ...common, type: "checkbox" });
    if (f.type === "boolean" || f.type === "enum") {
      const choices = f.type === "boolean" ? ["true", "false"] : f.choices;
      const opts = choices.map((c) => el("option", { value: String(c) }, String(c)));
      if (f.nullable || f.default === undefined) {
        opts.unshift(el("option", { value: "" }, f.nullable ? "— none —" : "— choose —"));
      }
      return el("select", common, opts);
    }
    if (f.type === "integer" || f.type === "number") {
      const c = f.core;
      return el("input", { ...common, type: "number", step: f.type === "integer" ? "1" : "any",
        min: c.minimum, max: c.maximum, placeholder: f.nullable ? "none" : null });
    }
    if (f.type === "json") return el("textarea", { ...common, rows: 3, class: "mono", spellcheck: "false",
      placeholder: f.nullable ? "null" : "JSON" });
    return el("input", { ...common, type: "text", maxlength: f.core.maxLength, spellcheck: "false",
      placeholder: f.type === "array" ? "e.g. 0, 1, 2" + (f.nullable ? " (empty: none)" : "") : f.nullable ? "none" : null });
  }

  function setValue(f, input, v) {
    if (input.type === "checkbox") input.checked = Boolean(v);
    else input.value = toText(f, v);
  }

  function parseScalar(type, text) {
    if (type === "integer") {
      const n = Number(text);
      if (!Number.isInteger(n)) throw new Error("must be a whole number");
      return n;
    }
    if (type === "number") {
      const n = Number(text);
      if (text === "" || !isFinite(n)) throw new Error("must be a number");
      return n;
    }
    return text;
  }

  // The field's value: [present, value]; absent means "use the server's default".
  function readValue(f, input) {
    if (input.type === "checkbox") return [true, input.checked];
    const text = input.value.trim();
    if (text === "") {
      if (f.required) throw new Error("is required");
      return [false, undefined];
    }
    switch (f.type) {
      case "boolean": return [true, text === "true"];
      case "enum": {
        const match = f.choices.find((c) => String(c) === text);
        return [true, match === undefined ? text : match];
      }
      case "array": return [true, text.split(",").map((s) => s.trim()).filter(Boolean)
        .map((s) => parseScalar(f.items.type, s))];
      case "json":
        try { return [true, JSON.parse(text)]; } catch (e) { throw new Error("is not valid JSON: " + e.message); }
      default: return [true, parseScalar(f.type, text)];
    }
  }

  function build(container, schema) {
    const root = schema || {};
    const required = new Set(root.required || []);
    const fields = Object.entries(root.properties || {}).map(([n, p]) => describe(n, p, root, required.has(n)));
    const inputs = new Map();
    const nodes = [];
    for (const f of fields) {
      const input = makeInput(f);
      inputs.set(f.name, input);
      setValue(f, input, f.default);
      const label = el("label", { for: input.id, title: f.title },
        el("span", { class: "mono" }, f.name), f.required ? el("span", { class: "req" }, " *") : null);
      nodes.push(label, el("div", { class: "field", "data-field": f.name },
        f.type === "boolean" && !f.nullable ? el("label", { class: "check" }, input, " enabled") : input,
        el("p", { class: "help", id: input.id + "-help" },
          f.description ? f.description + " " : "", el("span", { class: "type" }, "(" + hint(f) + ")")),
        el("p", { class: "field-error", hidden: true })));
    }
    if (!fields.length) nodes.push(el("span", {}), el("p", { class: "muted" }, "This kind takes no params."));
    setChildren(container, nodes);

    return {
      fields,
      // {params, errors}: errors maps a field name to its message.
      read() {
        const params = {};
        const errors = {};
        for (const f of fields) {
          try {
            const [present, value] = readValue(f, inputs.get(f.name));
            if (present) params[f.name] = value;
          } catch (e) { errors[f.name] = f.name + " " + e.message; }
        }
        return { params, errors };
      },
      setValues(values) {
        for (const f of fields) if (values && f.name in values) setValue(f, inputs.get(f.name), values[f.name]);
      },
      reset() { for (const f of fields) setValue(f, inputs.get(f.name), f.default); },
      // Put each message under its field; the ones that name no field are returned.
      showErrors(errors) {
        const rest = [];
        for (const box of container.querySelectorAll(".field")) {
          box.classList.remove("invalid");
          box.querySelector(".field-error").hidden = true;
        }
        for (const [name, message] of errors) {
          const box = name && container.querySelector('.field[data-field="' + CSS.escape(name) + '"]');
          if (!box) { rest.push((name ? name + ": " : "") + message); continue; }
          box.classList.add("invalid");
          const p = box.querySelector(".field-error");
          p.hidden = false;
          p.textContent = message;
        }
        return rest;
      },
    };
  }

  window.FJ.schemaForm = { build, describe };
})();
