"""The parts of ArcFace training that one rank and many share: the data's split and the evaluation.

`prepare(dataset, config)` validates the data, splits it (by identity or sample, seeded), caps the
training part and resolves the input settings; `train_tensors` gives the training images in [0, 1]
(warped, resized) and labels on a device; `finish` evaluates a trained backbone on the held-out
part and builds the `TrainedEmbedding` (the same result, and saved format, for any world size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.arcface.config import TrainConfig, TrainConfigError, TrainedEmbedding
from ml.arcface.model import Normalization, preprocess
from ml.data import ImageDataset, Split, check_trainable, make_split
from ml.metrics.verification import embed_images, evaluate_embeddings


@dataclass
class Prepared:
    """A run's data: the split, the training and held-out parts, and the resolved settings."""

    dataset: ImageDataset
    split: Split
    train_idx: torch.Tensor
    train_ds: ImageDataset
    test_ds: ImageDataset
    in_channels: int
    image_size: tuple[int, int]
    norm: Normalization
    resolved: dict[str, Any]


def prepare(dataset: ImageDataset, config: TrainConfig) -> Prepared:
    """Split and check the data (raises `DatasetError` / `TrainConfigError` before any training)."""
    check_trainable(dataset)
    split = make_split(dataset.labels, config.split_by, config.test_fraction, config.seed)
    train_idx = split.train
    if config.max_train_samples is not None and train_idx.numel() > config.max_train_samples:
        pick = np.random.default_rng(config.seed).choice(train_idx.numel(), config.max_train_samples, replace=False)
        train_idx = train_idx[torch.from_numpy(np.sort(pick))]
    train_ds = dataset.subset(train_idx, relabel=True)
    test_ds = dataset.subset(split.test)
    check_trainable(train_ds, "training split")
    check_trainable(test_ds, "held-out split")
    if train_ds.images.shape[0] < 2:
        raise TrainConfigError("the training split needs at least 2 images (batch norm needs 2 per batch)")
    in_channels = config.in_channels or dataset.in_channels
    image_size = config.image_hw or dataset.image_size
    norm = Normalization.uniform(in_channels, config.normalize_mean, config.normalize_std)
    resolved = config.resolved(in_channels, image_size, norm, dataset, split, train_ds)
    return Prepared(dataset, split, train_idx, train_ds, test_ds, in_channels, image_size, norm, resolved)


def train_tensors(prep: Prepared, config: TrainConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images in [0, 1] (augmentation works there; normalise per batch after) and labels."""
    x01 = preprocess(
        prep.train_ds.images,
        prep.image_size,
        prep.in_channels,
        Normalization.uniform(prep.in_channels, 0.0, 1.0),
        config.warp,
    ).to(device)
    return x01, prep.train_ds.labels.to(device)


def finish(
    prep: Prepared,
    config: TrainConfig,
    backbone: nn.Module,
    weight: torch.Tensor,
    history: list[dict[str, Any]],
    device: torch.device,
    seconds: float,
) -> TrainedEmbedding:
    """Evaluate `backbone` on the held-out part; the result with the full (d, C) ArcFace `weight`."""
    backbone.eval()
    test_x = preprocess(prep.test_ds.images, prep.image_size, prep.in_channels, prep.norm, config.warp)
    emb = embed_images(backbone, test_x, flip_tta=config.flip_tta, device=device)
    report = evaluate_embeddings(
        emb,
        prep.test_ds.labels,
        folds=config.folds,
        max_pairs=config.max_pairs,
        seed=config.seed,
        gallery_fraction=config.gallery_fraction,
    )
    metrics: dict[str, Any] = dict(report.metrics)
    metrics.update(
        final_train_loss=history[-1]["loss"],
        final_train_acc=history[-1]["acc"],
        train_images=int(prep.train_ds.images.shape[0]),
        train_identities=prep.train_ds.num_classes,
        split_by=prep.split.by,
    )
    resolved = prep.resolved
    resolved["metrics"] = metrics
    return TrainedEmbedding(
        backbone=backbone.cpu().eval(),
        arcface_weight=weight.detach().cpu().clone(),
        num_classes=prep.train_ds.num_classes,
        class_names=prep.train_ds.class_names,
        image_size=prep.image_size,
        in_channels=prep.in_channels,
        normalize=prep.norm,
        split=prep.split,
        train_indices=prep.train_idx,
        test_indices=prep.split.test,
        history=history,
        metrics=metrics,
        report=report,
        test_embeddings=emb,
        test_labels=prep.test_ds.labels,
        config=resolved,
        seconds=seconds,
    )
