"""1:N identification metrics of a probe set searched against a gallery index.

Probes whose identity has rows in the gallery are *mated*; the others (people the gallery does not
hold) are *non-mated*. Identities are ranked by their best row: a probe's candidate list is the
gallery identities in decreasing order of max similarity over their rows.

- Closed set (mated probes only): rank-r = share of mated probes whose identity is among their
  first r candidates.
- Open set (NIST FRVT 1:N terms, candidate rank 1): a search "alarms" when its best similarity is
  >= t. FPIR(t) = share of non-mated probes that alarm (a stranger taken for someone); FNIR(t) =
  share of mated probes that do not alarm on their own identity at rank 1 (below t, or the wrong
  person first). `fnir_at_fpir` takes the lowest t with FPIR(t) <= the target (at most
  floor(target * non-mated) strangers alarm) and reports FNIR there.

All thresholds are cosine similarities (see `ml.index.search.similarity_threshold`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ml.index.face_index import FaceIndex
from ml.metrics.verification import VerificationError


def fpir_key(fpir: float) -> str:
    """Metric name of FNIR at `fpir`: 0.01 -> "fnir_at_fpir_1e-2"."""
    return f"fnir_at_fpir_{fpir:.0e}".replace("e-0", "e-")


def candidate_identities(
    sims: np.ndarray, rows: np.ndarray, gallery_identities: Sequence[str], depth: int
) -> tuple[list[list[str]], np.ndarray]:
    """(first `depth` candidate identities of each probe, best similarity of each probe).

    `sims`/`rows` are each probe's top rows in decreasing similarity (an index search deep enough
    that `depth` identities appear: see `search_depth`); rows of identity "" are skipped.
    """
    lists, best = [], np.full(sims.shape[0], -np.inf)
    for i in range(sims.shape[0]):
        seen: list[str] = []
        for s, r in zip(sims[i], rows[i], strict=True):
            if r < 0:
                continue
            who = gallery_identities[r]
            if who and who not in seen:
                if not seen:
                    best[i] = float(s)
                seen.append(who)
                if len(seen) == depth:
                    break
        lists.append(seen)
    return lists, best


def search_depth(gallery_identities: Sequence[str], ranks: int) -> int:
    """Rows a search needs so that its first `ranks` identities are exact: the largest identity's
    row count times (ranks - 1), plus one (every row of ranks - 1 identities, then one of the next)."""
    counts: dict[str, int] = {}
    for who in gallery_identities:
        counts[who] = counts.get(who, 0) + 1
    return min(len(gallery_identities), max(counts.values(), default=0) * max(ranks - 1, 0) + 1)


def threshold_at_fpir(non_mated_best: np.ndarray, fpir: float) -> float:
    """The lowest similarity threshold at which at most floor(fpir * n) of the n non-mated probes alarm.

    Ties are never split: the threshold is just above the first score that would exceed the budget.
    """
    s = np.sort(np.asarray(non_mated_best, dtype=np.float64))[::-1]
    allowed = math.floor(fpir * s.size + 1e-9)
    if allowed >= s.size:
        return -math.inf
    return float(np.nextafter(s[allowed], math.inf))


def open_set_rates(
    threshold: float, mated_best: np.ndarray, mated_top1_correct: np.ndarray, non_mated_best: np.ndarray
) -> tuple[float, float]:
    """(FPIR, FNIR) at a similarity threshold."""
    fpir = float(np.mean(non_mated_best >= threshold)) if non_mated_best.size else 0.0
    hit = mated_top1_correct & (mated_best >= threshold)
    fnir = float(1.0 - np.mean(hit)) if hit.size else 0.0
    return fpir, fnir


def identification_report(
    index: FaceIndex,
    probes: np.ndarray,
    probe_identities: Sequence[str],
    ranks: Sequence[int] = (1, 5),
    fpirs: Sequence[float] = (0.01, 0.1),
    threshold: float | None = None,
) -> dict[str, Any]:
    """Rank-r (closed set) and FNIR at FPIR (open set) of `probes` (L2-normalised, one a face) against `index`.

    Args:
        index: the gallery (its `identities` name each row's person).
        probes: probe embeddings (Q, d) by the index's model.
        probe_identities: each probe's true identity; those absent from the gallery are non-mated.
        ranks: closed-set ranks to report ("rank_1", "rank_5").
        fpirs: open-set operating points ("fnir_at_fpir_1e-2", with "threshold_at_fpir_1e-2" and the
            FPIR actually reached, "fpir_at_fpir_1e-2").
        threshold: a cosine-similarity threshold (the model's); adds "fpir_at_threshold" and
            "fnir_at_threshold".

    Raises:
        VerificationError: no mated probe, or (with fpirs) no non-mated probe.
    """
    who = list(probe_identities)
    if len(who) != len(probes):
        raise VerificationError(f"{len(probes)} probes but {len(who)} probe identities")
    known = {i for i in index.identities if i}
    mated = np.array([w in known for w in who], dtype=bool)
    if not mated.any():
        raise VerificationError("identification needs probes of people in the gallery; none of the probes is")
    if fpirs and mated.all():
        raise VerificationError("FNIR at FPIR needs probes of people not in the gallery; every probe is in it")
    depth = max(ranks, default=1)
    sims, rows = index.search(probes, search_depth(index.identities, depth))
    lists, best = candidate_identities(sims, rows, index.identities, depth)
    true_rank = np.array([lst.index(w) + 1 if w in lst else 0 for lst, w in zip(lists, who, strict=True)])
    report: dict[str, Any] = {
        "num_probes": len(who),
        "num_mated": int(mated.sum()),
        "num_non_mated": int((~mated).sum()),
        "num_gallery_rows": len(index),
        "num_gallery_identities": len(known),
        "index_kind": index.kind,
    }
    for r in ranks:
        hits = (true_rank[mated] >= 1) & (true_rank[mated] <= r)
        report[f"rank_{r}"] = float(np.mean(hits))
    top1 = true_rank[mated] == 1
    mated_best, non_mated_best = best[mated], best[~mated]
    for fpir in fpirs:
        t = threshold_at_fpir(non_mated_best, fpir)
        reached, fnir = open_set_rates(t, mated_best, top1, non_mated_best)
        key = fpir_key(fpir)
        report[key] = fnir
        report[key.replace("fnir_at_", "fpir_at_")] = reached
        # -inf (every stranger may alarm) is not JSON: recorded as None.
        report[key.replace("fnir_", "threshold_")] = t if math.isfinite(t) else None
    if threshold is not None:
        fpir_t, fnir_t = open_set_rates(float(threshold), mated_best, top1, non_mated_best)
        report.update(threshold=float(threshold), fpir_at_threshold=fpir_t, fnir_at_threshold=fnir_t)
    return report
