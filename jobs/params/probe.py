"""Params of the `probe` kind: what a worker is, and how fast it multiplies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from pydantic.json_schema import SkipJsonSchema

from jobs.kindspec import KindSpec

# Test knobs: accepted by the API but left out of `GET /kinds` (and so of the dashboard's form), and
# stored only when set, so an ordinary probe's params read as they always did.
HIDDEN = ("fault", "fault_attempts", "allocate_gib", "chatter", "fail_at_second")


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
    fault: SkipJsonSchema[Literal["accelerator_error", "out_of_memory"] | None] = Field(
        None,
        description="Test only: raise a torch.AcceleratorError or torch.OutOfMemoryError (message: fail_with, "
        "else torch's own wording) before the matmul, to exercise the worker's device-error handling.",
    )
    fault_attempts: SkipJsonSchema[int | None] = Field(
        None, ge=1, le=100, description="Test only: fail_with/fault act on the first this many attempts only."
    )
    allocate_gib: SkipJsonSchema[float | None] = Field(
        None,
        gt=0,
        le=1e6,
        description="Test only: allocate this many GiB on the device before the matmul (beyond the GPU's memory: "
        "a real out-of-memory error).",
    )

    chatter: SkipJsonSchema[bool | None] = Field(
        None,
        description="Test only: each second of duration_seconds, print a line with the wall time to stdout, "
        "one to stderr and log one at INFO (the worker's log capture).",
    )

    fail_at_second: SkipJsonSchema[int | None] = Field(
        None,
        ge=1,
        le=24 * 3600,
        description="Test only: raise fail_with at this second of duration_seconds (after its progress), not before "
        "the matmul: a failure at a known step.",
    )

    @model_serializer(mode="wrap")
    def _omit_unset_test_knobs(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in HIDDEN:
            if data.get(name) is None:
                data.pop(name, None)
        return data


KINDS = [
    KindSpec(
        name="probe",
        params=ProbeParams,
        queue="gpu",
        runner="workers.runners.probe:run_probe",
        description="What a worker is: torch/CUDA versions, device, memory and a timed matmul.",
        oom_hints=("matmul_size",),
    )
]
