// Artifacts in the browser: images and downloads that need the API key, without sending it to S3.
// /ui/links/... answers a presigned URL (object store: use it as is) or null (local store: fetch the
// API route with the key into a blob URL).
"use strict";

(function () {
  const { api, el } = window.FJ;

  function artifactPath(jobId, name) {
    return "/jobs/" + encodeURIComponent(jobId) + "/artifacts/" + name.split("/").map(encodeURIComponent).join("/");
  }

  async function artifactUrl(jobId, art) {
    const link = await api("/ui/links" + artifactPath(jobId, art.name));
    if (link.url) return { url: link.url, blob: false };
    // The sha256 in the query makes a changed preview a new URL, so no cache can serve the old image.
    const resp = await api(artifactPath(jobId, art.name) + "?v=" + art.sha256.slice(0, 16), { raw: true });
    return { url: URL.createObjectURL(await resp.blob()), blob: true };
  }

  // Point img at the artifact's current content; does nothing when its sha256 has not changed.
  async function showImage(img, jobId, art) {
    if (img.dataset.sha === art.sha256) return;
    img.dataset.sha = art.sha256;
    try {
      const { url, blob } = await artifactUrl(jobId, art);
      const old = img.dataset.blob;
      await new Promise((resolve) => {
        img.onload = resolve;
        img.onerror = resolve;
        img.src = url;
      });
      if (old) URL.revokeObjectURL(old);
      img.dataset.blob = blob ? url : "";
    } catch (e) {
      delete img.dataset.sha; // try again on the next poll
      img.alt = "could not load " + art.name + ": " + e.message;
    }
  }

  async function download(jobId, art) {
    const { url, blob } = await artifactUrl(jobId, art);
    const a = el("a", { href: url, download: art.name.split("/").pop(), hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    if (blob) setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  window.FJ.artifacts = { artifactPath, artifactUrl, showImage, download };
})();
