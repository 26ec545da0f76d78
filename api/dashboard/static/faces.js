// Faces in the browser: an image with its detected faces drawn over it (SVG: box, 5 landmarks, label),
// embedding downloads (JSON, and .npy built here: NPY v1.0 header + little-endian float32), and the
// plain-words messages for uploads the API refused (corrupt, decompression bomb, too big, no face).
"use strict";

(function () {
  const { el } = window.FJ;
  const SVG = "http://www.w3.org/2000/svg";
  const MAX_UPLOAD_BYTES = 8 * 1024 * 1024; // POST /verify and POST /search take at most 8 MiB an image
  const LANDMARKS = ["left eye", "right eye", "nose", "left mouth corner", "right mouth corner"];

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  // A figure: the image at `url` (width x height pixels) with an SVG overlay in the image's own pixel
  // units, so boxes stay on the face at any displayed size. faces: [{box: [x1,y1,x2,y2], landmarks, label, cls}].
  function faceFigure(url, width, height, faces, opts) {
    const o = opts || {};
    const img = el("img", { src: url, alt: o.alt || "image", class: "fv-img" });
    const stroke = Math.max(1, Math.round(Math.max(width, height) / 150));
    const overlay = svg("svg", { class: "fv-overlay", viewBox: "0 0 " + width + " " + height, preserveAspectRatio: "none" });
    faces.forEach((f, i) => {
      const [x1, y1, x2, y2] = f.box;
      const g = svg("g", { class: "fv-face " + (f.cls || ""), "data-face": i });
      g.append(svg("rect", { class: "fv-box", x: x1, y: y1, width: x2 - x1, height: y2 - y1, "stroke-width": stroke }));
      for (const [j, p] of (f.landmarks || []).entries()) {
        g.append(svg("circle", { class: "fv-lm", cx: p[0], cy: p[1], r: stroke * 1.6 }, svg("title", {}, LANDMARKS[j] || "landmark")));
      }
      if (f.label !== undefined && f.label !== null) {
        const size = Math.max(8, Math.round(height / 18));
        g.append(svg("text", { class: "fv-label", x: x1 + stroke, y: Math.max(size, y1 - stroke * 2), "font-size": size }, f.label));
      }
      overlay.append(g);
    });
    const frame = el("div", { class: "fv-frame" + (o.small ? " small" : "") }, img, overlay);
    const fig = el("figure", { class: "fv" + (o.small ? " small" : "") }, frame);
    if (o.caption) fig.append(el("figcaption", {}, o.caption));
    return fig;
  }

  function boxOf(face) {
    return Array.isArray(face.box) ? face.box : [face.x1, face.y1, face.x2, face.y2];
  }

  // NPY v1.0: magic, version, header length (uint16 LE), a dict padded with spaces to a multiple of 64
  // ending in "\n", then the data; "<f4" is little-endian float32, written explicitly whatever the CPU.
  function npyBytes(values) {
    const header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + values.length + ",), }";
    const unpadded = 10 + header.length + 1;
    const padded = header + " ".repeat((64 - (unpadded % 64)) % 64) + "\n";
    const buf = new ArrayBuffer(10 + padded.length + 4 * values.length);
    const bytes = new Uint8Array(buf);
    bytes.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]); // \x93NUMPY, v1.0
    const view = new DataView(buf);
    view.setUint16(8, padded.length, true);
    for (let i = 0; i < padded.length; i++) bytes[10 + i] = padded.charCodeAt(i);
    const start = 10 + padded.length;
    values.forEach((v, i) => view.setFloat32(start + 4 * i, v, true));
    return bytes;
  }

  function downloadBlob(blob, filename) {
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: filename, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function downloadEmbedding(values, stem, format) {
    if (format === "npy") downloadBlob(new Blob([npyBytes(values)], { type: "application/octet-stream" }), stem + ".npy");
    else downloadBlob(new Blob([JSON.stringify(values)], { type: "application/json" }), stem + ".json");
  }

  // What to tell the person about a refused upload, from the API's error (code, message, details).
  function uploadMessage(err, labelOf) {
    const label = (name) => (labelOf && labelOf(name)) || name || "the image";
    const msg = err.message || "";
    const field = (err.details && err.details.field) || (/(image_[ab]|image)\b/.exec(msg) || [])[1];
    if (err.code === "invalid_image" && /decompression bomb/i.test(msg)) {
      return "Refused: " + label(field) + " is a decompression bomb (too many pixels to decode safely): " +
        msg.replace(/^.*?decompression bomb: /i, "");
    }
    if (err.code === "invalid_image") {
      return "Refused: " + label(field) + " is corrupt or not an image (PNG, JPEG, PGM, BMP, GIF, TIFF, WebP): " +
        msg.replace(/^[^:]*: /, "");
    }
    if (err.code === "payload_too_large") return "Refused: " + label(field) + " is over 8 MiB.";
    if (/no_face/.test(msg)) return "No face found in " + label(field) + ": use a photo with a visible face.";
    return msg || "the request failed (" + err.status + ")";
  }

  // A file the page can refuse before sending it; null when it may go.
  function precheck(file, label) {
    if (!file) return "Choose " + label + ".";
    if (file.size === 0) return "Refused: " + label + " is an empty file.";
    if (file.size > MAX_UPLOAD_BYTES) return "Refused: " + label + " is over 8 MiB (" + window.FJ.fmtBytes(file.size) + ").";
    return null;
  }

  // A file input inside a drop zone: dropping a file sets the input; onFile(file) on every change.
  function dropZone(zone, input, onFile) {
    const set = () => onFile(input.files[0] || null);
    input.addEventListener("change", set);
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer.files.length) {
        input.files = e.dataTransfer.files;
        set();
      }
    });
  }

  // The pixel size of an image URL (0 x 0 when it does not decode).
  function imageSize(url) {
    return new Promise((resolve) => {
      const img = new Image();
      img.onload = () => resolve({ width: img.naturalWidth, height: img.naturalHeight });
      img.onerror = () => resolve({ width: 0, height: 0 });
      img.src = url;
    });
  }

  window.FJ.faces = { faceFigure, boxOf, npyBytes, downloadEmbedding, downloadBlob, uploadMessage, precheck,
    dropZone, imageSize, MAX_UPLOAD_BYTES };
})();
