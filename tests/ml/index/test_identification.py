"""1:N identification on ORL: a gallery of s1-s20 (images 1-5) indexed, probes that the model never saw.

Every figure of `identification_report` and every open-set decision of `search_faces` is checked
against a brute-force computation here: all probe-gallery similarities in float64, identities
ranked by their best image, thresholds found by trying every score. Slow: the module's model
trains for ~45 s on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ml.index import UNKNOWN, FaceIndex, build_index, search_faces, similarity_threshold
from ml.metrics.identification import identification_report, threshold_at_fpir
from tests.support.orl_gallery import OrlSplit, orl_embeddings, orl_gallery_model, orl_split

pytestmark = [pytest.mark.slow, pytest.mark.pretrained("orl_gallery_se_resnet18")]


@pytest.fixture(scope="module")
def orl(orl_dir: Path) -> tuple[OrlSplit, np.ndarray, float]:
    """The ORL split, every image's embedding by the gallery-trained se_resnet18, and its threshold."""
    folder = orl_gallery_model(orl_dir, "se_resnet18")
    threshold = json.loads((folder / "metrics.json").read_text())["threshold"]
    return orl_split(orl_dir), orl_embeddings(orl_dir, folder), float(threshold)


def gallery_index(split: OrlSplit, emb: np.ndarray) -> FaceIndex:
    g = split.gallery
    return build_index(emb[g], [split.keys[i] for i in g], [split.people[i] for i in g])


def brute_force(split: OrlSplit, emb: np.ndarray) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """(probe rows, each probe's identities by decreasing best similarity, each probe's best similarity)."""
    probes = np.r_[split.mated, split.non_mated]
    sims = emb[probes].astype(np.float64) @ emb[split.gallery].astype(np.float64).T
    people = sorted({split.people[i] for i in split.gallery})
    per_person = np.stack(
        [sims[:, [j for j, i in enumerate(split.gallery) if split.people[i] == p]].max(1) for p in people], 1
    )
    order = np.argsort(-per_person, axis=1, kind="stable")
    return probes, [[people[j] for j in row] for row in order], per_person.max(1)


def test_the_split_is_the_issues(orl: tuple[OrlSplit, np.ndarray, float]) -> None:
    split, emb, _ = orl
    assert emb.shape == (300, 64)
    assert len(split.gallery) == 100 and len(split.mated) == 100 and len(split.non_mated) == 100
    assert {split.keys[i] for i in split.gallery} == {f"s{p}/{n}.pgm" for p in range(1, 21) for n in range(1, 6)}
    assert {split.keys[i] for i in split.mated} == {f"s{p}/{n}.pgm" for p in range(1, 21) for n in range(6, 11)}
    assert {split.people[i] for i in split.non_mated} == {f"s{p}" for p in range(21, 31)}


def test_rank_and_open_set_figures_equal_brute_force(orl: tuple[OrlSplit, np.ndarray, float]) -> None:
    split, emb, threshold = orl
    index = gallery_index(split, emb)
    probes, ranked, best = brute_force(split, emb)
    who = [split.people[i] for i in probes]
    report = identification_report(index, emb[probes], who, threshold=threshold)

    mated = np.array([int(w[1:]) <= 20 for w in who])
    true_rank = np.array([r.index(w) + 1 if m else 0 for r, w, m in zip(ranked, who, mated, strict=True)])
    assert report["num_mated"] == 100 and report["num_non_mated"] == 100 and report["num_gallery_identities"] == 20
    assert report["rank_1"] == float(np.mean(true_rank[mated] == 1))
    assert report["rank_5"] == float(np.mean(true_rank[mated] <= 5))
    top1 = true_rank[mated] == 1
    for fpir, key in ((0.01, "1e-2"), (0.1, "1e-1")):
        # The lowest threshold (trying every score, and just above it) with at most fpir * 100 strangers alarming.
        candidates = sorted({-math.inf, *(np.nextafter(s, math.inf) for s in best)})
        t = next(c for c in candidates if np.sum(best[~mated] >= c) <= math.floor(fpir * 100))
        assert report[f"threshold_at_fpir_{key}"] == pytest.approx(t, abs=1e-6)
        assert report[f"fpir_at_fpir_{key}"] == float(np.mean(best[~mated] >= t)) <= fpir
        assert report[f"fnir_at_fpir_{key}"] == pytest.approx(1 - np.mean(top1 & (best[mated] >= t)), abs=1e-12)
    assert report["fpir_at_threshold"] == float(np.mean(best[~mated] >= threshold))
    assert report["fnir_at_threshold"] == pytest.approx(1 - np.mean(top1 & (best[mated] >= threshold)), abs=1e-12)
    # What these figures are for this model (trained on 60 gallery images): most probes are found.
    assert report["rank_1"] >= 0.8 and report["rank_5"] >= report["rank_1"]
    assert report["fnir_at_fpir_1e-1"] <= report["fnir_at_fpir_1e-2"]


def test_search_says_unknown_below_the_threshold(orl: tuple[OrlSplit, np.ndarray, float]) -> None:
    split, emb, threshold = orl
    index = gallery_index(split, emb)
    probes, ranked, best = brute_force(split, emb)
    results = search_faces(index, emb[probes], k=5, threshold=threshold)
    assert len(results) == 200
    for res, names, b in zip(results, ranked, best, strict=True):
        assert len(res.matches) == 5
        assert res.matches[0].similarity == pytest.approx(b, abs=1e-5)
        assert [m.similarity for m in res.matches] == sorted((m.similarity for m in res.matches), reverse=True)
        assert res.matches[0].identity == names[0] and res.matches[0].key.startswith(names[0] + "/")
        assert res.identity == (names[0] if b >= threshold else UNKNOWN) and res.known == (b >= threshold)
    json.dumps([r.to_json() for r in results])  # JSON-ready
    # A closed-set search never answers unknown; a distance threshold means 1 - similarity.
    assert all(r.known for r in search_faces(index, emb[probes], k=1))
    assert similarity_threshold(distance=1 - threshold) == pytest.approx(threshold)
    assert threshold_at_fpir(np.array([0.5, 0.4, 0.4]), 0.5) == np.nextafter(0.4, 1)
