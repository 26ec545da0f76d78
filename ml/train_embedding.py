"""ArcFace training of an embedding backbone, resumable epoch by epoch, evaluated on a held-out split.

`train_embedding(dataset, config, callbacks, device)`:
1. validates the config and the data before any training (`TrainConfigError`, `DatasetError`);
2. splits the data (by identity or by sample, seeded) and trains on the training part with
   pytorch-metric-learning's `ArcFaceLoss` (its W in its own optimizer parameter group);
3. after every epoch saves a checkpoint through `callbacks.save_checkpoint` (model, W, optimizer,
   scheduler, RNG states, epoch, history) and, if `callbacks.should_stop()`, raises
   `TrainingStopped` (a new attempt with the same callbacks store resumes from that epoch);
4. evaluates the held-out part with `ml.verify` and returns a `TrainedEmbedding`.

Resume is exact: the data order, augmentation and dropout of epoch e are drawn from generators
seeded by (seed, e) alone, so an interrupted and resumed run ends with the same weights and
metrics as an uninterrupted one (bit-for-bit on CPU).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.losses import ArcFaceLoss
from torch import nn

from ml.backbones import BackboneError, create_backbone
from ml.callbacks import Callbacks, LocalCallbacks
from ml.data import ImageDataset, check_trainable, make_split
from ml.embedding_model import Normalization, load_trained, preprocess, save_trained
from ml.train_config import TrainConfig, TrainConfigError, TrainedEmbedding, validate_config
from ml.verify import embed_images, evaluate_embeddings

__all__ = [
    "TrainConfig",
    "TrainConfigError",
    "TrainedEmbedding",
    "TrainingStopped",
    "load_trained",
    "save_trained",
    "train_embedding",
    "validate_config",
]

CHECKPOINT_KIND = "train_embedding"


class TrainingStopped(Exception):
    """Raised after the checkpoint of `epoch` was saved because `callbacks.should_stop()` was True."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"training stopped after epoch {epoch} (checkpoint saved)")
        self.epoch = epoch


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**62)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    # numpy's state as a tensor and numbers, so the checkpoint loads with weights_only=True.
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(bit_generator),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    if isinstance(saved, dict):  # a tuple of numpy arrays in checkpoints written before
        keys = np.asarray(saved["keys"].numpy(), dtype=np.uint32)
        saved = (saved["bit_generator"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
    np.random.set_state(saved)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _augment(x01: torch.Tensor, shift: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random integer translation (edge padding) and horizontal flips, drawn from `gen`."""
    n, _, h, w = x01.shape
    if shift > 0:
        padded = nn.functional.pad(x01, (shift, shift, shift, shift), mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=gen).tolist()  # CPU generator
        x01 = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
    if flip:
        mask = (torch.rand(n, generator=gen) < 0.5).to(x01.device)
        x01 = torch.where(mask.view(n, 1, 1, 1), torch.flip(x01, dims=[3]), x01)
    return x01


def _make_optimizer(config: TrainConfig, backbone: nn.Module, loss_fn: nn.Module) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]] = [
        {"params": [p for p in backbone.parameters() if p.requires_grad], "name": "backbone"},
        {
            "params": list(loss_fn.parameters()),
            "name": "arcface_W",
            "lr": config.lr * config.loss_lr_multiplier,
            "weight_decay": config.weight_decay if config.loss_weight_decay is None else config.loss_weight_decay,
        },
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def _make_scheduler(config: TrainConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: cosine to 0 over `epochs`, step decay, or constant."""
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=config.step_epochs, gamma=config.step_gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _fingerprint(config: TrainConfig, dataset: ImageDataset, train_size: int) -> str:
    blob = json.dumps([config.to_json(), dataset.source, len(dataset), train_size], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_embedding(
    dataset: ImageDataset,
    config: TrainConfig,
    callbacks: Callbacks | None = None,
    device: torch.device | str = "cpu",
) -> TrainedEmbedding:
    """Train `config.backbone` with ArcFace on `dataset` and evaluate it on a held-out split.

    Args:
        dataset: images in [0, 1] with identity labels (any size/channels: they are converted).
        config: hyperparameters; see `TrainConfig`.
        callbacks: progress/checkpoint/stop hooks; None uses an in-memory `LocalCallbacks`.
        device: where to train.

    Raises:
        TrainConfigError: bad hyperparameters (raised before any training).
        DatasetError: empty data, or fewer than two identities in a split (before any training).
        TrainingStopped: `callbacks.should_stop()` after an epoch's checkpoint; resume with a new run.
    """
    cb: Callbacks = callbacks if callbacks is not None else LocalCallbacks()
    device = torch.device(device)
    validate_config(config)
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

    _seed_everything(config.seed)
    try:
        backbone = create_backbone(config.backbone, **resolved["backbone_kwargs"]).to(device)
    except BackboneError as exc:
        raise TrainConfigError(f"invalid training config: {exc}") from exc
    loss_fn = ArcFaceLoss(train_ds.num_classes, config.embedding_size, margin=config.margin, scale=config.scale)
    loss_fn = loss_fn.to(device)
    opt = _make_optimizer(config, backbone, loss_fn)
    sched = _make_scheduler(config, opt)

    # Shift augmentation works on [0, 1] images (edge padding), so normalise per batch afterwards.
    x01 = preprocess(
        train_ds.images, image_size, in_channels, Normalization.uniform(in_channels, 0.0, 1.0), config.warp
    ).to(device)
    y = train_ds.labels.to(device)
    n = x01.shape[0]
    batch = min(config.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total_steps = steps_per_epoch * config.epochs
    fingerprint = _fingerprint(config, dataset, n)

    start_epoch, history = 0, []
    state = cb.load_checkpoint()
    if state is not None and state.get("kind") == CHECKPOINT_KIND:
        if state.get("fingerprint") != fingerprint:
            raise TrainConfigError("the checkpoint found belongs to a different config or dataset; cannot resume")
        backbone.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        cb.log(f"resumed from the checkpoint of epoch {start_epoch}")

    started = time.monotonic()
    for epoch in range(start_epoch, config.epochs):
        backbone.train()
        gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
        torch.manual_seed(_epoch_seed(config.seed, epoch) + 1)  # dropout: depends on (seed, epoch) only
        order = torch.randperm(n, generator=gen)
        sum_loss, correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch].to(device)
            xb = _augment(x01[idx], config.augment_shift, config.augment_flip, gen)
            emb = backbone(norm.apply(xb))
            loss = loss_fn(emb, y[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the ArcFace loss became {loss.item()} at epoch {epoch + 1}; lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                hits = int((loss_fn.get_cosine(emb.detach()).argmax(1) == y[idx]).sum())
            loss_value = loss.item()
            sum_loss += loss_value * idx.numel()
            correct += hits
            seen += idx.numel()
            cb.progress(epoch * steps_per_epoch + step + 1, total_steps, loss=loss_value, acc=hits / idx.numel())
        history.append(
            {"epoch": epoch + 1, "loss": sum_loss / seen, "acc": correct / seen, "lr": opt.param_groups[0]["lr"]}
        )
        sched.step()
        cb.log(f"epoch {epoch + 1}/{config.epochs}: loss {sum_loss / seen:.4f}, train acc {correct / seen:.4f}")
        cb.save_checkpoint(
            {
                "kind": CHECKPOINT_KIND,
                "fingerprint": fingerprint,
                "epoch": epoch + 1,
                "model": backbone.state_dict(),
                "loss": loss_fn.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": _rng_state(),
                "history": history,
            }
        )
        if epoch + 1 < config.epochs and cb.should_stop():
            raise TrainingStopped(epoch + 1)

    backbone.eval()
    test_x = preprocess(test_ds.images, image_size, in_channels, norm, config.warp)
    emb = embed_images(backbone, test_x, flip_tta=config.flip_tta, device=device)
    report = evaluate_embeddings(
        emb,
        test_ds.labels,
        folds=config.folds,
        max_pairs=config.max_pairs,
        seed=config.seed,
        gallery_fraction=config.gallery_fraction,
    )
    metrics: dict[str, Any] = dict(report.metrics)
    metrics.update(
        final_train_loss=history[-1]["loss"],
        final_train_acc=history[-1]["acc"],
        train_images=n,
        train_identities=train_ds.num_classes,
        split_by=split.by,
    )
    resolved["metrics"] = metrics
    return TrainedEmbedding(
        backbone=backbone.cpu().eval(),
        arcface_weight=loss_fn.W.detach().cpu().clone(),
        num_classes=train_ds.num_classes,
        class_names=train_ds.class_names,
        image_size=image_size,
        in_channels=in_channels,
        normalize=norm,
        split=split,
        train_indices=train_idx,
        test_indices=split.test,
        history=history,
        metrics=metrics,
        report=report,
        test_embeddings=emb,
        test_labels=test_ds.labels,
        config=resolved,
        seconds=time.monotonic() - started,
    )
