"""Params of the `invert` kind: class representations from a trained ArcFace model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.kindspec import KindSpec, ml_defaults
from jobs.refs import MODEL_REF_PATTERN

# Settings shared with ml.invert.config.InversionConfig: one default each, in ml/invert/defaults.json.
INVERSION = ml_defaults("invert", "InversionConfig")


class InvertParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        ...,
        pattern=MODEL_REF_PATTERN,
        description='The trained ArcFace model: "job:<id>" of a train_embedding job, or "model:<id>" of an upload.',
    )
    classes: list[int] | None = Field(
        INVERSION["classes"], max_length=10000, description="Target class indices (default: every class of the model)."
    )
    images_per_class: int = Field(
        INVERSION["images_per_class"], ge=1, le=256, description="Images generated per class (one shared batch)."
    )
    iterations: int = Field(INVERSION["iterations"], ge=1, le=1_000_000, description="Adam steps on the pixels.")
    lr: float = Field(INVERSION["lr"], gt=0, le=10, description="Adam learning rate (normalised pixel space).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        INVERSION["lr_schedule"], description="Learning-rate schedule: constant, or cosine decay to 0 at the last step."
    )
    lambda_bn: float = Field(INVERSION["lambda_bn"], ge=0, le=1e4, description="Weight of the BN-statistics loss.")
    bn_form: Literal["squared", "l2"] = Field(
        INVERSION["bn_form"],
        description="BN loss form: squared (ArcFace paper: ||mu-mu_r||^2 + ||sigma-sigma_r||^2) "
        "or l2 (DeepInversion: ||mu-mu_r|| + ||var-var_r||).",
    )
    first_bn_weight: float = Field(
        INVERSION["first_bn_weight"],
        ge=0,
        le=1e4,
        description="Weight of the first (stem) BN layer's term (DeepInversion's multiplier).",
    )
    adam_betas: tuple[float, float] = Field(
        tuple(INVERSION["adam_betas"]), description="Adam's (beta1, beta2), each in [0, 1)."
    )
    tv_weight: float = Field(
        INVERSION["tv_weight"], ge=0, le=1e4, description="Weight of the total-variation prior (per-image L1 sum)."
    )
    l2_weight: float = Field(
        INVERSION["l2_weight"], ge=0, le=1e4, description="Weight of the L2 prior (per-image squared norm)."
    )
    jitter: int = Field(INVERSION["jitter"], ge=0, le=64, description="Largest random roll per step, in pixels.")
    flip: bool = Field(
        INVERSION["flip"], description="Random horizontal flips each step (turn off for digits and text)."
    )
    seed: int = Field(
        INVERSION["seed"], ge=0, le=2**31 - 1, description="Seeds the initial images and the jitter/flip draws."
    )
    checkpoint_every: int = Field(
        INVERSION["checkpoint_every"], ge=0, le=1_000_000, description="Checkpoint interval in steps (0: on stop only)."
    )
    preview_every: int = Field(
        INVERSION["preview_every"], ge=0, le=1_000_000, description="Preview-grid interval in steps (0: at the end)."
    )

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError("adam_betas must both be in [0, 1)")
        return v

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("classes must name at least one class (or be omitted for all)")
        if any(c < 0 for c in v):
            raise ValueError("classes must be >= 0")
        if len(set(v)) != len(v):
            raise ValueError("classes has duplicates")
        return v


KINDS = [
    KindSpec(
        name="invert",
        params=InvertParams,
        queue="gpu",
        runner="workers.runners.invert:run_invert",
        description="Class representations from a trained ArcFace model: BN statistics + ArcFace + image priors.",
        oom_hints=("images_per_class", "classes"),
        ml_configs={"ml.invert.config:InversionConfig": {}},
    )
]
