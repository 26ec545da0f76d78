"""The `index` kind: a face index of embed jobs' faces, or a new version of an index (`ml.index`).

Also the readers the `search` kinds share: an index job's files (`open_index`), an embed job's
faces (`open_embedded`) and a model's open-set threshold (`model_threshold`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.errors import JobInputError
from jobs.params.index import IndexParams
from workers.runners import ml_config, params_as

if TYPE_CHECKING:
    from workers.context import JobContext

INDEX_FORMAT = "facejobs.index_job/1"
INDEX_JSON = "index.json"


def open_embedded(ctx: JobContext, ref: str) -> Any:
    """`ml.index.gallery.EmbeddedFaces` of the embed job `ref` (the caller's, succeeded)."""
    from ml.index.face_index import IndexInputError
    from ml.index.gallery import read_embedded

    folder = Path(ctx.open_model(ref))
    try:
        faces = read_embedded(folder, f"job {ref.removeprefix('job:')}")
    except IndexInputError as exc:
        raise JobInputError(f"{ref}: {exc}") from exc
    return faces


def open_index(ctx: JobContext, ref: str) -> tuple[Any, dict[str, Any]]:
    """(FaceIndex, index.json) of the index job `ref` (the caller's, succeeded)."""
    from ml.index.files import IndexFileError, load_index

    folder = Path(ctx.open_model(ref))
    meta_path = folder / INDEX_JSON
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        raise JobInputError(f"{ref} is not an index job (it has no {INDEX_JSON} of an index)")
    try:
        return load_index(folder), meta
    except IndexFileError as exc:
        raise JobInputError(f"{ref}: {exc}") from exc


def model_threshold(ctx: JobContext, model: str) -> tuple[float | None, str]:
    """(cosine-similarity threshold or None, where it came from) of the model that embedded a gallery."""
    from ml.faces.models import read_threshold

    if model.startswith("job:"):
        value = read_threshold(Path(ctx.open_model(model)))
        if value is not None:
            return value, "model metrics"
    elif model.startswith("model:"):
        meta = ctx.model_info(model)["meta"]
        value = meta.get("threshold") if isinstance(meta, dict) else None
        if isinstance(value, int | float) and -1.0 <= float(value) <= 1.0:
            return float(value), "declared at upload"
    return None, "none (the model has no evaluated threshold: closed set, never unknown)"


def _new_version(ctx: JobContext, p: IndexParams) -> tuple[Any, dict[str, Any], str, int]:
    """(index, base's index.json, model, rows removed) of a new version of `p.base`."""
    from ml.index.face_index import IndexInputError
    from ml.index.gallery import concat, keys_to_remove

    assert p.base is not None
    base, meta = open_index(ctx, p.base)
    model = str(meta["model"])
    index, removed = base, 0
    try:
        if p.remove:
            drop = keys_to_remove(base.keys, base.identities, p.remove)
            index, removed = index.remove(drop), len(drop)
        if p.add:
            emb, keys, ids, _ = concat([open_embedded(ctx, ref) for ref in p.add], model)
            index = index.add(emb, keys, ids)
    except IndexInputError as exc:
        raise JobInputError(str(exc)) from exc
    return dataclasses.replace(index, version=base.version + 1), meta, model, removed


def run_index(ctx: JobContext) -> dict[str, Any]:
    """Build (or version) the index; store index.faiss, idmap.json and index.json."""
    from ml.index.face_index import IndexInputError, IndexSettings, build_index
    from ml.index.files import save_index
    from ml.index.gallery import concat, counts

    p = params_as(ctx, IndexParams)
    ctx.progress(0, 2)
    removed = 0
    if p.base is not None:
        index, base_meta, model, removed = _new_version(ctx, p)
        sources = [*base_meta.get("embed_jobs", []), *p.add]
        name = p.name or base_meta.get("name")
    else:
        settings = ml_config(IndexSettings, p)
        parts = [open_embedded(ctx, ref) for ref in p.embed_jobs]
        try:
            emb, keys, ids, model = concat(parts)
            index = build_index(emb, keys, ids, settings)
        except IndexInputError as exc:
            raise JobInputError(str(exc)) from exc
        sources, name = list(p.embed_jobs), p.name
    ctx.progress(1, 2)
    threshold, source = model_threshold(ctx, model)
    paths = save_index(index, Path(ctx.workdir) / "index")
    summary = {
        **counts(index.identities),
        "type": index.kind,
        "dim": index.dim,
        "version": index.version,
        "base": p.base,
        "removed": removed,
        "model": model,
        "threshold": threshold,
        "threshold_source": source,
    }
    meta = {
        "format": INDEX_FORMAT,
        **summary,
        "name": name,
        "embed_jobs": sources,
        "settings": index.settings.to_json(),
    }
    ctx.put_artifact("index.faiss", paths["index.faiss"], "application/octet-stream")
    ctx.put_artifact("idmap.json", paths["idmap.json"], "application/json")
    ctx.put_artifact(INDEX_JSON, json.dumps(meta, indent=2, sort_keys=True).encode(), "application/json")
    ctx.progress(2, 2)
    return summary
