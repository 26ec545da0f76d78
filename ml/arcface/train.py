"""ArcFace training of an embedding backbone, resumable epoch by epoch, evaluated on a held-out split.

`train_embedding(dataset, config, callbacks, device)`:
1. validates the config and the data before any training (`TrainConfigError`, `DatasetError`);
2. splits the data (by identity or by sample, seeded) and trains on the training part with
   pytorch-metric-learning's `ArcFaceLoss` (its W in its own optimizer parameter group);
3. after every epoch saves a checkpoint through `callbacks.save_checkpoint` (model, W, optimizer,
   scheduler, RNG states, epoch, history) and, if `callbacks.should_stop()`, raises
   `TrainingStopped` (a new attempt with the same callbacks store resumes from that epoch);
4. evaluates the held-out part with `ml.metrics.verification` and returns a `TrainedEmbedding`.

Resume is exact: the data order, augmentation and dropout of epoch e are drawn from generators
seeded by (seed, e) alone, so an interrupted and resumed run ends with the same weights and
metrics as an uninterrupted one (bit-for-bit on CPU). Checkpoints are saved on the CPU in
contiguous form and fitted to the resuming attempt's device on load (`ml.core.device_state`).

The step loop does not wait on the device: the epoch's shuffle order and augmentation draws are
copied to it once, each step's loss and hit count stay there, and the host reads them every
`progress_every` steps (and at the epoch's end), when it reports them and checks them for NaN.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.losses import ArcFaceLoss
from torch import nn

from ml.arcface.config import TrainConfig, TrainConfigError, TrainedEmbedding, validate_config
from ml.arcface.model import Normalization, load_trained, preprocess, save_trained
from ml.backbones import BackboneError, create_backbone
from ml.core.callbacks import Callbacks, LocalCallbacks
from ml.core.device_state import fit_optimizer_state, portable, to_device
from ml.data import ImageDataset, check_trainable, make_split
from ml.metrics.verification import embed_images, evaluate_embeddings

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
PROGRESS_EVERY = 20


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


def _epoch_draws(
    steps: int, batch: int, shift: int, flip: bool, gen: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The epoch's augmentation draws from the CPU generator `gen`, batch by batch as the loop uses them.

    Each batch draws its (dy, dx) offsets in [0, 2 * shift] and then its flip coins, so drawing them
    all up front gives the same numbers as drawing them step by step; the loop copies them to the
    device once per epoch instead of once per batch (a pageable copy waits for the device).

    Returns:
        (steps, batch, 2) int64 offsets (None without shifts) and (steps, batch) bool flips (None
        without flips), on the CPU.
    """
    offsets, flips = [], []
    for _ in range(steps):
        if shift > 0:
            offsets.append(torch.randint(0, 2 * shift + 1, (batch, 2), generator=gen))
        if flip:
            flips.append(torch.rand(batch, generator=gen) < 0.5)
    return (torch.stack(offsets) if offsets else None), (torch.stack(flips) if flips else None)


def _augment(x01: torch.Tensor, shift: int, offsets: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
    """Integer translation by `offsets` (edge padding) and horizontal flips where `flips`, on x01's device.

    The translation is two gathers (rows, then columns) of the padded batch: the same pixels as
    slicing image by image, in two kernels instead of one per image.
    """
    n, c, h, w = x01.shape
    if offsets is not None:
        padded = nn.functional.pad(x01, (shift, shift, shift, shift), mode="replicate")
        rows = offsets[:, 0:1] + torch.arange(h, device=x01.device)
        cols = offsets[:, 1:2] + torch.arange(w, device=x01.device)
        x01 = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * shift))
        x01 = x01.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
    if flips is not None:
        x01 = torch.where(flips.view(n, 1, 1, 1), torch.flip(x01, dims=[3]), x01)
    return x01


class _Tally:
    """An epoch's running loss and hit counts, read from the device's per-step buffer in windows."""

    def __init__(self, cb: Callbacks, epoch: int, steps_per_epoch: int, total_steps: int, batch: int) -> None:
        self.cb, self.epoch, self.batch = cb, epoch, batch
        self.first_step, self.total_steps = epoch * steps_per_epoch, total_steps
        self.sum_loss, self.correct, self.seen, self.done = 0.0, 0, 0, 0

    def read(self, stats: torch.Tensor, upto: int) -> None:
        """Take steps [done, upto) of `stats` ((steps, 2): loss, hits) and report each of them.

        Raises:
            FloatingPointError: at the first non-finite loss (its step's progress is not reported).
        """
        for loss_value, hits in stats[self.done : upto].tolist():
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"the ArcFace loss became {loss_value} at epoch {self.epoch + 1}; lower lr")
            self.done += 1
            self.sum_loss += loss_value * self.batch
            self.correct += int(hits)
            self.seen += self.batch
            self.cb.progress(self.first_step + self.done, self.total_steps, loss=loss_value, acc=int(hits) / self.batch)


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
    progress_every: int = PROGRESS_EVERY,
) -> TrainedEmbedding:
    """Train `config.backbone` with ArcFace on `dataset` and evaluate it on a held-out split.

    Args:
        dataset: images in [0, 1] with identity labels (any size/channels: they are converted).
        config: hyperparameters; see `TrainConfig`.
        callbacks: progress/checkpoint/stop hooks; None uses an in-memory `LocalCallbacks`.
        device: where to train.
        progress_every: steps between the host's reads of the losses (one device sync each, and at
            every epoch's end); every step's loss and accuracy still reach `callbacks.progress`,
            in a burst at each read. A non-finite loss is found at the next read.

    Raises:
        TrainConfigError: bad hyperparameters (raised before any training).
        DatasetError: empty data, or fewer than two identities in a split (before any training).
        TrainingStopped: `callbacks.should_stop()` after an epoch's checkpoint; resume with a new run.
    """
    cb: Callbacks = callbacks if callbacks is not None else LocalCallbacks()
    device = torch.device(device)
    validate_config(config)
    if progress_every < 1:
        raise TrainConfigError(f"progress_every must be >= 1, got {progress_every}")
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
        fit_optimizer_state(opt)  # the checkpoint may come from another device
        sched.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        cb.log(f"resumed from the checkpoint of epoch {start_epoch}")

    started = time.monotonic()
    for epoch in range(start_epoch, config.epochs):
        backbone.train()
        gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
        torch.manual_seed(_epoch_seed(config.seed, epoch) + 1)  # dropout: depends on (seed, epoch) only
        order = torch.randperm(n, generator=gen)[: steps_per_epoch * batch]
        offsets, flips = _epoch_draws(steps_per_epoch, batch, config.augment_shift, config.augment_flip, gen)
        order_d = to_device(order, device)
        offsets_d = to_device(offsets, device) if offsets is not None else None
        flips_d = to_device(flips, device) if flips is not None else None
        # Each step's loss and hit count stay on the device; the host reads them every
        # `progress_every` steps (one sync), replays them to the callbacks and checks them there.
        stats = torch.zeros(steps_per_epoch, 2, device=device)
        tally = _Tally(cb, epoch, steps_per_epoch, total_steps, batch)
        for step in range(steps_per_epoch):
            idx = order_d[step * batch : (step + 1) * batch]
            xb = _augment(
                x01[idx],
                config.augment_shift,
                offsets_d[step] if offsets_d is not None else None,
                flips_d[step] if flips_d is not None else None,
            )
            yb = y[idx]
            emb = backbone(norm.apply(xb))
            loss = loss_fn(emb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                stats[step, 0] = loss.detach()
                stats[step, 1] = (loss_fn.get_cosine(emb.detach()).argmax(1) == yb).sum()
            if (step + 1) % progress_every == 0 or step + 1 == steps_per_epoch:
                tally.read(stats, step + 1)  # raises FloatingPointError at the first non-finite loss
        history.append(
            {"epoch": epoch + 1, "loss": tally.sum_loss / tally.seen, "acc": tally.correct / tally.seen,
             "lr": opt.param_groups[0]["lr"]}
        )  # fmt: skip
        sched.step()
        cb.log(
            f"epoch {epoch + 1}/{config.epochs}: loss {tally.sum_loss / tally.seen:.4f}, "
            f"train acc {tally.correct / tally.seen:.4f}"
        )
        cb.save_checkpoint(
            portable(
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
