"""ml.metrics.verification against hand-computed examples and slow reimplementations; plots render."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from torch import nn

from ml.metrics.plots import distances_png, evaluation_plots, loss_png, pca_2d, pca_png, roc_png
from ml.metrics.verification import (
    VerificationError,
    auc,
    best_threshold,
    embed_images,
    evaluate_embeddings,
    identification_accuracy,
    kfold_accuracy,
    make_pairs,
    roc_curve,
    tar_at_far,
)

# Six pairs: positives score 0.9, 0.8, 0.6; negatives 0.7, 0.5, 0.4.
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
SAME = np.array([True, True, False, True, False, False])


def test_roc_auc_tar_on_a_hand_computed_example() -> None:
    fpr, tpr, thr = roc_curve(SCORES, SAME)
    assert thr[0] == np.inf
    np.testing.assert_allclose(thr[1:], SCORES)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    # 8 of the 9 (positive, negative) pairs are ordered correctly: 0.6 < 0.7 is the only miss.
    assert auc(fpr, tpr) == pytest.approx(8 / 9, abs=1e-15)
    assert tar_at_far(SCORES, SAME, 0.0) == (pytest.approx(2 / 3), pytest.approx(0.8))
    assert tar_at_far(SCORES, SAME, 1 / 3) == (pytest.approx(1.0), pytest.approx(0.6))
    assert tar_at_far(SCORES, SAME, 0.2) == (pytest.approx(2 / 3), pytest.approx(0.8))


def test_best_threshold_hand_computed() -> None:
    # Candidates -0.6, 0.45, 0.55, 0.65, 0.75, 0.85, 1.9 give accuracies 3,4,5,4,5,4,3 / 6;
    # the two best (0.55 and 0.75) tie and the rule takes the middle one of the tied list: 0.75.
    thr, acc = best_threshold(SCORES, SAME)
    assert thr == pytest.approx(0.75)
    assert acc == pytest.approx(5 / 6)


def _slow_auc(scores: np.ndarray, same: np.ndarray) -> float:
    pos, neg = scores[same], scores[~same]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (pos.size * neg.size)


def _slow_tar(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    best = 0.0
    for t in [np.inf, *sorted(set(scores.tolist()))]:
        acc = scores >= t
        if np.mean(acc[~same]) <= far:
            best = max(best, float(np.mean(acc[same])))
    return best


def _slow_best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    values = sorted(set(scores.tolist()))
    cands = [values[0] - 1.0] + [(a + b) / 2 for a, b in itertools.pairwise(values)] + [values[-1] + 1.0]
    accs = [float(np.mean((scores >= t) == same)) for t in cands]
    tied = [c for c, a in zip(cands, accs, strict=True) if a == max(accs)]
    return tied[len(tied) // 2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_slow_reimplementations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    same = rng.random(300) < 0.5
    # Rounded scores make ties, the case fast implementations get wrong.
    scores = np.round(np.where(same, rng.normal(0.6, 0.2, 300), rng.normal(0.2, 0.2, 300)), 2)
    fpr, tpr, _ = roc_curve(scores, same)
    assert auc(fpr, tpr) == pytest.approx(_slow_auc(scores, same), abs=1e-12)
    assert auc(fpr, tpr) == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    for far in (1e-2, 1e-3, 0.1):
        assert tar_at_far(scores, same, far)[0] == pytest.approx(_slow_tar(scores, same, far), abs=1e-12)
    assert best_threshold(scores, same)[0] == pytest.approx(_slow_best_threshold(scores, same), abs=1e-12)


def test_kfold_matches_a_slow_loop_and_never_uses_the_test_fold() -> None:
    rng = np.random.default_rng(7)
    same = rng.random(400) < 0.5
    scores = np.round(np.where(same, rng.normal(0.5, 0.25, 400), rng.normal(0.1, 0.25, 400)), 3)
    kf = kfold_accuracy(scores, same, folds=10, seed=3)
    assert np.bincount(kf.fold_of_pair).tolist() == [40] * 10
    for k in range(10):
        test = kf.fold_of_pair == k
        thr = _slow_best_threshold(scores[~test], same[~test])
        assert kf.thresholds[k] == pytest.approx(thr, abs=1e-12)
        assert kf.accuracies[k] == pytest.approx(np.mean((scores[test] >= thr) == same[test]), abs=1e-12)
    # Scrambling one fold's scores and labels leaves that fold's threshold exactly as it was.
    for k in (0, 4, 9):
        test = kf.fold_of_pair == k
        s2, y2 = scores.copy(), same.copy()
        s2[test] = rng.uniform(-1, 1, test.sum())
        y2[test] = ~y2[test]
        kf2 = kfold_accuracy(s2, y2, folds=10, seed=3)
        assert kf2.thresholds[k] == kf.thresholds[k]
        others = [j for j in range(10) if j != k]
        assert not np.array_equal(kf2.thresholds[others], kf.thresholds[others])


def test_make_pairs_is_balanced_unique_and_seeded() -> None:
    labels = np.repeat(np.arange(5), 6)  # 75 same pairs, 360 different pairs
    a, b, same = make_pairs(labels, max_pairs=50, seed=0)
    assert same.sum() == 50 and (~same).sum() == 50
    assert np.all(a < b)
    assert np.array_equal(labels[a] == labels[b], same)
    assert len(set(zip(a.tolist(), b.tolist(), strict=True))) == 100
    a2, b2, _ = make_pairs(labels, max_pairs=50, seed=0)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    a3, _, _ = make_pairs(labels, max_pairs=1000, seed=0)
    assert a3.size == 150  # capped by the 75 possible same pairs
    with pytest.raises(VerificationError, match="0 same"):
        make_pairs(np.arange(4), seed=0)


def test_identification_by_nearest_centre_hand_example() -> None:
    # Classes 0 and 1 sit near e1 and e2; class 2 has one image near each. Whichever image of each
    # class the seeded gallery takes, the probes of 0 and 1 are right and class 2's probe lands on
    # the centre of 0 or 1: exactly 2 of 3 probes are identified, for every seed.
    emb = np.array([[1, 0.1, 0], [1, -0.1, 0], [0.1, 1, 0], [-0.1, 1, 0], [1, 0, 0.3], [0, 1, 0.3]], dtype=float)
    labels = np.array([0, 0, 1, 1, 2, 2])
    for seed in range(5):
        assert identification_accuracy(emb, labels, gallery_fraction=0.5, seed=seed) == (pytest.approx(2 / 3), 3)
    with pytest.raises(VerificationError, match="at least 2 identities"):
        identification_accuracy(emb[:3], np.array([0, 0, 1]))


def test_evaluate_embeddings_separable_and_random() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 10)
    centres = np.eye(8)
    emb = centres[labels] + 0.01 * rng.normal(size=(80, 8))
    m = evaluate_embeddings(emb, labels, folds=10, max_pairs=300, seed=0).metrics
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0 and m["identification_accuracy"] == 1.0
    assert m["tar_at_far_1e-3"] == 1.0 and m["num_same"] == 300 and m["num_different"] == 300
    assert 0.0 < m["threshold"] < 1.0
    noise = evaluate_embeddings(rng.normal(size=(80, 8)), labels, max_pairs=300, seed=0).metrics
    assert 0.4 < noise["auc"] < 0.6
    with pytest.raises(VerificationError, match="at least 2 identities"):
        evaluate_embeddings(emb[:10], labels[:10])


def test_embed_images_normalises_and_flip_tta_sums_the_mirror() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 5, 6))
    x = torch.randn(7, 2, 4, 5)
    plain = embed_images(net, x, batch_size=3)
    torch.testing.assert_close(plain, nn.functional.normalize(net(x), dim=1).detach())
    tta = embed_images(net, x, batch_size=3, flip_tta=True)
    torch.testing.assert_close(tta, nn.functional.normalize(net(x) + net(x.flip(3)), dim=1).detach())
    assert not torch.allclose(plain, tta)


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as img:
        return img.size


def test_plots_render_pngs_and_pca_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    emb = np.eye(4)[labels] * 3 + rng.normal(size=(100, 4))
    pts = pca_2d(emb)
    ref = PCA(n_components=2).fit_transform(emb)
    for j in range(2):  # equal up to each component's sign
        assert np.allclose(pts[:, j], ref[:, j], atol=1e-8) or np.allclose(pts[:, j], -ref[:, j], atol=1e-8)
    report = evaluate_embeddings(emb, labels, max_pairs=200, seed=0)
    w, h = _png_size(roc_png(report.fpr, report.tpr, report.metrics["auc"], {"FAR 1e-2": 1e-2}))
    assert w > 200 and h > 200
    assert _png_size(distances_png(report.scores, report.same, report.metrics["threshold"]))[0] > 200
    assert _png_size(loss_png([{"epoch": 1, "loss": 3.0, "acc": 0.5}, {"epoch": 2, "loss": 1.0, "acc": 0.9}]))[0] > 200
    assert _png_size(pca_png(emb, labels, ["a", "b", "c", "d"]))[0] > 200
    plots = evaluation_plots(report, emb, labels, None, history=[{"epoch": 1, "loss": 1.0, "acc": 0.5}])
    assert sorted(plots) == ["distances.png", "loss.png", "pca.png", "roc.png"]
