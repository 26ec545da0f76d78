"""Params of the `convert_dataset` kind: a folder/archive dataset re-packed as tar shards or RecordIO."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.kindspec import KindSpec
from jobs.refs import DATASET_REF_PATTERN


class ConvertDatasetParams(BaseModel):
    """Re-pack an uploaded (folder) dataset; the result is a new dataset of the same key."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        ..., pattern=DATASET_REF_PATTERN, description='The source: "dataset:<id>" (one folder per identity).'
    )
    to: Literal["shards", "recordio"] = Field(
        "shards",
        description="shards: WebDataset tar shards <name>-000000.tar (<key>.<ext> + <key>.cls); recordio: "
        "insightface's train.rec + train.idx (header record 0 with the identity ranges).",
    )
    samples_per_shard: int = Field(1000, ge=1, le=1_000_000, description="shards: samples per tar shard.")
    name: str = Field("data", min_length=1, max_length=64, description="shards: the shard name prefix (A-Z a-z 0-9 _).")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not all(c.isascii() and (c.isalnum() or c == "_") for c in value):
            raise ValueError("name: letters, digits and _ only")
        return value


KINDS = [
    KindSpec(
        name="convert_dataset",
        params=ConvertDatasetParams,
        queue="cpu",
        runner="workers.runners.convert:run_convert_dataset",
        description="Folder or archive dataset -> tar shards or RecordIO, stored as a new dataset, with progress.",
        oom_hints=("samples_per_shard",),
    ),
]
