"""The `search` (a probe set against an index) and `search_one` (POST /search) kinds.

`search_one` keeps what it loads in small per-process LRU caches (`_INDEXES`, `_MODELS`,
`_DETECTORS`): a worker's pool process answers a repeat query without reading an index or a model
again. A cached entry is reused only after the job's owner is checked again (`ctx.open_model`, a
row read; the files are already local): an index job's artifacts never change once it succeeded.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from jobs.errors import JobInputError
from jobs.params.search import SearchOneParams, SearchParams
from workers.runners import Preempted, params_as
from workers.runners.embed import _load_model
from workers.runners.index import open_embedded, open_index

if TYPE_CHECKING:
    from workers.context import JobContext

T = TypeVar("T")
CACHE_SIZE = 4
INPUT_KEY = "inputs/image"


class Lru:
    """A tiny least-recently-used map (one per process; pool processes never share one)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Any, load: Callable[[], T]) -> tuple[T, bool]:
        """(the value, True on a hit); a miss loads it and may evict the oldest."""
        if key in self.items:
            self.items.move_to_end(key)
            self.hits += 1
            return self.items[key], True
        value = load()
        self.items[key] = value
        self.misses += 1
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value, False


_INDEXES = Lru(CACHE_SIZE)
_MODELS = Lru(CACHE_SIZE)
_DETECTORS = Lru(2)


def _check_model_owner(ctx: JobContext, model: str) -> None:
    if model.startswith(("job:", "model:")):
        ctx.open_model(model)  # the owner and status, again, even on a cache hit


def _probes_from_dataset(ctx: JobContext, p: SearchParams, model_ref: str) -> Any:
    from ml.core.errors import Stopped
    from ml.faces.decode import list_files
    from ml.faces.detect import DetectorSettings
    from ml.faces.embed import EmbedSettings, EmbedSettingsError, embed_dataset
    from ml.index.gallery import identity_of

    assert p.dataset is not None
    files = list_files(Path(ctx.open_dataset(p.dataset)))
    if not files:
        raise JobInputError(f"{p.dataset} holds no files")
    model = _load_model(ctx, model_ref, None)
    settings = EmbedSettings(detector=DetectorSettings(method=p.detector, min_face_size=p.min_face_size))
    try:
        result = embed_dataset(files, model, settings, callbacks=ctx, device=ctx.device)
    except Stopped as exc:
        raise Preempted(str(exc)) from exc
    except EmbedSettingsError as exc:
        raise JobInputError(str(exc)) from exc
    keys = [f"{p.dataset}/{r['key']}#{r['face']}" for r in result.index]
    return result.embeddings, keys, [identity_of(r["key"]) for r in result.index], len(result.failures)


def run_search(ctx: JobContext) -> dict[str, Any]:
    """Search every probe face; report.json (identification figures) and matches.csv (top-k per probe)."""
    from ml.index.search import search_faces
    from ml.metrics.identification import identification_report
    from ml.metrics.verification import VerificationError

    p = params_as(ctx, SearchParams)
    index, meta = open_index(ctx, p.index)
    model = str(meta["model"])
    failures = 0
    if p.embed_job is not None:
        faces = open_embedded(ctx, p.embed_job)
        if faces.model != model:
            raise JobInputError(f"{p.embed_job} was embedded by {faces.model}; the index holds {model} embeddings")
        emb, keys, who = faces.embeddings, list(faces.keys), list(faces.identities)
    else:
        emb, keys, who, failures = _probes_from_dataset(ctx, p, model)
    if len(keys) == 0:
        raise JobInputError("no probe face to search (every image failed)")
    threshold = meta.get("threshold")
    gallery = {i for i in index.identities if i}
    fpirs = p.fpirs if any(w not in gallery for w in who) else []
    try:
        report = identification_report(index, emb, who, ranks=(1, 5), fpirs=fpirs, threshold=threshold)
    except VerificationError as exc:
        raise JobInputError(f"identification: {exc}") from exc
    report.update(index=p.index, model=model, probe_failures=failures, threshold_source=meta.get("threshold_source"))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["probe", "probe_identity", "mated", "rank", "similarity", "identity", "source", "decision"])
    from ml.index.gallery import source_of

    for key, w, res in zip(keys, who, search_faces(index, emb, p.k, threshold), strict=True):
        for rank, m in enumerate(res.matches, start=1):
            row = [source_of(key), w, w in gallery, rank, f"{m.similarity:.6f}", m.identity, source_of(m.key)]
            writer.writerow([*row, res.identity])
    ctx.put_artifact("report.json", json.dumps(report, indent=2, sort_keys=True).encode(), "application/json")
    ctx.put_artifact("matches.csv", out.getvalue().encode(), "text/csv")
    return report


def _load_index(ctx: JobContext, ref: str) -> tuple[tuple[Any, dict[str, Any]], bool]:
    ctx.open_model(ref)  # ownership and status on every query; the files are local after the first
    return _INDEXES.get(ref, lambda: open_index(ctx, ref))


def _matches(index: Any, emb: Any, k: int, threshold: float | None) -> tuple[list[dict[str, Any]], str]:
    from ml.index.gallery import source_of
    from ml.index.search import search_faces

    (res,) = search_faces(index, emb.reshape(1, -1), k, threshold)
    matches = [
        {"rank": r, "similarity": m.similarity, "identity": m.identity, "source": source_of(m.key)}
        for r, m in enumerate(res.matches, start=1)
    ]
    return matches, res.identity


def _image_faces(ctx: JobContext, p: SearchOneParams, model_ref: str) -> tuple[list[Any], bool]:
    from jobs.store import ObjectMissing
    from ml.faces.decode import Failure
    from ml.faces.detect import DetectorSettings, make_detector
    from ml.faces.embed import EmbedSettings
    from ml.index.query import image_faces

    _check_model_owner(ctx, model_ref)
    model, hit = _MODELS.get((model_ref, str(ctx.device)), lambda: _load_model(ctx, model_ref, None))
    settings = EmbedSettings(detector=DetectorSettings(method=p.detector))
    detector, _ = _DETECTORS.get((p.detector, str(ctx.device)), lambda: make_detector(settings.detector, ctx.device))
    try:
        data = ctx.store.get_bytes(f"jobs/{ctx.job_id}/{INPUT_KEY}")
    except ObjectMissing:
        raise JobInputError("this job has no stored image (POST /search stores it)") from None
    faces = image_faces(data, model, detector, settings)
    if isinstance(faces, Failure):
        raise JobInputError(f"image: {faces.reason}: {faces.detail}")
    return faces, hit


def run_search_one(ctx: JobContext) -> dict[str, Any]:
    """One image's faces (each: box, landmarks, crop, embedding, top-k, decision) or one embedding."""
    import numpy as np

    p = params_as(ctx, SearchOneParams)
    started = time.perf_counter()
    index = meta = None
    index_hit: bool | None = None
    if p.index is not None:
        (index, meta), index_hit = _load_index(ctx, p.index)
    model_ref = p.model or str(meta["model"] if meta else "")
    if meta is not None and model_ref != meta["model"]:
        held = meta["model"]
        raise JobInputError(f"{p.index} holds embeddings of {held}; search it with that model, not {model_ref}")
    threshold = meta.get("threshold") if meta else None
    faces: list[dict[str, Any]] = []
    model_hit: bool | None = None
    if p.embedding is not None:
        assert index is not None
        q = np.asarray(p.embedding, dtype=np.float64)
        if q.shape[0] != index.dim or not np.isfinite(q).all() or np.linalg.norm(q) == 0:
            raise JobInputError(f"the embedding must be {index.dim} finite numbers, not all zero (got {q.shape[0]})")
        q = (q / np.linalg.norm(q)).astype(np.float32)
        matches, decision = _matches(index, q, p.k, threshold)
        faces.append(
            {"box": None, "landmarks": None, "score": None, "crop": None, "crop_url": None,
             "embedding": q.tolist(), "matches": matches, "decision": decision}
        )  # fmt: skip
    else:
        found, model_hit = _image_faces(ctx, p, model_ref)
        for i, face in enumerate(found):
            crop = f"faces/{i}.png"
            ctx.put_artifact(crop, face.crop_png, "image/png")
            entry = {
                **face.to_json(),
                "crop": crop,
                "crop_url": f"/jobs/{ctx.job_id}/artifacts/{crop}",
                "embedding": [float(v) for v in face.embedding],
                "matches": [],
                "decision": None,
            }
            if index is not None:
                entry["matches"], entry["decision"] = _matches(index, face.embedding, p.k, threshold)
            faces.append(entry)
    return {
        "index": p.index,
        "model": model_ref,
        "threshold": threshold,
        "faces": faces,
        "cache": {"index_hit": index_hit, "model_hit": model_hit},
        "worker_seconds": time.perf_counter() - started,
    }
