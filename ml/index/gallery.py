"""Galleries from bulk-embedding outputs: the rows an `index` job adds, removes and describes.

An `embed` job's folder (embeddings.npy, index.csv, config.json, as `ml.faces.embed.EmbedResult.write`
leaves it) becomes `EmbeddedFaces`: one row per face with
- key: "<dataset ref>/<path in the dataset>#<face>" (unique across datasets and faces of one image),
- source: "<dataset ref>/<path in the dataset>" (also a `dataset:<id>/<path>` image reference),
- identity: the first folder of the path ("s3" for "s3/7.pgm"; "" for a file at the top).

`remove` selectors are sources (full, or the path inside the dataset) or identities.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.index.face_index import IndexInputError

MAX_INDEX_CSV_BYTES = 1024**3


@dataclass(frozen=True)
class EmbeddedFaces:
    """The faces of one embed output: unit embeddings (N, d), keys, identities, the model and dataset."""

    embeddings: np.ndarray
    keys: tuple[str, ...]
    identities: tuple[str, ...]
    model: str
    dataset: str
    flip_tta: bool | None


def source_of(key: str) -> str:
    """The source image of an index row key ("dataset:a/s3/7.pgm#0" -> "dataset:a/s3/7.pgm")."""
    return key.rsplit("#", 1)[0]


def identity_of(path: str) -> str:
    """The person of an image path inside its dataset: its first folder, "" for a top-level file."""
    return path.split("/", 1)[0] if "/" in path else ""


def read_embedded(folder: str | Path, what: str = "embed output") -> EmbeddedFaces:
    """The faces an embed job wrote into `folder`.

    Raises:
        IndexInputError: a file is missing, or the files disagree (rows, dimension, model).
    """
    folder = Path(folder)
    paths = {n: folder / n for n in ("embeddings.npy", "index.csv", "config.json")}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing:
        raise IndexInputError(f"{what} has no {', '.join(missing)}: not the output of an embed job")
    try:
        config = json.loads(paths["config.json"].read_text())
        emb = np.load(paths["embeddings.npy"], allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IndexInputError(f"{what}: unreadable embed output: {str(exc)[:200]}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise IndexInputError(f"{what}: config.json names no model")
    if paths["index.csv"].stat().st_size > MAX_INDEX_CSV_BYTES:
        raise IndexInputError(f"{what}: index.csv is over {MAX_INDEX_CSV_BYTES} bytes")
    with paths["index.csv"].open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if emb.ndim != 2 or emb.shape[0] != len(rows):
        raise IndexInputError(f"{what}: {len(rows)} index rows but embeddings of shape {emb.shape}")
    dataset = str(config.get("dataset") or "")
    keys = tuple(f"{dataset}/{r['key']}#{r['face']}" for r in rows)
    identities = tuple(identity_of(r["key"]) for r in rows)
    settings = config.get("settings") if isinstance(config.get("settings"), dict) else {}
    flip = settings.get("flip_tta") if isinstance(settings, dict) else None
    return EmbeddedFaces(np.ascontiguousarray(emb, dtype=np.float32), keys, identities, config["model"], dataset, flip)


def concat(parts: Sequence[EmbeddedFaces], model: str | None = None) -> tuple[np.ndarray, list[str], list[str], str]:
    """(embeddings, keys, identities, model) of several embed outputs of one model.

    Raises:
        IndexInputError: no part, or parts of different models or dimensions.
    """
    if not parts:
        raise IndexInputError("no embed outputs to index")
    want = model or parts[0].model
    for p in parts:
        if p.model != want:
            raise IndexInputError(
                f"every embed job of an index must use one model: {p.dataset or 'a part'} was embedded by "
                f"{p.model}, the index holds {want}"
            )
    dims = {p.embeddings.shape[1] for p in parts}
    if len(dims) != 1:
        raise IndexInputError(f"embed outputs of dimensions {sorted(dims)} cannot share an index")
    emb = np.concatenate([p.embeddings for p in parts])
    keys = [k for p in parts for k in p.keys]
    ids = [i for p in parts for i in p.identities]
    return emb, keys, ids, want


def keys_to_remove(keys: Sequence[str], identities: Sequence[str], selectors: Sequence[str]) -> list[str]:
    """The row keys that `selectors` (sources, paths inside a dataset, or identities) name.

    Raises:
        IndexInputError: a selector that names no row (a typo would otherwise remove nothing silently).
    """
    chosen: set[str] = set()
    for sel in selectors:
        hit = [
            k
            for k, who in zip(keys, identities, strict=True)
            if sel in (who, source_of(k)) or (source_of(k).endswith("/" + sel) and not sel.startswith("dataset:"))
        ]
        if not hit:
            raise IndexInputError(f"remove: {sel[:200]!r} is neither a source image nor an identity of the index")
        chosen.update(hit)
    return [k for k in keys if k in chosen]


def counts(identities: Sequence[str]) -> dict[str, Any]:
    """Rows, identities and rows without an identity."""
    named = [i for i in identities if i]
    return {"rows": len(identities), "identities": len(set(named)), "unlabelled_rows": len(identities) - len(named)}
