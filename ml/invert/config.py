"""The settings and the result of a model inversion (`ml.invert.inversion`), and its named error."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ml.core.defaults import shared_defaults
from ml.core.errors import InputError
from ml.invert.losses import BNForm


class InversionError(InputError):
    """The inversion's configuration, model or checkpoint does not fit together."""


# The settings a job's params also expose take their one default from ml/invert/defaults.json.
_SHARED = shared_defaults("invert", "InversionConfig")


@dataclass
class InversionConfig:
    """Everything that decides an inversion's result (saved in checkpoints and metrics).

    Attributes:
        classes: target class indices; None means every class of the ArcFace weight matrix.
        images_per_class: images generated for each class (all classes share one batch).
        iterations: Adam steps.
        lr: Adam learning rate on the pixels (normalised space).
        lr_schedule: "constant", or "cosine" (decays to 0 at the last step).
        adam_betas: Adam's (beta1, beta2); DeepInversion's (0.5, 0.9) (measured better than
            torch's (0.9, 0.999) on MNIST, bench/notes/invert.md).
        lambda_bn: weight of the BN-statistics loss (0.05 in the ArcFace paper's inversion).
        bn_form: "squared" (ArcFace paper) or "l2" (DeepInversion's plain norms).
        first_bn_weight: weight of the first (stem) BN layer's term, DeepInversion's
            `first_bn_multiplier`; 1 weighs every layer alike.
        tv_weight: weight of the total-variation prior (per-image sum of |neighbour differences|).
        l2_weight: weight of the L2 prior (per-image ||x||^2).
        jitter: maximum roll in pixels, per axis, drawn each step.
        flip: mirror the batch with probability 1/2 each step (off for digits).
        seed: seeds the initial images and the jitter/flip draws.
        margin_degrees: ArcFace additive angular margin, in degrees (PML's unit).
        scale: ArcFace logit scale.
        checkpoint_every: save a checkpoint every this many steps (0: only when asked to stop).
        preview_every: send a preview grid every this many steps (0: only at the end).
        progress_every: report progress (one host sync) every this many steps.
        channels_last: run the network in channels-last memory format.
        compile: wrap the forward pass and losses in `torch.compile`.
        compile_mode: `torch.compile`'s mode (None: its default; "reduce-overhead" adds CUDA graphs).
    """

    classes: list[int] | None = _SHARED["classes"]
    images_per_class: int = _SHARED["images_per_class"]
    iterations: int = _SHARED["iterations"]
    lr: float = _SHARED["lr"]
    lr_schedule: Literal["constant", "cosine"] = _SHARED["lr_schedule"]
    adam_betas: tuple[float, float] = tuple(_SHARED["adam_betas"])
    lambda_bn: float = _SHARED["lambda_bn"]
    bn_form: BNForm = _SHARED["bn_form"]
    first_bn_weight: float = _SHARED["first_bn_weight"]
    tv_weight: float = _SHARED["tv_weight"]
    l2_weight: float = _SHARED["l2_weight"]
    jitter: int = _SHARED["jitter"]
    flip: bool = _SHARED["flip"]
    seed: int = _SHARED["seed"]
    margin_degrees: float = 28.6
    scale: float = 64.0
    checkpoint_every: int = _SHARED["checkpoint_every"]
    preview_every: int = _SHARED["preview_every"]
    progress_every: int = 20
    channels_last: bool = False
    compile: bool = False
    compile_mode: str | None = None

    def validate(self, num_classes: int) -> list[int]:
        """The target classes, or `InversionError` naming the first impossible value."""
        checks = [
            (self.images_per_class >= 1, f"images_per_class must be >= 1, got {self.images_per_class}"),
            (self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.lr_schedule in ("constant", "cosine"), f"unknown lr_schedule {self.lr_schedule!r}"),
            (all(0 <= b < 1 for b in self.adam_betas), f"adam_betas must be in [0, 1), got {self.adam_betas}"),
            (self.first_bn_weight >= 0, f"first_bn_weight must be >= 0, got {self.first_bn_weight}"),
            (self.lambda_bn >= 0, f"lambda_bn must be >= 0, got {self.lambda_bn}"),
            (self.bn_form in ("squared", "l2"), f"bn_form must be 'squared' or 'l2', got {self.bn_form!r}"),
            (self.tv_weight >= 0 and self.l2_weight >= 0, "tv_weight and l2_weight must be >= 0"),
            (self.jitter >= 0, f"jitter must be >= 0, got {self.jitter}"),
            (self.checkpoint_every >= 0 and self.preview_every >= 0, "intervals must be >= 0"),
            (self.progress_every >= 1, f"progress_every must be >= 1, got {self.progress_every}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InversionError(message)
        classes = list(range(num_classes)) if self.classes is None else [int(c) for c in self.classes]
        if not classes:
            raise InversionError("classes is empty: name at least one target class")
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise InversionError(f"classes {bad} are outside the model's {num_classes} classes (0..{num_classes - 1})")
        if len(set(classes)) != len(classes):
            raise InversionError(f"classes has duplicates: {classes}")
        return classes


@dataclass
class InversionResult:
    """What `invert` returns.

    Attributes:
        images: (N, C, H, W) float32 in [0, 1] on the CPU, class-major (image k of classes[i] at
            i * images_per_class + k).
        labels: (N,) target class of each image.
        classes: the target classes, in grid-row order.
        step: the last completed step.
        metrics: overall and per-class figures (see `invert`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[int]
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
