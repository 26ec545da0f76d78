"""Evaluation plots as PNG bytes (matplotlib's Agg canvas: no display, no pyplot global state)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml.metrics.verification import VerificationReport


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def roc_png(fpr: np.ndarray, tpr: np.ndarray, auc: float, marks: dict[str, float] | None = None) -> bytes:
    """ROC with a log-scaled FAR axis (where TAR@FAR matters), AUC in the legend.

    Args:
        fpr, tpr: the curve (`ml.metrics.verification.roc_curve`).
        auc: area under it.
        marks: optional {label: far} drawn as vertical lines (e.g. FAR 1e-3 and 1e-2).
    """
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    floor = 1.0 / max(2 * len(fpr), 10)
    ax.plot(np.clip(fpr, floor, 1), tpr, lw=2, label=f"AUC = {auc:.4f}")
    for label, far in (marks or {}).items():
        ax.axvline(far, color="grey", ls=":", lw=1)
        ax.text(far, 0.02, label, rotation=90, fontsize=8, va="bottom", ha="right")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("Verification ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return _png(fig)


def distances_png(scores: np.ndarray, same: np.ndarray, threshold: float) -> bytes:
    """Histograms of the cosine similarity of same- and different-identity pairs, with the threshold."""
    s, y = np.asarray(scores, dtype=float), np.asarray(same, dtype=bool)
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    bins = np.linspace(min(-1.0, s.min()), max(1.0, s.max()), 61).tolist()
    ax.hist(s[y], bins=bins, alpha=0.6, density=True, label=f"same ({int(y.sum())})", color="tab:green")
    ax.hist(s[~y], bins=bins, alpha=0.6, density=True, label=f"different ({int((~y).sum())})", color="tab:red")
    ax.axvline(threshold, color="black", ls="--", lw=1.5, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity (accept >= threshold)")
    ax.set_ylabel("density")
    ax.set_title("Same vs different pairs")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def loss_png(history: Sequence[dict[str, float]]) -> bytes:
    """Training loss per epoch (left axis) and training accuracy (right axis)."""
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="tab:blue", label="ArcFace loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:blue")
    if history and "acc" in history[0]:
        ax2 = ax.twinx()
        ax2.plot(epochs, [h["acc"] for h in history], "s--", color="tab:orange", label="train accuracy")
        ax2.set_ylabel("train accuracy", color="tab:orange")
        ax2.set_ylim(0, 1.01)
    ax.set_title("Training")
    ax.grid(True, alpha=0.3)
    return _png(fig)


def pca_2d(embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, 2) projection on the two leading principal components (sign fixed for stable plots)."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(comps.shape[0]), np.argmax(np.abs(comps), axis=1)])
    out = x @ (comps * signs[:, None]).T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def pca_png(
    embeddings: torch.Tensor | np.ndarray,
    labels: np.ndarray | torch.Tensor,
    class_names: Sequence[str] | None = None,
    max_points: int = 3000,
) -> bytes:
    """2-D PCA of the embeddings coloured by class (a legend up to 20 classes)."""
    y = np.asarray(labels, dtype=np.int64)
    pts = pca_2d(embeddings)
    if y.size > max_points:  # an evenly spaced subset keeps the plot readable and deterministic
        keep = np.linspace(0, y.size - 1, max_points).astype(int)
        pts, y = pts[keep], y[keep]
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    classes = np.unique(y)
    palette = colormaps["tab20" if classes.size > 10 else "tab10"]
    for i, c in enumerate(classes):
        m = y == c
        name = class_names[int(c)] if class_names is not None and int(c) < len(class_names) else str(c)
        ax.scatter(pts[m, 0], pts[m, 1], s=8, alpha=0.7, color=palette(i % palette.N), label=name)
    if classes.size <= 20:
        ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2 if classes.size > 10 else 1)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Embeddings (PCA)")
    return _png(fig)


def evaluation_plots(
    report: VerificationReport,
    embeddings: torch.Tensor | np.ndarray,
    labels: np.ndarray | torch.Tensor,
    class_names: Sequence[str] | None = None,
    history: Sequence[dict[str, float]] | None = None,
) -> dict[str, bytes]:
    """{file name: PNG} for a `ml.metrics.verification.VerificationReport`: roc.png, distances.png, pca.png and,
    with a training history, loss.png."""
    metrics = report.metrics
    out = {
        "roc.png": roc_png(report.fpr, report.tpr, float(metrics["auc"] or 0.0), {"FAR 1e-3": 1e-3, "FAR 1e-2": 1e-2}),
        "distances.png": distances_png(report.scores, report.same, float(metrics["threshold"] or 0.0)),
        "pca.png": pca_png(embeddings, labels, class_names),
    }
    if history:
        out["loss.png"] = loss_png(history)
    return out
