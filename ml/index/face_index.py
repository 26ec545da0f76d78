"""A face index: L2-normalised embeddings, searchable by inner product, with the id map of every row.

Rows are faces; row i has a source image key (`keys[i]`, e.g. "s3/7.pgm#0") and an identity
(`identities[i]`, "" where none is known). Up to `IndexSettings.exact_max` rows the index is exact
(faiss `IndexFlatIP`: every query is compared with every row); above it, approximate (faiss
`IndexHNSWFlat`, inner-product metric).

Why HNSW and not IVF (measured on this 2-core machine, 100k x 512-d embeddings of intrinsic
dimension 32 plus isotropic noise, single-query latency; see bench/notes/search.md):

- IVF-Flat (4*sqrt(N) lists, k-means on 40 points a list) reached recall@10 0.60 at nprobe 32 and
  0.88 at nprobe 128 (5.6 ms): its cells cut neighbourhoods of data whose intrinsic dimension is
  above ~10, so reaching 0.95 means scanning a large share of the lists.
- HNSW (M=32, efConstruction=40) reached 0.956 at efSearch 64 (0.9 ms) and 0.989 at efSearch 128
  (1.7 ms). It costs more to build (~1.2 ms a row here) and 32 links a row more memory (~256 B),
  and faiss's HNSW cannot remove rows; removal rebuilds (see below), which versions need anyway.

Versions: an index is never edited in place. `add` and `remove` return a new `FaceIndex` whose
`version` is one more than its parent's; `add` copies the faiss index (`faiss.clone_index`) and adds
to the copy, `remove` builds the kept rows anew (the graph is rebuilt, exact results stay exact).

Files (`ml.index.files`): faiss's own bytes plus a JSON id map; nothing is pickled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import faiss
import numpy as np

from ml.core.defaults import shared_defaults

IndexKind = Literal["flat", "hnsw"]
# Shared with the `index` kind's params (jobs/params/index.py): one default each, in defaults.json.
_DEFAULTS = shared_defaults("index", "IndexSettings")
# Rows whose norm is this far from 1 are refused: an unnormalised row would make inner products
# mean something else than cosine similarities, and the open-set threshold would not apply.
NORM_TOLERANCE = 1e-3


class IndexInputError(ValueError):
    """Embeddings, keys or identities that cannot form (or query) an index; the message says which."""


@dataclass(frozen=True)
class IndexSettings:
    """How an index is built and searched.

    Attributes:
        exact_max: up to this many rows the index is exact (flat); above it, HNSW.
        hnsw_m: links per row of the HNSW graph (memory ~ 8 * M bytes a row, higher is more accurate).
        ef_construction: candidate list while building (higher: better graph, slower build).
        ef_search: candidate list while searching (raised to k when k is larger); the recall knob.
    """

    exact_max: int = _DEFAULTS["exact_max"]
    hnsw_m: int = _DEFAULTS["hnsw_m"]
    ef_construction: int = _DEFAULTS["ef_construction"]
    ef_search: int = _DEFAULTS["ef_search"]

    def validate(self) -> None:
        for name in ("exact_max", "hnsw_m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise IndexInputError(f"index setting {name} must be a positive integer, got {value!r}")

    def kind_for(self, rows: int) -> IndexKind:
        return "flat" if rows <= self.exact_max else "hnsw"

    def to_json(self) -> dict[str, int]:
        return {
            "exact_max": self.exact_max,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
        }


def check_embeddings(embeddings: np.ndarray, dim: int | None = None, what: str = "embeddings") -> np.ndarray:
    """`embeddings` as a C-contiguous float32 (N, d) array of unit rows, or `IndexInputError`."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] < 1:
        raise IndexInputError(f"{what} must be a 2-d (rows, dimension) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise IndexInputError(f"{what} must be floating point, got {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise IndexInputError(f"{what} have dimension {x.shape[1]}; this index holds {dim}-d embeddings")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise IndexInputError(f"{what} hold NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        raise IndexInputError(
            f"{what} must be L2-normalised (cosine similarity is their inner product): row {int(bad[0])} has norm "
            f"{float(norms[bad[0]]):.4f} ({bad.size} rows off by more than {NORM_TOLERANCE}); normalise them first"
        )
    return x


def _strings(values: Sequence[str], n: int, what: str) -> tuple[str, ...]:
    out = tuple(values)
    if len(out) != n or not all(isinstance(v, str) for v in out):
        raise IndexInputError(f"{what} must be {n} strings, one a row; got {len(out)} values")
    return out


def _new_faiss(kind: IndexKind, dim: int, settings: IndexSettings) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.ef_construction
    index.hnsw.efSearch = settings.ef_search
    return index


@dataclass(frozen=True, eq=False)
class FaceIndex:
    """One version of a face index: the faiss index and its id map (row -> key, identity).

    Build one with `build_index`; never mutate `index` (the faiss object) yourself: `add` and
    `remove` give the next version.

    Attributes:
        index: faiss IndexFlatIP (kind "flat") or IndexHNSWFlat (kind "hnsw").
        keys: the source image key of each row (unique).
        identities: the identity of each row ("" when unknown).
        kind: "flat" (exact) or "hnsw" (approximate).
        settings: how it was built and is searched.
        version: 1 for a new index, parent's + 1 for each `add`/`remove`.
    """

    index: faiss.Index
    keys: tuple[str, ...]
    identities: tuple[str, ...]
    kind: IndexKind
    settings: IndexSettings = field(default_factory=IndexSettings)
    version: int = 1

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def embeddings(self) -> np.ndarray:
        """All rows (N, d) float32, read back from the faiss index (both kinds store them exactly)."""
        if len(self) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self.index.reconstruct_n(0, len(self)), dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities (Q, k) float32, rows (Q, k) int64) of the k most similar rows of each query.

        k is capped at the number of rows; rows are in decreasing similarity. An HNSW search looks at
        max(ef_search, k) candidates, so asking for many results does not silently lose recall.
        """
        q = check_embeddings(queries, self.dim, "queries")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise IndexInputError(f"k must be a positive integer, got {k!r}")
        k = min(k, len(self))
        if k == 0 or q.shape[0] == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(self.settings.ef_search, k)
            sims, rows = self.index.search(q, k, params=params)
        else:
            sims, rows = self.index.search(q, k)
        return sims.astype(np.float32), rows.astype(np.int64)

    def add(self, embeddings: np.ndarray, keys: Sequence[str], identities: Sequence[str]) -> FaceIndex:
        """The next version with these rows appended (this one is left as it was).

        A flat index that grows past `exact_max` becomes an HNSW index of all rows.

        Raises:
            IndexInputError: bad embeddings, or a key already in the index or repeated.
        """
        x = check_embeddings(embeddings, self.dim)
        new_keys = _strings(keys, x.shape[0], "keys")
        new_ids = _strings(identities, x.shape[0], "identities")
        _check_unique((*self.keys, *new_keys))
        kind = self.settings.kind_for(len(self) + x.shape[0])
        if kind != self.kind:
            return build_index(
                np.concatenate([self.embeddings(), x]),
                (*self.keys, *new_keys),
                (*self.identities, *new_ids),
                self.settings,
                version=self.version + 1,
            )
        copy = faiss.clone_index(self.index)
        if x.shape[0]:
            copy.add(x)
        return replace(
            self,
            index=copy,
            keys=(*self.keys, *new_keys),
            identities=(*self.identities, *new_ids),
            version=self.version + 1,
        )

    def remove(self, keys: Sequence[str]) -> FaceIndex:
        """The next version without the rows of these source keys (this one is left as it was).

        Raises:
            IndexInputError: a key that is not in the index.
        """
        drop = set(keys)
        missing = sorted(drop - set(self.keys))
        if missing:
            raise IndexInputError(f"{len(missing)} keys to remove are not in the index, e.g. {missing[0][:200]!r}")
        keep = np.array([k not in drop for k in self.keys], dtype=bool)
        rows = np.flatnonzero(keep)
        return build_index(
            self.embeddings()[rows],
            [self.keys[i] for i in rows],
            [self.identities[i] for i in rows],
            self.settings,
            version=self.version + 1,
        )


def _check_unique(keys: Sequence[str]) -> None:
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise IndexInputError(f"keys must be unique (one row a source face); {dup[:200]!r} appears twice")


def build_index(
    embeddings: np.ndarray,
    keys: Sequence[str],
    identities: Sequence[str],
    settings: IndexSettings | None = None,
    version: int = 1,
) -> FaceIndex:
    """A new index of L2-normalised `embeddings` (N, d), flat up to `settings.exact_max` rows, else HNSW.

    Raises:
        IndexInputError: embeddings not (N, d) unit rows, keys/identities not N strings, repeated keys.
    """
    settings = settings or IndexSettings()
    settings.validate()
    x = check_embeddings(embeddings)
    k = _strings(keys, x.shape[0], "keys")
    ids = _strings(identities, x.shape[0], "identities")
    _check_unique(k)
    kind = settings.kind_for(x.shape[0])
    index = _new_faiss(kind, x.shape[1], settings)
    if x.shape[0]:
        index.add(x)
    return FaceIndex(index, k, ids, kind, settings, version)
