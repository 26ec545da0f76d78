"""ArcFace training of an embedding backbone, resumable epoch by epoch, evaluated on a held-out split.

`train_embedding(dataset, config, callbacks, device)`:
1. validates the config and the data before any training (`TrainConfigError`, `DatasetError`);
2. splits the data (by identity or by sample, seeded) and trains on the training part with
   pytorch-metric-learning's `ArcFaceLoss` (its W in its own optimizer parameter group);
3. after every epoch saves a checkpoint through `callbacks.save_checkpoint` (model, W, optimizer,
   scheduler, RNG states, epoch, history) and, if `callbacks.should_stop()`, raises
   `ml.core.errors.Stopped` (a new attempt with the same callbacks store resumes from that epoch);
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

import math
import time
from typing import Any

import torch
from pytorch_metric_learning.losses import ArcFaceLoss
from torch import nn

from ml.arcface.config import TrainConfig, TrainConfigError, TrainedEmbedding, validate_config
from ml.arcface.model import Normalization, load_trained, save_trained
from ml.arcface.prepare import finish, prepare, train_tensors
from ml.backbones import BackboneError, create_backbone
from ml.core.callbacks import Callbacks, LocalCallbacks
from ml.core.device_state import to_device
from ml.core.fingerprint import fingerprint
from ml.core.loop import LoopPolicy, ResumableLoop
from ml.core.seeding import epoch_seed, seed_everything
from ml.core.state import GlobalRNG, Stateful
from ml.data import ImageDataset

__all__ = [
    "TrainConfig",
    "TrainConfigError",
    "TrainedEmbedding",
    "load_trained",
    "save_trained",
    "train_embedding",
    "validate_config",
]

CHECKPOINT_KIND = "train_embedding"
PROGRESS_EVERY = 20


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


class _ArcFaceLoop(ResumableLoop):
    """ArcFace training as a resumable loop: one unit is an epoch; the state is the five objects below."""

    kind = CHECKPOINT_KIND
    mismatch_error = TrainConfigError

    def __init__(
        self,
        cb: Callbacks,
        config: TrainConfig,
        parts: tuple[nn.Module, ArcFaceLoss, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler],
        data: tuple[torch.Tensor, torch.Tensor, Normalization],
        batch: int,
        progress_every: int,
        device: torch.device,
        key: str,
    ) -> None:
        super().__init__(cb, config.epochs, key, LoopPolicy(device=device))
        self.cb, self.config = cb, config
        self.backbone, self.loss_fn, self.opt, self.sched = parts
        self.x01, self.y, self.norm = data
        self.n = int(self.x01.shape[0])
        self.batch, self.progress_every = batch, progress_every
        self.steps_per_epoch = max(1, self.n // batch)

    def stateful(self) -> dict[str, Stateful]:
        return {
            "model": self.backbone,
            "loss": self.loss_fn,
            "optimizer": self.opt,
            "scheduler": self.sched,
            "rng": GlobalRNG(),
        }

    def step(self, epoch: int) -> None:
        config, device, batch, steps = self.config, self.policy.device, self.batch, self.steps_per_epoch
        backbone, loss_fn, opt = self.backbone, self.loss_fn, self.opt
        backbone.train()
        gen = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
        torch.manual_seed(epoch_seed(config.seed, epoch) + 1)  # dropout: depends on (seed, epoch) only
        order = torch.randperm(self.n, generator=gen)[: steps * batch]
        offsets, flips = _epoch_draws(steps, batch, config.augment_shift, config.augment_flip, gen)
        order_d = to_device(order, device)
        offsets_d = to_device(offsets, device) if offsets is not None else None
        flips_d = to_device(flips, device) if flips is not None else None
        # Each step's loss and hit count stay on the device; the host reads them every
        # `progress_every` steps (one sync), replays them to the callbacks and checks them there.
        stats = torch.zeros(steps, 2, device=device)
        tally = _Tally(self.cb, epoch, steps, steps * config.epochs, batch)
        for step in range(steps):
            idx = order_d[step * batch : (step + 1) * batch]
            xb = _augment(
                self.x01[idx],
                config.augment_shift,
                offsets_d[step] if offsets_d is not None else None,
                flips_d[step] if flips_d is not None else None,
            )
            yb = self.y[idx]
            emb = backbone(self.norm.apply(xb))
            loss = loss_fn(emb, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                stats[step, 0] = loss.detach()
                stats[step, 1] = (loss_fn.get_cosine(emb.detach()).argmax(1) == yb).sum()
            if (step + 1) % self.progress_every == 0 or step + 1 == steps:
                tally.read(stats, step + 1)  # raises FloatingPointError at the first non-finite loss
        self.history.append(
            {"epoch": epoch + 1, "loss": tally.sum_loss / tally.seen, "acc": tally.correct / tally.seen,
             "lr": opt.param_groups[0]["lr"]}
        )  # fmt: skip
        self.sched.step()
        self.cb.log(
            f"epoch {epoch + 1}/{config.epochs}: loss {tally.sum_loss / tally.seen:.4f}, "
            f"train acc {tally.correct / tally.seen:.4f}"
        )


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
        Stopped: `callbacks.should_stop()` after an epoch's checkpoint; resume with a new run.
    """
    cb: Callbacks = callbacks if callbacks is not None else LocalCallbacks()
    device = torch.device(device)
    validate_config(config)
    if config.sample_rate < 1:
        raise TrainConfigError("sample_rate < 1 (partial FC) is for multi-rank runs (train_embedding_ddp)")
    if progress_every < 1:
        raise TrainConfigError(f"progress_every must be >= 1, got {progress_every}")
    prep = prepare(dataset, config)
    train_ds = prep.train_ds

    seed_everything(config.seed)
    try:
        backbone = create_backbone(config.backbone, **prep.resolved["backbone_kwargs"]).to(device)
    except BackboneError as exc:
        raise TrainConfigError(f"invalid training config: {exc}") from exc
    loss_fn = ArcFaceLoss(train_ds.num_classes, config.embedding_size, margin=config.margin, scale=config.scale)
    loss_fn = loss_fn.to(device)
    opt = _make_optimizer(config, backbone, loss_fn)
    sched = _make_scheduler(config, opt)

    x01, y = train_tensors(prep, config, device)
    n = x01.shape[0]
    batch = min(config.batch_size, n)

    key = fingerprint(config.to_json(), dataset.source, len(dataset), n)
    parts = (backbone, loss_fn, opt, sched)
    loop = _ArcFaceLoop(cb, config, parts, (x01, y, prep.norm), batch, progress_every, device, key)
    started = time.monotonic()
    loop.run()  # raises Stopped when asked to stop after an epoch's checkpoint
    history = loop.history

    return finish(prep, config, backbone, loss_fn.W, history, device, time.monotonic() - started)
