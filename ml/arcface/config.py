"""Hyperparameters of ArcFace embedding training, their validation, and the training result."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ml.arcface.model import WARPS, Normalization
from ml.backbones import BackboneError, backbone_defaults, check_backbone_kwargs, create_backbone
from ml.core.defaults import shared_defaults
from ml.core.errors import InputError
from ml.data import ImageDataset, Split
from ml.metrics.verification import VerificationReport


class TrainConfigError(InputError):
    """A training hyperparameter is invalid; raised before any training starts."""


# The settings a job's params also expose take their one default from ml/arcface/defaults.json.
_SHARED = shared_defaults("arcface", "TrainConfig")


@dataclass
class TrainConfig:
    """Everything that defines a training run (the defaults are starting points, not tuned laws).

    Attributes:
        backbone: registered backbone name (`ml.backbones.list_backbones()`).
        backbone_kwargs: extra factory arguments (e.g. use_se, base_width, dropout).
        embedding_size: d.
        image_size: network input side or (h, w); None keeps the dataset's size.
        in_channels: 1 or 3; None keeps the dataset's channels.
        warp: input warping space (`ml.faces.warp`): none, roi_tanh, roi_tanh_polar, roi_tanh_circular.
        margin: ArcFace additive angular margin in degrees (pytorch-metric-learning's unit).
        scale: ArcFace logit scale s.
        optimizer: "sgd" (momentum) or "adam" (AdamW).
        lr, momentum, weight_decay: optimizer settings of the backbone group.
        loss_lr_multiplier: lr of the ArcFace W group relative to `lr`.
        loss_weight_decay: weight decay of W (None: same as the backbone).
        schedule: "cosine" (to 0 over the run), "step" (x step_gamma every step_epochs) or "constant".
        epochs, batch_size: length of the run and images per step.
        split_by: hold out whole identities ("identity") or a part of every identity ("sample").
        test_fraction: held-out share of identities or samples.
        seed: seeds the split, initialisation, data order, augmentation and dropout.
        max_train_samples: cap on training images (a seeded subset).
        augment_shift: random translation of up to this many pixels during training.
        augment_flip: random horizontal flips during training (faces yes, digits no).
        flip_tta: evaluation sums each embedding with that of the mirrored image.
        folds, max_pairs, gallery_fraction: evaluation settings (see `ml.metrics.verification`).
        normalize_mean, normalize_std: input normalisation of [0, 1] images, every channel.
        mixed_precision: on CUDA, bf16 autocast where supported, else fp16 with a grad scaler
            (`LoopPolicy.for_device`); the CPU always trains in fp32. Multi-rank runs only.
        clip_grad_norm: clip the gradients' global norm to this (None: no clipping). Multi-rank runs only.
        warmup_epochs: linear lr warmup over this many epochs' optimiser steps. Multi-rank runs only.
        lr_reference_batch: `lr` is for this global batch and scales linearly with the actual one
            (None: `lr` as given). Multi-rank runs only.
        accumulate: micro-batches of `batch_size` per optimiser step (global batch x accumulate
            samples per step). Multi-rank runs only.
        sample_rate: partial FC's share of each rank's ArcFace columns used per step (every class
            in the global batch kept, random negatives for the rest); only those columns get a
            gradient, a momentum update and weight decay (`ml.arcface.ranks.ColumnSGD`; SGD only).
            1.0 is the exact loss. Multi-rank runs only.
    """

    backbone: str = _SHARED["backbone"]
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    embedding_size: int = _SHARED["embedding_size"]
    image_size: int | tuple[int, int] | None = _SHARED["image_size"]
    in_channels: int | None = None
    warp: str = _SHARED["warp"]
    margin: float = _SHARED["margin"]
    scale: float = _SHARED["scale"]
    optimizer: Literal["sgd", "adam"] = _SHARED["optimizer"]
    lr: float = _SHARED["lr"]
    momentum: float = _SHARED["momentum"]
    weight_decay: float = _SHARED["weight_decay"]
    loss_lr_multiplier: float = _SHARED["loss_lr_multiplier"]
    loss_weight_decay: float | None = None
    schedule: Literal["cosine", "step", "constant"] = _SHARED["schedule"]
    step_epochs: int = _SHARED["step_epochs"]
    step_gamma: float = _SHARED["step_gamma"]
    epochs: int = _SHARED["epochs"]
    batch_size: int = _SHARED["batch_size"]
    split_by: Literal["identity", "sample"] = _SHARED["split_by"]
    test_fraction: float = _SHARED["test_fraction"]
    seed: int = _SHARED["seed"]
    max_train_samples: int | None = _SHARED["max_train_samples"]
    augment_shift: int = _SHARED["augment_shift"]
    augment_flip: bool = _SHARED["augment_flip"]
    flip_tta: bool = _SHARED["flip_tta"]
    folds: int = _SHARED["folds"]
    max_pairs: int = _SHARED["max_pairs"]
    gallery_fraction: float = _SHARED["gallery_fraction"]
    normalize_mean: float = 0.5
    normalize_std: float = 0.5
    mixed_precision: bool = _SHARED["mixed_precision"]
    clip_grad_norm: float | None = _SHARED["clip_grad_norm"]
    warmup_epochs: int = _SHARED["warmup_epochs"]
    lr_reference_batch: int | None = _SHARED["lr_reference_batch"]
    accumulate: int = _SHARED["accumulate"]
    sample_rate: float = _SHARED["sample_rate"]

    @property
    def image_hw(self) -> tuple[int, int] | None:
        if self.image_size is None:
            return None
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        return int(self.image_size[0]), int(self.image_size[1])

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["image_size"], tuple):
            d["image_size"] = list(d["image_size"])
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def resolved(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        norm: Normalization,
        dataset: ImageDataset,
        split: Split,
        train_ds: ImageDataset,
    ) -> dict[str, Any]:
        """The config.json content: every setting as used, plus versions and the data's identity."""
        import pytorch_metric_learning

        kwargs = {
            **self.backbone_kwargs,
            "embedding_size": self.embedding_size,
            "in_channels": in_channels,
            "input_size": list(image_size),
        }
        return {
            **self.to_json(),
            "backbone_kwargs": kwargs,
            "image_size": list(image_size),
            "in_channels": in_channels,
            "normalize": norm.to_json(),
            "dataset": dataset.source,
            "dataset_size": len(dataset),
            "split": split.to_json(),
            "num_classes": train_ds.num_classes,
            "class_names": train_ds.class_names,
            "arcface_weight_layout": "(embedding_size, num_classes)",
            "versions": {
                "torch": torch.__version__,
                "pytorch_metric_learning": pytorch_metric_learning.__version__,
                "python": platform.python_version(),
            },
        }


def validate_config(config: TrainConfig) -> None:
    """Raise `TrainConfigError` for any invalid setting, building nothing heavy.

    Checks the backbone name and kwargs (a tiny throw-away instance is built when the input size
    is known, so impossible sizes fail here too), sizes, optimiser, schedule, warp and evaluation.
    """
    c = config
    problems: list[str] = []
    if c.embedding_size < 1:
        problems.append(f"embedding_size must be >= 1, got {c.embedding_size}")
    if c.in_channels not in (None, 1, 3):
        problems.append(f"in_channels must be 1 or 3, got {c.in_channels}")
    hw = c.image_hw
    if hw is not None and min(hw) < 1:
        problems.append(f"image_size must be positive, got {c.image_size}")
    if c.backbone == "rtnet50" and c.warp != "roi_tanh_polar":
        problems.append(f"rtnet50 takes roi_tanh_polar inputs: set warp='roi_tanh_polar', got {c.warp!r}")
    if c.warp not in WARPS:
        problems.append(f"warp must be one of {', '.join(WARPS)}, got {c.warp!r}")
    if not 0 < c.margin < 90:
        problems.append(f"margin must be in (0, 90) degrees, got {c.margin}")
    if c.scale <= 0:
        problems.append(f"scale must be > 0, got {c.scale}")
    if c.optimizer not in ("sgd", "adam"):
        problems.append(f"optimizer must be 'sgd' or 'adam', got {c.optimizer!r}")
    if c.schedule not in ("cosine", "step", "constant"):
        problems.append(f"schedule must be 'cosine', 'step' or 'constant', got {c.schedule!r}")
    if c.lr <= 0 or c.loss_lr_multiplier <= 0:
        problems.append(f"lr and loss_lr_multiplier must be > 0, got {c.lr} and {c.loss_lr_multiplier}")
    if c.weight_decay < 0 or (c.loss_weight_decay is not None and c.loss_weight_decay < 0):
        problems.append("weight decays must be >= 0")
    if c.epochs < 1:
        problems.append(f"epochs must be >= 1, got {c.epochs}")
    if c.step_epochs < 1 or not 0 < c.step_gamma <= 1:
        problems.append("step_epochs must be >= 1 and step_gamma in (0, 1]")
    if c.batch_size < 2:
        problems.append(f"batch_size must be >= 2 (batch norm), got {c.batch_size}")
    if not 0 < c.test_fraction < 1:
        problems.append(f"test_fraction must be in (0, 1), got {c.test_fraction}")
    if c.split_by not in ("identity", "sample"):
        problems.append(f"split_by must be 'identity' or 'sample', got {c.split_by!r}")
    if c.max_train_samples is not None and c.max_train_samples < 2:
        problems.append(f"max_train_samples must be >= 2, got {c.max_train_samples}")
    if c.augment_shift < 0:
        problems.append(f"augment_shift must be >= 0, got {c.augment_shift}")
    if c.folds < 2 or c.max_pairs < 1 or not 0 < c.gallery_fraction < 1:
        problems.append("folds must be >= 2, max_pairs >= 1 and gallery_fraction in (0, 1)")
    if c.clip_grad_norm is not None and c.clip_grad_norm <= 0:
        problems.append(f"clip_grad_norm must be > 0, got {c.clip_grad_norm}")
    if c.warmup_epochs < 0 or c.accumulate < 1 or (c.lr_reference_batch is not None and c.lr_reference_batch < 1):
        problems.append("warmup_epochs must be >= 0, accumulate >= 1 and lr_reference_batch >= 1")
    if not 0 < c.sample_rate <= 1:
        problems.append(f"sample_rate must be in (0, 1], got {c.sample_rate}")
    elif c.sample_rate < 1 and c.optimizer != "sgd":
        problems.append(f"sample_rate < 1 needs optimizer 'sgd' (its sampled-column step), got {c.optimizer!r}")
    if c.normalize_std <= 0:
        problems.append(f"normalize_std must be > 0, got {c.normalize_std}")
    reserved = {"embedding_size", "in_channels", "input_size"} & set(c.backbone_kwargs)
    if reserved:
        problems.append(f"set {', '.join(sorted(reserved))} as training settings, not in backbone_kwargs")
    try:
        check_backbone_kwargs(c.backbone, **c.backbone_kwargs)
        if not problems and hw is not None and "base_width" in backbone_defaults(c.backbone):
            # A width-1 instance is cheap and fails exactly where the real one would (input too small).
            kwargs = {**c.backbone_kwargs, "base_width": 1}
            create_backbone(
                c.backbone, **kwargs, embedding_size=c.embedding_size, in_channels=c.in_channels or 1, input_size=hw
            )
    except BackboneError as exc:
        problems.append(str(exc))
    if problems:
        raise TrainConfigError("invalid training config: " + "; ".join(problems))


@dataclass
class TrainedEmbedding:
    """The result of `train_embedding`.

    Attributes:
        backbone: the trained backbone, eval mode, on the CPU.
        arcface_weight: the ArcFace class weights W, shape (embedding_size, num_classes) exactly as
            pytorch-metric-learning's `ArcFaceLoss.W` (column c is class c's centre direction).
        num_classes, class_names: the training identities (labels 0..num_classes-1).
        image_size, in_channels: the network's input.
        normalize: input normalisation of [0, 1] images (`normalize.apply`, `.undo`, `.valid_range`).
        split: the held-out split of the source dataset; train_indices (after max_train_samples)
            and test_indices index the source dataset.
        history: one dict per epoch: epoch, loss, acc (training accuracy via W), lr.
        metrics: held-out metrics (`ml.metrics.verification.evaluate_embeddings`) plus final training loss/acc.
        report: the held-out verification report (scores, ROC) for plots.
        test_embeddings, test_labels: the held-out embeddings (L2-normalised) and source labels.
        config: the resolved config (config.json content).
        seconds: wall time of this call's training epochs.
    """

    backbone: nn.Module
    arcface_weight: torch.Tensor
    num_classes: int
    class_names: list[str]
    image_size: tuple[int, int]
    in_channels: int
    normalize: Normalization
    split: Split
    train_indices: torch.Tensor
    test_indices: torch.Tensor
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    report: VerificationReport
    test_embeddings: torch.Tensor
    test_labels: torch.Tensor
    config: dict[str, Any]
    seconds: float
