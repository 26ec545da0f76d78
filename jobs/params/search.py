"""Params of the `search` (a probe set against an index) and `search_one` (POST /search) kinds; no torch."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.kindspec import KindSpec, ml_defaults
from jobs.params.embed import EMBED_MODEL_PATTERN
from jobs.refs import DATASET_REF_PATTERN, JOB_REF_PATTERN

DETECTOR = ml_defaults("faces", "DetectorSettings")
MAX_K = 100
MAX_EMBEDDING_SIZE = 4096
# The image POST /search stored with the job (jobs/<id>/inputs/image).
INPUT_IMAGE = "input:image"


class SearchParams(BaseModel):
    """Every face of a dataset (or of an embed job) searched against an index: an identification report."""

    model_config = ConfigDict(extra="forbid")

    index: str = Field(..., pattern=JOB_REF_PATTERN, description='"job:<id>" of a succeeded index job.')
    dataset: str | None = Field(
        None,
        pattern=DATASET_REF_PATTERN,
        description='Probes: "dataset:<id>" (one folder per person), embedded here with the index\'s model.',
    )
    embed_job: str | None = Field(
        None, pattern=JOB_REF_PATTERN, description='Probes: "job:<id>" of an embed job by the index\'s model.'
    )
    k: int = Field(5, ge=1, le=MAX_K, description="Matches listed per probe in matches.csv.")
    fpirs: list[float] = Field(
        [0.01, 0.1], min_length=1, max_length=10, description="Open-set operating points: FNIR at each FPIR."
    )
    detector: Literal["mtcnn", "none"] = Field(
        DETECTOR["method"], description='A dataset\'s images: "mtcnn" detects and aligns, "none" uses each whole.'
    )
    min_face_size: int = Field(DETECTOR["min_face_size"], ge=12, le=2000, description="MTCNN: smallest face.")

    @field_validator("fpirs")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if not all(0.0 < f < 1.0 for f in v):
            raise ValueError("each FPIR is in (0, 1)")
        return v

    @model_validator(mode="after")
    def _one_probe_set(self) -> Self:
        if (self.dataset is None) == (self.embed_job is None):
            raise ValueError("give the probes as exactly one of dataset or embed_job")
        return self


class SearchOneParams(BaseModel):
    """One image (every face in it) or one embedding against an index: top-k matches and the decision."""

    model_config = ConfigDict(extra="forbid")

    index: str | None = Field(
        None,
        pattern=JOB_REF_PATTERN,
        description='"job:<id>" of a succeeded index job; None (with an image): only the faces\' embeddings.',
    )
    model: str | None = Field(
        None, pattern=EMBED_MODEL_PATTERN, description="The embedding model; None: the index's own."
    )
    image: Literal["input:image"] | None = Field(None, description="The image POST /search stored with the job.")
    embedding: list[float] | None = Field(
        None, min_length=1, max_length=MAX_EMBEDDING_SIZE, description="Instead of an image: one embedding."
    )
    k: int = Field(5, ge=1, le=MAX_K, description="Matches per face.")
    detector: Literal["mtcnn", "none"] = Field(
        DETECTOR["method"], description='"mtcnn": every face found; "none": the image is one face crop.'
    )

    @model_validator(mode="after")
    def _one_query(self) -> Self:
        if (self.image is None) == (self.embedding is None):
            raise ValueError("give exactly one of image or embedding")
        if self.embedding is not None and self.index is None:
            raise ValueError("an embedding is searched against an index: give index")
        if self.index is None and self.model is None:
            raise ValueError("without an index, name the model that embeds the image")
        return self


KINDS = [
    KindSpec(
        name="search",
        params=SearchParams,
        queue="gpu",
        runner="workers.runners.search:run_search",
        description="A probe set against a face index: rank-1, rank-5, FNIR at FPIR (report.json), top-k per "
        "probe (matches.csv).",
        oom_hints=("k",),
    ),
    KindSpec(
        name="search_one",
        params=SearchOneParams,
        queue="cpu",
        runner="workers.runners.search:run_search_one",
        description="POST /search: one image's faces (or one embedding) against an index; cached per worker.",
        oom_hints=("k",),
    ),
]
