"""Deterministic held-out splits: by identity (unseen people) or by sample (unseen images)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ml.data.dataset import DatasetError, SingleIdentityError

SplitBy = Literal["identity", "sample"]


@dataclass(frozen=True)
class Split:
    """Indices into a dataset: `train` for fitting, `test` held out for evaluation (disjoint, sorted)."""

    train: torch.Tensor
    test: torch.Tensor
    by: SplitBy
    test_fraction: float
    seed: int

    def to_json(self) -> dict[str, object]:
        return {
            "by": self.by,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "train_size": int(self.train.numel()),
            "test_size": int(self.test.numel()),
        }


def _labels_np(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")


def split_by_identity(labels: torch.Tensor | np.ndarray, test_fraction: float, seed: int) -> Split:
    """Hold out round(K * test_fraction) whole identities (at least 2, leaving at least 2 to train).

    Raises:
        SingleIdentityError: fewer than 4 identities (2 to train on, 2 to verify).
    """
    _check_fraction(test_fraction)
    y = _labels_np(labels)
    ids = np.unique(y)
    if ids.size < 4:
        raise SingleIdentityError(
            f"a split by identity needs at least 4 identities (2 to train, 2 held out), found {ids.size}; "
            "split by sample instead"
        )
    n_test = min(max(2, round(ids.size * test_fraction)), ids.size - 2)
    rng = np.random.default_rng(seed)
    test_ids = np.sort(rng.permutation(ids)[:n_test])
    in_test = np.isin(y, test_ids)
    return Split(
        torch.from_numpy(np.flatnonzero(~in_test)),
        torch.from_numpy(np.flatnonzero(in_test)),
        "identity",
        float(test_fraction),
        int(seed),
    )


def split_by_sample(labels: torch.Tensor | np.ndarray, test_fraction: float, seed: int) -> Split:
    """Hold out round(n_c * test_fraction) images of every identity c (stratified).

    An identity with at least 2 images keeps at least one on each side; one with a single image
    stays in training.
    """
    _check_fraction(test_fraction)
    y = _labels_np(labels)
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if members.size < 2:
            continue
        n_test = min(max(1, round(members.size * test_fraction)), members.size - 1)
        test.append(rng.permutation(members)[:n_test])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(y.size), test_idx)
    return Split(torch.from_numpy(train_idx), torch.from_numpy(test_idx), "sample", float(test_fraction), int(seed))


def make_split(labels: torch.Tensor | np.ndarray, by: SplitBy, test_fraction: float, seed: int) -> Split:
    """`split_by_identity` or `split_by_sample`."""
    if by == "identity":
        return split_by_identity(labels, test_fraction, seed)
    if by == "sample":
        return split_by_sample(labels, test_fraction, seed)
    raise DatasetError(f"split must be 'identity' or 'sample', got {by!r}")
