"""Params of the `export` kind: a trained backbone as backbone.onnx, with its parity checked; no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jobs.kindspec import KindSpec
from jobs.refs import DATASET_REF_PATTERN, JOB_REF_PATTERN


class ExportParams(BaseModel):
    """Export a train_embedding backbone to ONNX; parity against PyTorch on the model's held-out images."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., pattern=JOB_REF_PATTERN, description='"job:<id>" of a succeeded train_embedding job.')
    dataset: str | None = Field(
        None,
        pattern=DATASET_REF_PATTERN,
        description="Images for the parity check; None: the model's training dataset (its held-out split).",
    )
    use_split: Literal["held_out", "all"] = Field(
        "held_out", description="held_out: the model's held-out split of its own dataset; all: every image."
    )
    max_images: int = Field(2000, ge=10, le=100_000, description="At most this many images (a seeded sample).")
    max_abs_diff: float = Field(1e-3, gt=0, le=1.0, description="Parity bound on raw outputs.")
    max_accuracy_points: float = Field(0.1, ge=0, le=100, description="Parity bound on verification accuracy.")
    flip_tta: bool = Field(False, description="Evaluate with embedding(x) + embedding(mirrored x).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Pairs, folds and the image sample.")


KINDS = [
    KindSpec(
        name="export",
        params=ExportParams,
        queue="cpu",
        runner="workers.runners.export:run_export",
        description="A trained backbone as backbone.onnx (opset 17, dynamic batch) with parity in onnxruntime: "
        "largest output difference and verification accuracy against PyTorch.",
        oom_hints=("max_images",),
    ),
]
