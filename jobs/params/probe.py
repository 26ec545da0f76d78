"""Params of the `probe` kind: what a worker is, and how fast it multiplies."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from jobs.kindspec import KindSpec


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    matmul_size: int = Field(1024, ge=16, le=16384, description="Side of the square matrices multiplied.")
    matmul_repeats: int = Field(5, ge=1, le=1000, description="Timed repetitions (the best one is reported).")
    dtype: str = Field("float32", pattern="^(float32|float16|bfloat16)$", description="Matmul dtype.")
    duration_seconds: float = Field(
        0.0,
        ge=0.0,
        le=24 * 3600,
        description="Keep running this long after the matmul, checkpointing every second "
        "(a long, cancellable, resumable job for testing the platform).",
    )
    fail_with: str | None = Field(
        None, max_length=500, description="Fail on purpose with this message (tests the failure path)."
    )


KINDS = [
    KindSpec(
        name="probe",
        params=ProbeParams,
        queue="gpu",
        runner="workers.runners.probe:run_probe",
        description="What a worker is: torch/CUDA versions, device, memory and a timed matmul.",
    )
]
