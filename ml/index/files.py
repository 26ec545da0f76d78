"""A face index on disk as plain data: faiss's own bytes and a JSON id map. Nothing is pickled.

A saved index is a folder with
- `index.faiss`: `faiss.serialize_index` of the flat or HNSW index;
- `idmap.json`: {"format", "kind", "version", "dim", "count", "settings", "keys", "identities",
  "faiss_bytes", "faiss_sha256"}.

`load_index` believes neither file: before faiss parses a byte it checks the id map's types, counts
and uniqueness, the faiss file's length and SHA-256 against the map, and the faiss header (type
tag, dimension, row count, inner-product metric) against the map, so a truncated, swapped or
foreign file is refused with `IndexFileError` instead of reaching faiss's reader (which sizes its
buffers from the file). After parsing, the index's class, dimension, count and metric are checked
again.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ml.index.face_index import FaceIndex, IndexInputError, IndexSettings

FORMAT = "facejobs.face_index/1"
INDEX_FILE = "index.faiss"
IDMAP_FILE = "idmap.json"
MAX_IDMAP_BYTES = 512 * 1024 * 1024  # ~5M keys of 100 characters; more is not an index we wrote
# faiss type tags (first 4 bytes): IndexFlatIP and IndexHNSWFlat.
FOURCC = {"flat": b"IxFI", "hnsw": b"IHNf"}
CLASSES = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSWFlat}
# fourcc, d (int32), ntotal (int64), two unused int64, is_trained (bool), metric_type (int32).
_HEADER = struct.Struct("<4siqqq?i")


class IndexFileError(ValueError):
    """A saved index folder is missing a file, corrupt, or not an index this facejobs wrote."""


def save_index(index: FaceIndex, folder: str | Path) -> dict[str, Path]:
    """Write index.faiss and idmap.json into `folder` (created); returns name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = faiss.serialize_index(index.index).tobytes()
    idmap = {
        "format": FORMAT,
        "kind": index.kind,
        "version": index.version,
        "dim": index.dim,
        "count": len(index),
        "settings": index.settings.to_json(),
        "keys": list(index.keys),
        "identities": list(index.identities),
        "faiss_bytes": len(data),
        "faiss_sha256": hashlib.sha256(data).hexdigest(),
    }
    paths = {INDEX_FILE: folder / INDEX_FILE, IDMAP_FILE: folder / IDMAP_FILE}
    paths[INDEX_FILE].write_bytes(data)
    paths[IDMAP_FILE].write_text(json.dumps(idmap))
    return paths


def _int(value: Any, name: str, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise IndexFileError(f"{IDMAP_FILE}: {name} must be an integer >= {low}, got {str(value)[:50]!r}")
    return value


def _read_idmap(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise IndexFileError(f"no {IDMAP_FILE} in {path.parent}: not a saved face index")
    if path.stat().st_size > MAX_IDMAP_BYTES:
        raise IndexFileError(f"{IDMAP_FILE} is {path.stat().st_size} bytes, over the {MAX_IDMAP_BYTES} a map may hold")
    try:
        idmap = json.loads(path.read_text())
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise IndexFileError(f"{IDMAP_FILE} is not JSON: {str(exc)[:200]}") from None
    if not isinstance(idmap, dict) or idmap.get("format") != FORMAT:
        found = idmap.get("format") if isinstance(idmap, dict) else type(idmap).__name__
        raise IndexFileError(f"{IDMAP_FILE} has format {str(found)[:50]!r}; this facejobs reads {FORMAT}")
    if idmap.get("kind") not in FOURCC:
        raise IndexFileError(
            f"{IDMAP_FILE}: kind must be one of {', '.join(FOURCC)}, got {str(idmap.get('kind'))[:50]!r}"
        )
    count = _int(idmap.get("count"), "count")
    _int(idmap.get("dim"), "dim", 1)
    _int(idmap.get("version"), "version", 1)
    _int(idmap.get("faiss_bytes"), "faiss_bytes", _HEADER.size)
    for name in ("keys", "identities"):
        values = idmap.get(name)
        if not isinstance(values, list) or len(values) != count or not all(isinstance(v, str) for v in values):
            raise IndexFileError(f"{IDMAP_FILE}: {name} must be a list of {count} strings (count)")
    if len(set(idmap["keys"])) != count:
        raise IndexFileError(f"{IDMAP_FILE}: keys must be unique, one a row")
    if not isinstance(idmap.get("faiss_sha256"), str) or not isinstance(idmap.get("settings"), dict):
        raise IndexFileError(f"{IDMAP_FILE}: faiss_sha256 (a hex digest) and settings (an object) are required")
    return idmap


def _settings(raw: dict[str, Any]) -> IndexSettings:
    known = {k: raw[k] for k in IndexSettings().to_json() if k in raw}
    settings = IndexSettings(**known)
    try:
        settings.validate()
    except IndexInputError as exc:
        raise IndexFileError(f"{IDMAP_FILE}: {exc}") from None
    return settings


def _check_header(data: bytes, idmap: dict[str, Any]) -> None:
    """The faiss header against the id map, before faiss reads (and allocates from) the rest."""
    kind, dim, count = idmap["kind"], idmap["dim"], idmap["count"]
    if len(data) < _HEADER.size:
        raise IndexFileError(f"{INDEX_FILE} is {len(data)} bytes: too short to be a faiss index")
    fourcc, d, ntotal, _, _, _, metric = _HEADER.unpack_from(data)
    if fourcc != FOURCC[kind]:
        raise IndexFileError(f"{INDEX_FILE} starts with {fourcc!r}, not the {FOURCC[kind]!r} of a {kind} index")
    if (d, ntotal, metric) != (dim, count, faiss.METRIC_INNER_PRODUCT):
        raise IndexFileError(
            f"{INDEX_FILE} holds {ntotal} rows of dimension {d} (metric {metric}); {IDMAP_FILE} says {count} rows "
            f"of dimension {dim} with inner product ({faiss.METRIC_INNER_PRODUCT})"
        )
    vectors = 4 * dim * count
    if kind == "flat":
        # The header, then the row count * d floats as a length-prefixed float vector.
        expected = _HEADER.size + 8 + vectors
        (floats,) = struct.unpack_from("<Q", data, _HEADER.size) if len(data) >= _HEADER.size + 8 else (-1,)
        if len(data) != expected or floats != dim * count:
            raise IndexFileError(f"{INDEX_FILE} is {len(data)} bytes; a flat index of {count} x {dim} is {expected}")
    else:
        links = int(idmap["settings"].get("hnsw_m", 32)) if isinstance(idmap["settings"].get("hnsw_m"), int) else 32
        bound = vectors + count * (16 * links + 64) + 1_000_000  # two link lists a row at most, levels, offsets
        if not vectors <= len(data) <= bound:
            raise IndexFileError(
                f"{INDEX_FILE} is {len(data)} bytes; an HNSW index of {count} x {dim} is under {bound}"
            )


def load_index(folder: str | Path) -> FaceIndex:
    """The index saved in `folder` by `save_index`, after checking both files against each other.

    Raises:
        IndexFileError: a file is missing, corrupt, of another format, or does not match the other.
    """
    folder = Path(folder)
    idmap = _read_idmap(folder / IDMAP_FILE)
    settings = _settings(idmap["settings"])
    path = folder / INDEX_FILE
    if not path.is_file():
        raise IndexFileError(f"no {INDEX_FILE} in {folder}: the id map has no index beside it")
    size = path.stat().st_size
    if size != idmap["faiss_bytes"]:
        raise IndexFileError(
            f"{INDEX_FILE} is {size} bytes, {IDMAP_FILE} says {idmap['faiss_bytes']}: truncated or swapped"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != idmap["faiss_sha256"]:
        raise IndexFileError(f"{INDEX_FILE} does not match the SHA-256 in {IDMAP_FILE}: corrupt or swapped")
    _check_header(data, idmap)
    try:
        # deserialize_index gives the concrete class and owns it (a downcast_index copy would not).
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:  # faiss raises RuntimeError for a file it cannot parse
        raise IndexFileError(f"{INDEX_FILE} is not a readable faiss index: {str(exc)[:200]}") from None
    kind = idmap["kind"]
    if type(index) is not CLASSES[kind] or index.d != idmap["dim"] or index.ntotal != idmap["count"]:
        raise IndexFileError(
            f"{INDEX_FILE} parsed as {type(index).__name__} of {index.ntotal} x {index.d}, "
            f"not the {kind} index of {idmap['count']} x {idmap['dim']} in {IDMAP_FILE}"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexFileError(f"{INDEX_FILE} does not use the inner-product metric")
    if kind == "hnsw":
        index.hnsw.efSearch = settings.ef_search  # type: ignore[attr-defined]
    return FaceIndex(index, tuple(idmap["keys"]), tuple(idmap["identities"]), kind, settings, idmap["version"])
