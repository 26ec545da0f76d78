"""Params of the `train_embedding` and `evaluate` kinds (pydantic only: the API never imports torch)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.kindspec import KindSpec, ml_defaults
from jobs.refs import DATASET_REF_PATTERN, MODEL_REF_PATTERN

# Settings shared with ml.arcface.config.TrainConfig: one default each, in ml/arcface/defaults.json.
TRAIN = ml_defaults("arcface", "TrainConfig")

# evaluate's protocol: random, or a file path inside the dataset (no leading dot or slash).
PROTOCOL = re.compile(r"(random|(pairs|bin):[A-Za-z0-9_][A-Za-z0-9_./-]{0,255})")

# Mirrors ml.backbones.list_backbones(); a test keeps the two in step.
BACKBONES = ("se_resnet18", "iresnet18", "iresnet50", "rtnet50")
WARPS = ("none", "roi_tanh", "roi_tanh_polar", "roi_tanh_circular")


class TrainEmbeddingParams(BaseModel):
    """ArcFace training of a face/digit embedding backbone, evaluated on a held-out split."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        "builtin:mnist",
        pattern=DATASET_REF_PATTERN,
        description='Training data: "builtin:mnist", "builtin:digits" or "dataset:<id>" (one folder per identity).',
    )
    backbone: Literal["se_resnet18", "iresnet18", "iresnet50", "rtnet50"] = Field(
        TRAIN["backbone"],
        description="Registered backbone: se_resnet18 (resnet_face18), iresnet18, iresnet50, rtnet50 (RTNet's "
        "hybrid bottlenecks; needs warp roi_tanh_polar).",
    )
    use_se: bool = Field(True, description="se_resnet18 only: squeeze-and-excitation in every block.")
    base_width: int = Field(
        64, ge=4, le=256, description="Width of the first stage (64 in the published layouts; stages double it)."
    )
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Dropout before the head's Linear layer (None: the backbone's default)."
    )
    embedding_size: int = Field(TRAIN["embedding_size"], ge=1, le=4096, description="Length of the embedding d.")
    image_size: int | None = Field(
        TRAIN["image_size"],
        ge=16,
        le=512,
        description="Side of the square network input; None: 32 for builtin:mnist and builtin:digits, 112 "
        "(the ArcFace face crop) for uploaded datasets.",
    )
    grey: bool | None = Field(
        None, description="True: grey (1 channel); False: RGB (3 channels); None: keep the dataset's channels."
    )
    warp: Literal["none", "roi_tanh", "roi_tanh_polar", "roi_tanh_circular"] = Field(
        TRAIN["warp"], description="Warp input images into a RoI-tanh space before the backbone (faces)."
    )
    margin: float = Field(
        TRAIN["margin"], gt=0.0, lt=90.0, description="ArcFace angular margin in degrees (28.6 = 0.5 rad)."
    )
    scale: float = Field(TRAIN["scale"], gt=0.0, le=1024.0, description="ArcFace logit scale s.")
    optimizer: Literal["sgd", "adam"] = Field(TRAIN["optimizer"], description="SGD with momentum, or AdamW.")
    lr: float = Field(TRAIN["lr"], gt=0.0, le=10.0, description="Learning rate of the backbone.")
    momentum: float = Field(TRAIN["momentum"], ge=0.0, lt=1.0, description="SGD momentum.")
    weight_decay: float = Field(TRAIN["weight_decay"], ge=0.0, le=1.0, description="Weight decay of the backbone.")
    loss_lr_multiplier: float = Field(
        TRAIN["loss_lr_multiplier"],
        gt=0.0,
        le=100.0,
        description="Learning rate of the ArcFace class weights W relative to lr.",
    )
    schedule: Literal["cosine", "step", "constant"] = Field(
        TRAIN["schedule"], description="Per-epoch schedule: cosine to 0, step decay, or constant."
    )
    step_epochs: int = Field(TRAIN["step_epochs"], ge=1, le=10_000, description="Step schedule: epochs between decays.")
    step_gamma: float = Field(TRAIN["step_gamma"], gt=0.0, le=1.0, description="Step schedule: decay factor.")
    epochs: int = Field(TRAIN["epochs"], ge=1, le=10_000, description="Training epochs (a checkpoint after each).")
    batch_size: int = Field(TRAIN["batch_size"], ge=2, le=8192, description="Images per step.")
    split_by: Literal["identity", "sample"] = Field(
        TRAIN["split_by"], description="Hold out whole identities (unseen people) or part of every identity's images."
    )
    test_fraction: float = Field(TRAIN["test_fraction"], gt=0.0, lt=1.0, description="Held-out share for evaluation.")
    max_train_samples: int | None = Field(
        TRAIN["max_train_samples"], ge=2, description="Cap on training images (a seeded subset)."
    )
    augment_shift: int = Field(
        TRAIN["augment_shift"], ge=0, le=64, description="Random translation of up to this many pixels."
    )
    augment_flip: bool = Field(
        TRAIN["augment_flip"], description="Random horizontal flips while training (faces, not digits)."
    )
    flip_tta: bool = Field(TRAIN["flip_tta"], description="Evaluate with embedding(x) + embedding(mirrored x).")
    folds: int = Field(
        TRAIN["folds"], ge=2, le=100, description="Cross-validation folds for the verification threshold."
    )
    max_pairs: int = Field(
        TRAIN["max_pairs"], ge=10, le=1_000_000, description="Same (and different) pairs evaluated, at most."
    )
    seed: int = Field(
        TRAIN["seed"], ge=0, le=2**31 - 1, description="Seeds split, init, data order, augmentation, dropout."
    )
    gpus: Literal[1, 2, 4, 8] = Field(
        1,
        description="Ranks training together (GPUs of one host; gloo processes on a CPU worker): the backbone in "
        "DDP, the ArcFace weights sharded; batch_size is the global batch (a multiple of gpus). Goes to queue "
        "gpu-N for N > 1 (see README, GPU workers).",
    )
    mixed_precision: bool = Field(
        TRAIN["mixed_precision"],
        description="gpus > 1 on CUDA: bf16 autocast where supported, else fp16 with a grad scaler (CPU: fp32).",
    )
    clip_grad_norm: float | None = Field(
        TRAIN["clip_grad_norm"], gt=0, le=1e6, description="gpus > 1: clip the gradients' global norm (None: off)."
    )
    warmup_epochs: int = Field(
        TRAIN["warmup_epochs"], ge=0, le=1000, description="gpus > 1: linear lr warmup over this many epochs."
    )
    lr_reference_batch: int | None = Field(
        TRAIN["lr_reference_batch"],
        ge=1,
        le=1_000_000,
        description="gpus > 1: lr is for this global batch and scales linearly with the actual one (None: as given).",
    )
    accumulate: int = Field(
        TRAIN["accumulate"], ge=1, le=1024, description="gpus > 1: micro-batches per optimiser step."
    )
    sample_rate: float = Field(
        TRAIN["sample_rate"],
        gt=0.0,
        le=1.0,
        description="gpus > 1, optimizer sgd: partial FC's share of each rank's ArcFace classes per step (every "
        "class in the batch kept, random others); only those get gradient and momentum updates. 1.0: exact.",
    )

    @model_validator(mode="after")
    def _sampling_needs_ranks(self) -> TrainEmbeddingParams:
        if self.sample_rate < 1 and self.gpus == 1:
            raise ValueError("sample_rate < 1 (partial FC) needs gpus > 1: one GPU trains the exact loss")
        if self.sample_rate < 1 and self.optimizer != "sgd":
            raise ValueError("sample_rate < 1 needs optimizer sgd")
        return self


class EvaluateParams(BaseModel):
    """Verification and identification metrics of a trained model on a labelled dataset."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        ...,
        pattern=MODEL_REF_PATTERN,
        description='The model: "job:<id>" of a train_embedding job, or "model:<id>" of an uploaded ONNX model.',
    )
    dataset: str = Field(
        ...,
        pattern=DATASET_REF_PATTERN,
        description='Labelled images: "builtin:mnist", "builtin:digits" or "dataset:<id>".',
    )
    use_split: Literal["held_out", "all"] = Field(
        "held_out",
        description="held_out: when the dataset is the model's training dataset, evaluate only its held-out "
        "split; all: every image (for a dataset the model never saw).",
    )
    flip_tta: bool = Field(TRAIN["flip_tta"], description="Embedding(x) + embedding(mirrored x).")
    folds: int = Field(
        TRAIN["folds"], ge=2, le=100, description="Cross-validation folds for the verification threshold."
    )
    max_pairs: int = Field(
        TRAIN["max_pairs"], ge=10, le=1_000_000, description="Same (and different) pairs evaluated, at most."
    )
    gallery_fraction: float = Field(
        TRAIN["gallery_fraction"], gt=0.0, lt=1.0, description="Share of each identity used as gallery."
    )
    max_samples: int | None = Field(None, ge=2, description="Evaluate at most this many images (seeded subset).")
    protocol: str = Field(
        "random",
        max_length=260,
        description='Verification pairs: "random" (seeded pairs of the dataset), "pairs:<path>" (an LFW-style '
        'pairs.txt in the dataset, 10 folds, images named name/name_0001.jpg or name/1.pgm) or "bin:<path>" '
        "(an insightface verification .bin in the dataset); accuracy is the mean over the protocol's folds, "
        "each fold's threshold chosen on the others.",
    )
    seed: int = Field(
        TRAIN["seed"], ge=0, le=2**31 - 1, description="Seeds pair sampling, folds and the gallery split."
    )

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        if not PROTOCOL.fullmatch(value):
            raise ValueError('protocol must be "random", "pairs:<path in the dataset>" or "bin:<path in the dataset>"')
        return value


KINDS = [
    KindSpec(
        name="train_embedding",
        params=TrainEmbeddingParams,
        queue="gpu",
        runner="workers.runners.embedding:run_train_embedding",
        description="ArcFace (pytorch-metric-learning) training of se_resnet18/iresnet18/iresnet50/rtnet50 on 1-8 "
        "GPUs, "
        "evaluated on a held-out split: backbone.pt, arcface.pt, config.json, metrics, plots.",
        oom_hints=("batch_size", "image_size", "base_width"),
        ml_configs={"ml.arcface.config:TrainConfig": {}},
        gpus_param="gpus",
    ),
    KindSpec(
        name="evaluate",
        params=EvaluateParams,
        queue="gpu",
        runner="workers.runners.embedding:run_evaluate",
        description="Verification of a trained model on a labelled dataset: ROC, AUC, 10-fold threshold, "
        "TAR@FAR, identification.",
        oom_hints=("max_samples",),
        ml_configs={"ml.arcface.config:TrainConfig": {}},
    ),
]
