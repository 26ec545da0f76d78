"""Open-set search: top-k faces of a query and "unknown" when even the best is not similar enough.

Thresholds: `ml.metrics.verification` reports `threshold` (and `threshold_at_far_*`) as a cosine
SIMILARITY: two faces are the same person iff similarity >= threshold; `FaceModel.threshold` is that
same number. The verify API and job speak cosine DISTANCE = 1 - similarity (same iff distance <=
threshold). `similarity_threshold` is the one place that turns either into the similarity this
module compares against; callers pass what they have, by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.index.face_index import FaceIndex, IndexInputError

UNKNOWN = "unknown"


def similarity_threshold(*, similarity: float | None = None, distance: float | None = None) -> float:
    """The cosine-similarity threshold of a similarity (metrics' `threshold`) or a distance (verify's).

    Exactly one is given; distance d means similarity 1 - d (cosine distance of unit vectors).

    Raises:
        IndexInputError: neither or both given, or a value outside [-1, 1] (similarity) / [0, 2] (distance).
    """
    if (similarity is None) == (distance is None):
        raise IndexInputError("give the threshold as exactly one of similarity= or distance=")
    if similarity is not None:
        if not (isinstance(similarity, int | float) and math.isfinite(similarity) and -1.0 <= similarity <= 1.0):
            raise IndexInputError(f"a cosine-similarity threshold is in [-1, 1], got {similarity!r}")
        return float(similarity)
    assert distance is not None  # for the type checker: the check above leaves one of them
    if not (isinstance(distance, int | float) and math.isfinite(distance) and 0.0 <= distance <= 2.0):
        raise IndexInputError(f"a cosine-distance threshold is in [0, 2], got {distance!r}")
    return 1.0 - float(distance)


@dataclass(frozen=True)
class Match:
    """One index row found for a query."""

    row: int
    key: str
    identity: str
    similarity: float

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "key": self.key, "identity": self.identity, "similarity": self.similarity}


@dataclass(frozen=True)
class SearchResult:
    """A query's top matches (decreasing similarity) and the open-set decision.

    Attributes:
        matches: the top-k rows.
        identity: the best match's identity, or `UNKNOWN` when its similarity is below the
            threshold (or the index is empty).
        known: False when the decision is `UNKNOWN`.
        threshold: the cosine-similarity threshold used (None: closed set, never unknown).
    """

    matches: tuple[Match, ...]
    identity: str
    known: bool
    threshold: float | None

    @property
    def best_similarity(self) -> float | None:
        return self.matches[0].similarity if self.matches else None

    def to_json(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "known": self.known,
            "threshold": self.threshold,
            "best_similarity": self.best_similarity,
            "matches": [m.to_json() for m in self.matches],
        }


def decide(best_similarity: float | None, best_identity: str, threshold: float | None) -> tuple[str, bool]:
    """(identity, known) of a query whose best match has this similarity and identity."""
    if best_similarity is None or (threshold is not None and best_similarity < threshold):
        return UNKNOWN, False
    return best_identity, True


def search_faces(
    index: FaceIndex, queries: np.ndarray, k: int = 5, threshold: float | None = None
) -> list[SearchResult]:
    """Top-k matches and the open-set decision of each L2-normalised query (Q, d).

    Args:
        index: the gallery.
        queries: embeddings of the probe faces, by the index's model.
        k: matches a query.
        threshold: cosine SIMILARITY (`similarity_threshold` converts a distance); None: closed set.
    """
    if threshold is not None:
        threshold = similarity_threshold(similarity=threshold)
    sims, rows = index.search(queries, k)
    results = []
    for srow, rrow in zip(sims, rows, strict=True):
        matches = tuple(
            Match(int(r), index.keys[r], index.identities[r], float(s))
            for s, r in zip(srow, rrow, strict=True)
            if r >= 0
        )
        best = matches[0] if matches else None
        identity, known = decide(best.similarity if best else None, best.identity if best else "", threshold)
        results.append(SearchResult(matches, identity, known, threshold))
    return results
