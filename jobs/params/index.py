"""Params of the `index` kind: a face index built from embed jobs, or a new version of one; no torch."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from jobs.kindspec import KindSpec, ml_defaults
from jobs.refs import JOB_REF_PATTERN

INDEX = ml_defaults("index", "IndexSettings")
MAX_EMBED_JOBS = 100
MAX_REMOVE = 100_000
JobRef = Annotated[str, Field(pattern=JOB_REF_PATTERN)]


class IndexParams(BaseModel):
    """A face index (exact up to exact_max rows, HNSW above) of embed jobs' faces, or a new version of one."""

    model_config = ConfigDict(extra="forbid")

    embed_jobs: list[JobRef] = Field(
        [],
        max_length=MAX_EMBED_JOBS,
        description='A new index: "job:<id>" of succeeded embed jobs, all of one model; their faces are the gallery '
        "(identity: each image's first folder).",
    )
    base: str | None = Field(
        None,
        pattern=JOB_REF_PATTERN,
        description='A new version of an index: "job:<id>" of a succeeded index job (never edited in place).',
    )
    add: list[JobRef] = Field(
        [], max_length=MAX_EMBED_JOBS, description='With base: "job:<id>" of embed jobs (same model) to add.'
    )
    remove: list[str] = Field(
        [],
        max_length=MAX_REMOVE,
        description='With base: rows to drop, by source image ("dataset:<id>/s3/7.pgm" or "s3/7.pgm") or '
        'identity ("s3").',
    )
    name: str | None = Field(None, max_length=200, description="A label for the index.")
    exact_max: int = Field(
        INDEX["exact_max"], ge=1, le=100_000_000, description="Up to this many rows the index is exact (flat)."
    )
    hnsw_m: int = Field(INDEX["hnsw_m"], ge=4, le=128, description="HNSW links per row (above exact_max).")
    ef_construction: int = Field(INDEX["ef_construction"], ge=8, le=2048, description="HNSW build candidate list.")
    ef_search: int = Field(INDEX["ef_search"], ge=8, le=4096, description="HNSW search candidate list (recall).")

    @model_validator(mode="after")
    def _new_or_version(self) -> Self:
        if self.base is None:
            if not self.embed_jobs:
                raise ValueError("give embed_jobs (a new index) or base (a new version of an index)")
            if self.add or self.remove:
                raise ValueError("add and remove apply to a base index: give base")
        else:
            if self.embed_jobs:
                raise ValueError("with base, name the embed jobs to add in add, not embed_jobs")
            if not self.add and not self.remove:
                raise ValueError("a new version adds (add) or removes (remove) something")
        if len(set(self.embed_jobs + self.add)) != len(self.embed_jobs) + len(self.add):
            raise ValueError("an embed job is named twice")
        return self


KINDS = [
    KindSpec(
        name="index",
        params=IndexParams,
        queue="cpu",
        runner="workers.runners.index:run_index",
        description="A face index of embed jobs (flat inner product up to exact_max, HNSW above), or a new version "
        "of one: index.faiss, idmap.json, index.json.",
        ml_configs={"ml.index.face_index:IndexSettings": {}},
        oom_hints=("hnsw_m", "ef_construction"),
    ),
]
