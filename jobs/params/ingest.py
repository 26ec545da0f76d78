"""Params of the `ingest` kind: validate and store a completed multipart upload (`POST /datasets/uploads`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from jobs.kindspec import KindSpec
from jobs.refs import DATASET_REF_PATTERN


class IngestParams(BaseModel):
    """Queued by `POST /datasets/uploads/{id}/complete`; a dataset that is not an uploaded archive is refused."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(..., pattern=DATASET_REF_PATTERN, description='The upload\'s "dataset:<id>".')
    check_threads: int = Field(4, ge=1, le=32, description="Images decoded in parallel while validating.")


KINDS = [
    KindSpec(
        name="ingest",
        params=IngestParams,
        queue="cpu",
        runner="workers.runners.ingest:run_ingest",
        description="Validate an uploaded archive (paths, sizes, images), store its files and mark the dataset ready.",
        oom_hints=("check_threads",),
    ),
]
