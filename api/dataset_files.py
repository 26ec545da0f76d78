"""A dataset's files for the dashboard: pages of files per identity, an embed job's detections and
failures beside them, and size-limited thumbnails decoded from the store.

`files_page` lists a dataset's stored images (natural order, optionally one identity's, optionally
only those an `embed` job could not use) with that job's faces (box, landmarks, probability) and
failure (reason, detail) per file, read from its `index.csv` and `failures.csv` artifacts (parsed
once per artifact digest, at most `MAX_TABLE_BYTES` each). `thumbnail` decodes one stored image
(at most `MAX_THUMB_SOURCE_BYTES` and the settings' pixel limit, EXIF-rotated like the embedder
does) into a PNG at most `side` pixels a side. Neither writes anything anywhere.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ApiError, NotFound, PayloadTooLarge
from api.images import PIL_FORMATS
from jobs.models import ApiKey, Artifact, Dataset, Job
from jobs.refs import parse_ref
from jobs.states import JobStatus
from jobs.store import ObjectMissing, Store, join_key

MAX_TABLE_BYTES = 64 << 20  # an index.csv of ~300k faces
MAX_THUMB_SOURCE_BYTES = 16 << 20
THUMB_SIDES = (32, 512)  # the smallest and largest thumbnail a caller may ask for


def natural_key(text: str) -> list[Any]:
    """ "s2/10.pgm" after "s2/9.pgm" (the order `ml.faces.decode.list_files` gives an embed job)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def identity_of(dataset: Dataset, path: str) -> str:
    return path.split("/", 1)[0] if dataset.layout == "identities" and "/" in path else ""


def dataset_keys(dataset: Dataset) -> list[str]:
    return sorted(dataset.files.get("keys", []), key=natural_key)


@dataclass(frozen=True)
class EmbedTables:
    """An embed job's faces (key -> list of faces) and failures (key -> (reason, detail))."""

    faces: dict[str, list[dict[str, Any]]]
    failures: dict[str, tuple[str, str]]


def _read_table(store: Store, art: Artifact | None, what: str) -> list[dict[str, str]]:
    if art is None:
        raise ApiError(409, "embed_incomplete", f"the embed job has no {what} artifact")
    if art.size > MAX_TABLE_BYTES:
        raise PayloadTooLarge(f"the embed job's {what} is {art.size} bytes; at most {MAX_TABLE_BYTES}", MAX_TABLE_BYTES)
    return _parse_csv(store, art.key, art.sha256)


_parsed: dict[tuple[str, str], list[dict[str, str]]] = {}  # (key, sha256) -> rows, the 8 latest


def _parse_csv(store: Store, key: str, sha256: str) -> list[dict[str, str]]:
    cached = _parsed.get((key, sha256))
    if cached is None:
        try:
            data = store.get_bytes(key)
        except ObjectMissing:
            raise ApiError(409, "embed_incomplete", "the embed job's table is missing from the store") from None
        cached = list(csv.DictReader(io.StringIO(data.decode("utf-8", "replace"))))
        if len(_parsed) >= 8:
            _parsed.pop(next(iter(_parsed)))
        _parsed[(key, sha256)] = cached
    return cached


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _face(row: dict[str, str]) -> dict[str, Any]:
    box = [_num(row.get(k)) for k in ("x1", "y1", "x2", "y2")]
    lms = [[_num(row.get(f"lm{i}_x")), _num(row.get(f"lm{i}_y"))] for i in range(5)]
    return {
        "face": int(_num(row.get("face")) or 0),
        "box": box,
        "landmarks": lms if all(v is not None for p in lms for v in p) else None,
        "prob": _num(row.get("prob")),
        "image_width": int(_num(row.get("image_width")) or 0),
        "image_height": int(_num(row.get("image_height")) or 0),
    }


def embed_job_for(session: Session, key: ApiKey, dataset: Dataset, ref: str) -> Job:
    """The caller's succeeded `embed` job of this dataset named by `ref` (job:<id> or a bare id)."""
    parsed = parse_ref(ref)
    job_id = parsed.id if parsed is not None and parsed.kind == "job" else ref
    job = session.get(Job, job_id[:64])
    if job is None or job.owner_id != key.id or job.kind != "embed":
        raise NotFound("embed job", job_id[:64])
    if job.params.get("dataset") != f"dataset:{dataset.id}":
        other = job.params.get("dataset")
        raise ApiError(422, "other_dataset", f"embed job {job.id} embedded {other}, not this dataset")
    if job.status != JobStatus.SUCCEEDED:
        raise ApiError(409, "embed_not_finished", f"embed job {job.id} is {job.status.value}, not succeeded")
    return job


def embed_tables(session: Session, store: Store, job: Job) -> EmbedTables:
    arts = {
        a.name: a
        for a in session.scalars(
            select(Artifact).where(Artifact.job_id == job.id, Artifact.name.in_(("index.csv", "failures.csv")))
        )
    }
    faces: dict[str, list[dict[str, Any]]] = {}
    for row in _read_table(store, arts.get("index.csv"), "index.csv"):
        faces.setdefault(row.get("key", ""), []).append(_face(row))
    failures = {
        r.get("key", ""): (r.get("reason", ""), r.get("detail", ""))
        for r in _read_table(store, arts.get("failures.csv"), "failures.csv")
    }
    return EmbedTables(faces, failures)


def thumbnail(store: Store, dataset: Dataset, path: str, side: int, max_pixels: int) -> bytes:
    """One of the dataset's images as a PNG at most `side` a side (404 for a path it does not hold)."""
    if path not in set(dataset.files.get("keys", [])):
        raise ApiError(404, "image_not_found", f"dataset {dataset.id} has no image {path[:200]!r}")
    key = join_key(dataset.key_prefix, path)
    try:
        size = store.size(key)
        if size > MAX_THUMB_SOURCE_BYTES:
            limit = MAX_THUMB_SOURCE_BYTES
            raise PayloadTooLarge(f"{path[:200]} is {size} bytes; thumbnails are made of at most {limit}", limit)
        data = store.get_bytes(key)
    except ObjectMissing:
        raise ApiError(404, "image_not_found", f"{path[:200]} is missing from the store") from None
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
                if im.width * im.height > max_pixels:
                    over = f"{im.width}x{im.height} is over the pixel limit of {max_pixels}"
                    raise ApiError(400, "invalid_image", f"{path[:200]}: decompression bomb: {over}")
                im.draft("RGB", (side, side))  # JPEG: decode at a fraction of the size
                rgb = ImageOps.exif_transpose(im).convert("RGB")
    except ApiError:
        raise
    except Exception as exc:  # Pillow raises many types for bad data
        raise ApiError(400, "invalid_image", f"{path[:200]}: not a decodable image ({type(exc).__name__})") from None
    rgb.thumbnail((side, side))
    out = io.BytesIO()
    rgb.save(out, "PNG")
    return out.getvalue()
