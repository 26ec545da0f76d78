"""Model inversion: class representations from a trained ArcFace model (ML.md section 3).

Starting from N(0, 1) images in the model's normalised input space, Adam optimises the pixels of
one batch holding every target class so that

    loss = ArcFace(embeddings, every sample labelled as its target class)
         + lambda_bn * BN-statistics loss (every BatchNorm layer's input vs its running statistics)
         + tv_weight * total variation + l2_weight * ||x||^2   (both per image, batch-averaged)

with the batch rolled by a random offset (and optionally mirrored) before each forward pass and the
pixels clamped to the valid range after each step. The loop (`ml.core.loop`) checkpoints (images, optimiser state,
RNG states, step) so a killed run resumes to exactly the images an uninterrupted run would make.
Checkpoints are written in one canonical form (CPU, contiguous) and fitted on load to the device
and memory layout of the attempt that resumes them (`ml.core.device_state`), so a job may resume on
another kind of worker: see README's "Exactness" for what is exact where.

Flips: on by default (faces are roughly symmetric, as ML.md asks), but a mirrored digit is another
glyph, so switch them off for MNIST-like models (`flip=False`).

Public API: `invert`, `InversionConfig`, `InversionResult`, `InversionError` (the last three live in
`ml.invert.config`); the loss terms are in `ml.invert.losses`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml.core.callbacks import Callbacks
from ml.core.device_state import fused_adam_supported
from ml.core.images import grid_png
from ml.core.loop import LoopPolicy, ResumableLoop
from ml.core.state import CudaRNG, GeneratorState, Stateful, TensorState, TorchRNG
from ml.invert.config import InversionConfig, InversionError, InversionResult
from ml.invert.losses import (
    BNStatistics,
    arcface_logits,
    jitter_and_flip,
    l2_prior,
    target_probability,
    total_variation,
)

__all__ = ["InversionConfig", "InversionError", "InversionResult", "invert"]


def _value_range(normalize: Any, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) of the model's input normalisation as (1, C, 1, 1) tensors.

    `normalize` may be None (identity), a (mean, std) pair, a {"mean", "std"} dict or an object
    with `.mean` and `.std` (such as `ml.arcface.model.Normalization`).
    """
    if normalize is None:
        return torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
    if isinstance(normalize, dict):
        pair = (normalize["mean"], normalize["std"])
    elif hasattr(normalize, "mean") and hasattr(normalize, "std"):
        pair = (normalize.mean, normalize.std)
    else:
        pair = tuple(normalize)
    mean, std = (torch.as_tensor(v, dtype=torch.float32).flatten() for v in pair)
    if mean.numel() == 1:
        mean = mean.expand(channels)
    if std.numel() == 1:
        std = std.expand(channels)
    if mean.numel() != channels or std.numel() != channels or bool((std <= 0).any()):
        raise InversionError(f"normalize must give {channels} means and {channels} positive stds")
    return mean.reshape(1, channels, 1, 1).clone(), std.reshape(1, channels, 1, 1).clone()


def _input_shape(
    model: nn.Module, image_size: int | Sequence[int] | None, in_channels: int | None
) -> tuple[int, int, int]:
    kw = getattr(model, "backbone_kwargs", {}) or {}
    size = image_size if image_size is not None else kw.get("input_size")
    channels = in_channels if in_channels is not None else kw.get("in_channels")
    if size is None or channels is None:
        raise InversionError("pass image_size and in_channels: the model does not record them")
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return int(channels), h, w


_NAMES = ("loss", "loss_bn", "loss_arcface", "loss_tv", "loss_l2", "target_prob")


class _InversionLoop(ResumableLoop):
    """Inversion as a resumable loop: one unit is an Adam step on the pixels; the state is below.

    Checkpoints are due every `checkpoint_every` steps before the last (0: only when stopping);
    none is written without callbacks. A checkpoint is refused when its kind, image shape, classes
    or seed differ: other settings (iterations, weights) may change between attempts.
    """

    kind = "invert"
    unit = "step"
    what = "inversion"
    mismatch_error = InversionError

    def __init__(
        self,
        cb: Callbacks | None,
        config: InversionConfig,
        parts: tuple[torch.Tensor, torch.optim.Optimizer, torch.Generator],
        classes: list[int],
        labels: torch.Tensor,
        bounds: tuple[torch.Tensor, torch.Tensor],
        to_pixels: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__(
            cb,
            config.iterations,
            policy=LoopPolicy(device=parts[0].device),
            checkpoint_every=config.checkpoint_every,
            checkpoint_at_end=False,
        )
        self.config, self.classes, self.labels, self.bounds, self.to_pixels = config, classes, labels, bounds, to_pixels
        self.x, self.optimizer, self.generator = parts
        self.elapsed, self.started = 0.0, time.perf_counter()
        # The loss function; set by `invert` inside the BN-statistics hooks it reads.
        self.losses: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]

    def stateful(self) -> dict[str, Stateful]:
        device = self.policy.device
        return {
            "images": TensorState(self.x),
            "optimizer": self.optimizer,
            "generator": GeneratorState(self.generator),
            "torch_rng": TorchRNG(),
            "cuda_rng": CudaRNG(device),
        }

    def extra_state(self) -> dict[str, Any]:
        return {
            "elapsed_seconds": self.elapsed + (time.perf_counter() - self.started),
            "classes": self.classes,
            "seed": self.config.seed,
            "config": asdict(self.config),
        }

    def load_extra(self, state: Mapping[str, Any]) -> None:
        self.elapsed = float(state["elapsed_seconds"])

    def accept(self, state: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        if state is None:
            return None
        if state.get("kind") != "invert" or tuple(state["images"].shape) != tuple(self.x.shape):
            raise InversionError("the checkpoint belongs to a different inversion (kind or image shape differ)")
        if state.get("classes") != self.classes or state.get("seed") != self.config.seed:
            raise InversionError("the checkpoint was made for other classes or another seed")
        return state

    def resumed_message(self) -> str:
        return f"invert: resumed from the checkpoint at step {self.done}"

    def run(self) -> None:
        self.started = time.perf_counter()  # the time of this attempt's steps, after the setup
        super().run()

    def step(self, index: int) -> None:
        config, x, cb, (lo, hi) = self.config, self.x, self.callbacks, self.bounds
        # Reading metrics syncs with the device, so it happens only on report steps.
        report = cb is not None and ((index + 1) % config.progress_every == 0 or index + 1 == config.iterations)
        if report:
            with torch.no_grad():
                priors = (total_variation(x), l2_prior(x))
        if config.lr_schedule == "cosine":
            lr = config.lr * 0.5 * (1 + math.cos(math.pi * index / config.iterations))
            self.optimizer.param_groups[0]["lr"] = lr
        xj = jitter_and_flip(x, self.generator, config.jitter, config.flip)
        total, loss_bn, loss_arc, cosine = self.losses(xj)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        with torch.no_grad():
            x.clamp_(min=lo, max=hi)
        step = index + 1
        if cb is None:
            return
        if report:
            prob = target_probability(cosine.detach(), self.labels, config.scale).mean()
            terms = (total.detach(), loss_bn.detach(), loss_arc.detach(), *priors, prob)
            values = torch.stack([t.float() for t in terms]).tolist()
            cb.progress(step, config.iterations, **dict(zip(_NAMES, values, strict=True)))
        if config.preview_every and step % config.preview_every == 0:
            cb.preview("grid", grid_png(self.to_pixels(x), config.images_per_class))


def invert(
    backbone: nn.Module,
    arcface_weight: torch.Tensor,
    config: InversionConfig,
    *,
    normalize: Any = None,
    image_size: int | Sequence[int] | None = None,
    in_channels: int | None = None,
    device: torch.device | str | None = None,
    callbacks: Callbacks | None = None,
) -> InversionResult:
    """Invert `backbone` + ArcFace class weights into images of the target classes.

    The backbone is copied (the caller's module is left untouched), put in eval mode and frozen.

    Args:
        backbone: maps (N, C, H, W) normalised images to (N, d) embeddings; has BatchNorm layers.
        arcface_weight: (d, num_classes) class-weight matrix W of the ArcFace head.
        config: the inversion's settings.
        normalize: per-channel (mean, std) that map [0, 1] pixels to the model's input (a pair, a
            {"mean", "std"} dict or a `Normalization`); None means the model takes [0, 1] pixels.
            Sets the clamp range and the denormalisation.
        image_size: input side or (h, w); default from `backbone.backbone_kwargs["input_size"]`.
        in_channels: input channels; default from `backbone.backbone_kwargs["in_channels"]`.
        device: where to run (default: the CPU).
        callbacks: progress, previews, checkpoints and stop requests (see `ml.core.callbacks`).

    Returns:
        The images and metrics: `metrics["per_class"][str(c)]` holds `target_prob` (mean softmax
        probability of c under the inverted model, no margin), `accuracy` (fraction of c's images
        whose top class is c), `bn_loss` (BN loss of c's images as a batch of their own),
        `iterations` and `seconds`; the top level holds the same figures for the whole batch, plus
        `checkpoints` and `checkpoint_seconds` (time spent saving them) and the `config`.

    Raises:
        InversionError: bad config, a W that does not fit the backbone, or a checkpoint of a
            different inversion.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if arcface_weight.dim() != 2:
        raise InversionError(f"arcface_weight must be (d, num_classes), got shape {tuple(arcface_weight.shape)}")
    classes = config.validate(int(arcface_weight.shape[1]))
    channels, height, width = _input_shape(backbone, image_size, in_channels)
    mean, std = _value_range(normalize, channels)
    lo, hi = ((0 - mean) / std).to(device), ((1 - mean) / std).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    model = copy.deepcopy(backbone).to(device).eval()
    model.requires_grad_(False)  # only the pixels learn: no weight gradients computed
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weight_n = F.normalize(arcface_weight.detach().float().to(device), dim=0)
    labels = torch.tensor(classes, device=device).repeat_interleave(config.images_per_class)
    margin = math.radians(config.margin_degrees)
    n = labels.numel()

    generator = torch.Generator().manual_seed(config.seed)
    x = torch.randn(n, channels, height, width, generator=generator).to(device)
    x = x.clamp(min=lo, max=hi).contiguous(memory_format=memory_format).requires_grad_(True)
    optimizer = torch.optim.Adam(
        [x],
        lr=config.lr,
        betas=(float(config.adam_betas[0]), float(config.adam_betas[1])),
        fused=fused_adam_supported(device),
    )

    def to_pixels(t: torch.Tensor) -> torch.Tensor:
        return (t.detach().float().cpu() * std + mean).clamp(0, 1)

    loop = _InversionLoop(callbacks, config, (x, optimizer, generator), classes, labels, (lo, hi), to_pixels)
    with BNStatistics(model, config.first_bn_weight) as stats:

        def losses(xj: torch.Tensor) -> tuple[torch.Tensor, ...]:
            stats.clear()
            logits, cosine = arcface_logits(model(xj), weight_n, labels, margin, config.scale)
            loss_arc = F.cross_entropy(logits, labels)
            loss_bn = stats.loss(config.bn_form)
            total = loss_arc + config.lambda_bn * loss_bn
            # Priors with weight 0 cost nothing; their values are computed on report steps only.
            if config.tv_weight:
                total = total + config.tv_weight * total_variation(x)
            if config.l2_weight:
                total = total + config.l2_weight * l2_prior(x)
            return total, loss_bn, loss_arc, cosine

        loop.losses = torch.compile(losses, mode=config.compile_mode, dynamic=False) if config.compile else losses
        loop.run()  # raises Stopped when asked to stop (that step's checkpoint is saved first)
        step = loop.done
        elapsed = loop.elapsed + (time.perf_counter() - loop.started)
        metrics = _final_metrics(model, stats, x.detach(), labels, classes, config, weight_n)
    metrics.update(
        iterations=step,
        seconds=elapsed,
        config=asdict(config),
        checkpoints=loop.checkpoints,
        checkpoint_seconds=loop.checkpoint_seconds,
    )
    for per in metrics["per_class"].values():
        per.update(iterations=step, seconds=elapsed)
    images = to_pixels(x).contiguous()
    if callbacks is not None:
        callbacks.preview("grid", grid_png(images, config.images_per_class))
    return InversionResult(images, labels.cpu(), classes, step, metrics)


@torch.no_grad()
def _final_metrics(
    model: nn.Module,
    stats: BNStatistics,
    x: torch.Tensor,
    labels: torch.Tensor,
    classes: list[int],
    config: InversionConfig,
    weight_n: torch.Tensor,
) -> dict[str, Any]:
    """Target probability, top-1 accuracy and BN loss for the batch and for each class alone."""
    stats.clear()
    cosine = F.normalize(model(x), dim=1) @ weight_n
    bn_all = float(stats.loss(config.bn_form))
    prob = target_probability(cosine, labels, config.scale)
    hit = (cosine.argmax(dim=1) == labels).float()
    per_class: dict[str, dict[str, float]] = {}
    for c in classes:
        rows = labels == c
        stats.clear()
        model(x[rows])
        per_class[str(c)] = {
            "target_prob": float(prob[rows].mean()),
            "accuracy": float(hit[rows].mean()),
            "bn_loss": float(stats.loss(config.bn_form)),
        }
    stats.clear()
    return {
        "target_prob": float(prob.mean()),
        "accuracy": float(hit.mean()),
        "bn_loss": bn_all,
        "per_class": per_class,
    }
