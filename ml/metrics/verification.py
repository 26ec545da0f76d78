"""Face verification and identification metrics of an embedding model.

Scores are cosine similarities of L2-normalised embeddings; a pair is accepted as "same identity"
iff its score >= the threshold. Everything here is deterministic given a seed:

- `make_pairs`: balanced same/different pairs from labelled (held-out) images.
- `roc_curve`, `auc`, `tar_at_far`: the ROC over the pairs.
- `kfold_accuracy`: accuracy at the best threshold chosen by k-fold cross-validation: for each fold
  the threshold is picked on the other k-1 folds only, then applied to that fold.
- `identification_accuracy`: nearest class centre, centres from a gallery part of each class,
  probes from the rest.
- `evaluate_embeddings`: all of it, as a JSON-ready metrics dict plus the arrays the plots need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.core.errors import InputError


class VerificationError(InputError):
    """The evaluation data cannot give the asked metrics (e.g. a single identity)."""


@torch.no_grad()
def embed_images(
    backbone: nn.Module,
    images: torch.Tensor,
    batch_size: int = 256,
    flip_tta: bool = False,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """L2-normalised embeddings (N, d) on the CPU of already-normalised `images` (N, C, H, W).

    With `flip_tta` each embedding is the sum of the image's and its horizontal mirror's before
    normalisation (useful for faces; usually off for digits, whose mirror images are not digits).
    The backbone is put in eval mode and left there.
    """
    backbone.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        e = backbone(x).float()
        if flip_tta:
            e = e + backbone(torch.flip(x, dims=[3])).float()
        out.append(F.normalize(e, dim=1).cpu())
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def make_pairs(
    labels: np.ndarray | torch.Tensor, max_pairs: int = 3000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced pairs (a, b, same): n same-identity and n different-identity pairs, a < b.

    n = min(max_pairs, number of possible same pairs, number of possible different pairs); when
    a kind has more candidates than n, n of them are drawn without replacement.

    Raises:
        VerificationError: no same pair (every identity has one image) or no different pair.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    a, b = np.triu_indices(y.size, k=1)
    same = y[a] == y[b]
    pos, neg = np.flatnonzero(same), np.flatnonzero(~same)
    if pos.size == 0 or neg.size == 0:
        raise VerificationError(
            f"verification needs same-identity and different-identity pairs; {y.size} images of "
            f"{np.unique(y).size} identities give {pos.size} same and {neg.size} different pairs"
        )
    n = min(int(max_pairs), pos.size, neg.size)
    rng = np.random.default_rng(seed)
    pick = np.concatenate([np.sort(rng.choice(pos, n, replace=False)), np.sort(rng.choice(neg, n, replace=False))])
    return a[pick], b[pick], same[pick]


def pair_scores(embeddings: torch.Tensor | np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair (embeddings are normalised here again, to be safe)."""
    e = F.normalize(torch.as_tensor(np.asarray(embeddings), dtype=torch.float64), dim=1)
    ia, ib = torch.as_tensor(a), torch.as_tensor(b)
    return (e[ia] * e[ib]).sum(1).numpy()


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): one point per distinct score, thresholds decreasing from +inf.

    Point i accepts the pairs with score >= thresholds[i]; the first point (+inf) accepts none.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise VerificationError("a ROC needs both same and different pairs")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(y)[last_of_value]
    fp = np.cumsum(~y)[last_of_value]
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    return fpr, tpr, np.r_[np.inf, s[last_of_value]]


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under the ROC (trapezoids; equals the Mann-Whitney statistic with ties counted half)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float) -> tuple[float, float]:
    """(TAR, threshold): the highest true-accept rate of a threshold whose false-accept rate <= far."""
    fpr, tpr, thr = roc_curve(scores, same)
    ok = np.flatnonzero(fpr <= far)
    best = ok[np.argmax(tpr[ok])]
    return float(tpr[best]), float(thr[best])


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Ascending thresholds that realise every distinct accept set: midpoints, plus one below and above."""
    v = np.unique(np.asarray(scores, dtype=np.float64))
    return np.r_[v[0] - 1.0, (v[1:] + v[:-1]) / 2.0, v[-1] + 1.0]


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy on these pairs.

    Ties between candidate thresholds go to the middle one of the tied (ascending) candidates
    (index len // 2), which keeps the threshold away from the edge of a flat optimum.
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    cands = candidate_thresholds(s)
    # accepted(t) = #scores >= t; counts via sorted search, O(n log n) for all candidates.
    pos_sorted, neg_sorted = np.sort(s[y]), np.sort(s[~y])
    tp = pos_sorted.size - np.searchsorted(pos_sorted, cands, side="left")
    tn = np.searchsorted(neg_sorted, cands, side="left")
    acc = (tp + tn) / s.size
    tied = np.flatnonzero(acc == acc.max())
    i = tied[tied.size // 2]
    return float(cands[i]), float(acc[i])


@dataclass
class KFoldResult:
    """Per-fold thresholds (chosen on the other folds) and accuracies (on the fold itself)."""

    accuracies: np.ndarray
    thresholds: np.ndarray
    fold_of_pair: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.accuracies.mean())

    @property
    def threshold(self) -> float:
        return float(self.thresholds.mean())


def assign_folds(n: int, folds: int, seed: int) -> np.ndarray:
    """Fold index of each of n items: a seeded permutation dealt round-robin (sizes differ by <= 1)."""
    fold = np.empty(n, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return fold


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, folds: int = 10, seed: int = 0) -> KFoldResult:
    """Accuracy by k-fold CV: each fold's threshold is chosen on the other folds, never on itself."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    if folds < 2 or folds > s.size:
        raise VerificationError(f"folds must be between 2 and the number of pairs ({s.size}), got {folds}")
    fold = assign_folds(s.size, folds, seed)
    accs, thrs = np.zeros(folds), np.zeros(folds)
    for k in range(folds):
        test = fold == k
        thr, _ = best_threshold(s[~test], y[~test])
        thrs[k] = thr
        accs[k] = float(np.mean((s[test] >= thr) == y[test]))
    return KFoldResult(accs, thrs, fold)


def identification_accuracy(
    embeddings: torch.Tensor | np.ndarray,
    labels: np.ndarray | torch.Tensor,
    gallery_fraction: float = 0.5,
    seed: int = 0,
) -> tuple[float, int]:
    """(accuracy, number of probes) of nearest-class-centre identification.

    For each identity with at least 2 images, round(n * gallery_fraction) of them (at least 1,
    leaving at least 1) form the gallery whose mean normalised embedding is the class centre; the
    others are probes, assigned to the centre of highest cosine similarity.
    """
    e = F.normalize(torch.as_tensor(np.asarray(embeddings), dtype=torch.float64), dim=1).numpy()
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    centres, centre_ids, probes = [], [], []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if members.size < 2:
            continue
        members = rng.permutation(members)
        n_gal = min(max(1, round(members.size * gallery_fraction)), members.size - 1)
        centre = e[members[:n_gal]].mean(0)
        centres.append(centre / max(np.linalg.norm(centre), 1e-12))
        centre_ids.append(c)
        probes.append(members[n_gal:])
    if len(centres) < 2:
        raise VerificationError("identification needs at least 2 identities with 2 or more images each")
    probe_idx = np.concatenate(probes)
    sims = e[probe_idx] @ np.stack(centres).T
    predicted = np.asarray(centre_ids)[np.argmax(sims, axis=1)]
    return float(np.mean(predicted == y[probe_idx])), int(probe_idx.size)


@dataclass
class VerificationReport:
    """Metrics (JSON-ready) plus the arrays that the plots draw."""

    metrics: dict[str, float | int | None]
    scores: np.ndarray
    same: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    kfold: KFoldResult
    extra: dict[str, object] = field(default_factory=dict)


def far_key(far: float) -> str:
    """Metric name of TAR at `far`: 1e-2 -> "tar_at_far_1e-2"."""
    return f"tar_at_far_{far:.0e}".replace("e-0", "e-")


def evaluate_embeddings(
    embeddings: torch.Tensor | np.ndarray,
    labels: np.ndarray | torch.Tensor,
    folds: int = 10,
    max_pairs: int = 3000,
    seed: int = 0,
    fars: tuple[float, ...] = (1e-2, 1e-3),
    gallery_fraction: float = 0.5,
) -> VerificationReport:
    """Verification (pairs, ROC, AUC, k-fold accuracy, TAR@FAR) and identification metrics."""
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    if np.unique(y).size < 2:
        raise VerificationError(f"evaluation needs at least 2 identities, found {np.unique(y).size}")
    a, b, same = make_pairs(y, max_pairs, seed)
    scores = pair_scores(embeddings, a, b)
    fpr, tpr, _ = roc_curve(scores, same)
    kf = kfold_accuracy(scores, same, min(folds, scores.size), seed)
    ident, n_probes = identification_accuracy(embeddings, y, gallery_fraction, seed)
    metrics: dict[str, float | int | None] = {
        "auc": auc(fpr, tpr),
        "accuracy": kf.accuracy,
        "accuracy_std": float(kf.accuracies.std()),
        "threshold": kf.threshold,
        "identification_accuracy": ident,
        "num_pairs": int(scores.size),
        "num_same": int(same.sum()),
        "num_different": int((~same).sum()),
        "num_images": int(y.size),
        "num_identities": int(np.unique(y).size),
        "num_probes": n_probes,
        "folds": int(kf.accuracies.size),
        "mean_same_similarity": float(scores[same].mean()),
        "mean_different_similarity": float(scores[~same].mean()),
    }
    for far in fars:
        tar, thr = tar_at_far(scores, same, far)
        metrics[far_key(far)] = tar
        # +inf (no pair accepted) is not JSON: recorded as None.
        metrics[far_key(far).replace("tar_", "threshold_")] = thr if np.isfinite(thr) else None
    return VerificationReport(metrics, scores, same, fpr, tpr, kf)
