"""Request and response models, one family per resource and direction (Create, Public, Page)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, computed_field

from jobs.dataset_status import status_of
from jobs.kindspec import Queue
from jobs.states import JobStatus

ModelKind = Literal["generator", "facenet", "backbone", "onnx"]


def _as_utc(value: datetime) -> datetime:
    # The database holds naive UTC; callers get an explicit offset ("Z") so browsers parse it right.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `invalid_params`, `not_found`.")
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """Every error response has this shape."""

    error: ErrorDetail


COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed request: a cursor not handed out, an unstorable value."},
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key."},
    404: {"model": ErrorBody, "description": "No such resource for this key."},
    422: {"model": ErrorBody, "description": "Invalid request."},
    503: {"model": ErrorBody, "description": "The database or the object store is unavailable; try again."},
}


# ---- jobs -------------------------------------------------------------------------------------
NAME_MAX = 200
TAGS_MAX = 32
TAG_MAX = 64
NOTES_MAX = 10_000
TAG_PATTERN = r"^[A-Za-z0-9_.:-]+$"
Tag = Annotated[str, Field(min_length=1, max_length=TAG_MAX, pattern=TAG_PATTERN)]


def _unique_tags(tags: list[str] | None) -> list[str] | None:
    # A repeated tag says nothing more: keep the first of each, in the caller's order.
    return None if tags is None else list(dict.fromkeys(tags))


Tags = Annotated[list[Tag], Field(max_length=TAGS_MAX), AfterValidator(_unique_tags)]
JobName = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
JobNotes = Annotated[str, Field(max_length=NOTES_MAX)]


class JobCreate(BaseModel):
    """A job to run: its kind and params (validated by the kind's params model)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=64, description="A kind from `GET /kinds`.")
    params: dict[str, Any] = Field(default_factory=dict, description="The kind's params (see its schema).")
    queue: Queue | None = Field(None, description="Override the kind's default queue.")
    priority: int = Field(0, ge=0, le=9, description="Broker priority 0..9 (Redis serves 0 first).")
    max_attempts: int | None = Field(
        None, ge=1, le=100, description="Attempts before the job fails (preemptions do not count)."
    )
    after: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] | None = Field(
        None, max_length=100, description="Job ids this job waits for (a `job:<id>` ref in params waits too)."
    )
    name: JobName | None = Field(None, description="A name for people (<= 200 characters); not unique.")
    tags: Tags = Field(default_factory=list, description="Up to 32 tags of <= 64 characters of A-Z a-z 0-9 _ . : -")
    notes: JobNotes | None = Field(None, description="Free text (<= 10,000 characters), searched by `q`.")


class JobPatch(BaseModel):
    """Labels to change; a field left out stays as it is (null clears name or notes)."""

    model_config = ConfigDict(extra="forbid")

    name: JobName | None = None
    tags: Tags | None = Field(None, description="The whole new tag list (replaces the old one).")
    add_tags: Tags | None = Field(None, description="Tags to add (kept in order, after the current ones).")
    remove_tags: Tags | None = Field(None, description="Tags to remove (absent ones are ignored).")
    notes: JobNotes | None = None


class JobPublic(BaseModel):
    """A job as its owner sees it."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    name: str | None
    tags: list[str]
    notes: str | None
    params: dict[str, Any]
    status: JobStatus
    queue: str
    priority: int
    attempt: int
    max_attempts: int
    preemptions: int
    progress: float = Field(description="0..1 (1 once succeeded).")
    progress_step: int
    progress_total: int
    metrics: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    checkpoint_step: int | None
    cancel_requested: bool
    lease_owner: str | None
    parent_id: str | None = None
    stop_reason: str | None = Field(None, description='Why the platform stopped it: "budget", "early stopped by ...".')
    created_at: UtcDatetime
    enqueued_at: UtcDatetime | None
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    updated_at: UtcDatetime


class JobsPage(BaseModel):
    """One page of jobs, newest first; pass `next_cursor` back as `cursor` for the next page."""

    data: list[JobPublic]
    next_cursor: str | None


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    attempt: int
    type: str = Field(description="log | status | progress | error")
    message: str
    data: dict[str, Any] | None
    created_at: UtcDatetime


class EventsPage(BaseModel):
    """Events oldest first; poll again with `after=next_after` to get only newer ones."""

    data: list[EventPublic]
    next_after: int | None


class ArtifactPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    size: int
    sha256: str
    content_type: str
    created_at: UtcDatetime


# ---- kinds ------------------------------------------------------------------------------------
class KindPublic(BaseModel):
    """A job kind; the dashboard builds its form from `params_schema`."""

    name: str
    description: str
    queue: Queue
    params_schema: dict[str, Any] = Field(description="JSON schema of the kind's params.")


# ---- datasets ---------------------------------------------------------------------------------
class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    layout: Literal["identities", "flat"]
    num_files: int
    num_identities: int
    size_bytes: int
    created_at: UtcDatetime
    files: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ref(self) -> str:
        """What a job's params use to name this dataset."""
        return f"dataset:{self.id}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> Literal["uploading", "uploaded", "ingesting", "ready", "failed"]:
        """`ready` once usable by jobs; a multipart upload passes through the others (`POST /datasets/uploads`)."""
        return status_of(self.files)  # type: ignore[return-value]


class DatasetCreated(DatasetPublic):
    """A stored upload, with the archive members that were not images (skipped, not stored)."""

    skipped: list[str] = Field(default_factory=list)


class DatasetsPage(BaseModel):
    data: list[DatasetPublic]
    next_cursor: str | None


class DatasetFace(BaseModel):
    """One face an embed job found in a file: box and landmarks in the image's pixels."""

    face: int
    box: list[float | None]
    landmarks: list[list[float | None]] | None
    prob: float | None
    image_width: int
    image_height: int


class DatasetFailure(BaseModel):
    reason: str = Field(description="undecodable, no_face, too_large, too_small or not_image.")
    detail: str


class DatasetFile(BaseModel):
    path: str = Field(description='The path inside the dataset ("s1/1.pgm"); `dataset:<id>/<path>` names it.')
    identity: str = Field(description='Its folder (the person) in an "identities" dataset; "" in a flat one.')
    thumbnail: str = Field(description="GET this (with your key) for a PNG thumbnail.")
    faces: list[DatasetFace] | None = Field(description="The embed job's faces in it (null: no embed job asked).")
    failure: DatasetFailure | None = Field(description="Why the embed job could not use it, if it could not.")


class IdentityCount(BaseModel):
    name: str
    files: int


class EmbedSummary(BaseModel):
    job_id: str
    files: int
    faces: int
    failures: int
    failure_reasons: dict[str, int]


class DatasetFilesPage(BaseModel):
    """Files of a dataset in natural order; pass `next_offset` back as `offset` for the next page."""

    dataset_id: str
    total: int = Field(description="Files matching the filters (identity, failed).")
    offset: int
    limit: int
    next_offset: int | None
    identities: list[IdentityCount] = Field(description="Every identity of the dataset with its file count.")
    embed: EmbedSummary | None
    data: list[DatasetFile]


# ---- models -----------------------------------------------------------------------------------
class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    kind: ModelKind
    filename: str
    size: int
    sha256: str
    meta: dict[str, Any]
    created_at: UtcDatetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ref(self) -> str:
        """What a job's params use to name this model."""
        return f"model:{self.id}"


class ModelsPage(BaseModel):
    data: list[ModelPublic]
    next_cursor: str | None


# ---- workers and health -----------------------------------------------------------------------
class WorkerPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    hostname: str
    pid: int
    queues: str
    device: str
    current_job_id: str | None = Field(description="The job it runs, when that job is the caller's (else null).")
    busy: bool = Field(description="Running a job (the caller's or another key's).")
    draining: bool
    started_at: UtcDatetime
    last_heartbeat: UtcDatetime
    stale: bool = Field(description="No heartbeat for longer than the configured worker_stale_seconds.")
    load: dict[str, float] | None = Field(
        None,
        description="The latest utilisation sample of the worker's process tree: sys/cpu_pct (percent of one core), "
        "sys/rss_mb, and where NVML answers sys/gpu_util_pct and sys/gpu_mem_mb of its GPU.",
    )


class Health(BaseModel):
    status: Literal["ok"]


class ComponentStatus(BaseModel):
    ok: bool
    error: str | None = None
    seconds: float = Field(description="How long the check took.")


class Readiness(BaseModel):
    """Each dependency checked on its own; `status` is ok only when all are."""

    status: Literal["ok", "unavailable"]
    components: dict[str, ComponentStatus]


# ---- verify -----------------------------------------------------------------------------------
class VerifyFace(BaseModel):
    """The face found in one image: box in its pixels, detection probability, image size."""

    x1: float
    y1: float
    x2: float
    y2: float
    prob: float
    image_width: int
    image_height: int
    landmarks: list[list[float]] | None = Field(
        None, description="The 5 landmarks [x, y] in the image's pixels: eyes, nose, mouth corners."
    )
    crop: str | None = Field(None, description="The job's artifact holding the aligned crop the model embedded (PNG).")
    view: str | None = Field(
        None, description="The job's artifact holding the image as decoded (PNG, at most 640 a side)."
    )


class VerifyEvaluation(BaseModel):
    """The model's own evaluation at its threshold (its metrics.json): k-fold accuracy on held-out pairs."""

    accuracy: float
    accuracy_std: float | None = None
    auc: float | None = None
    num_pairs: int | None = None


class VerifyResult(BaseModel):
    """Two faces compared: cosine distance against the model's threshold."""

    job_id: str = Field(description="The `verify` job that computed this (GET /jobs/{id} shows it too).")
    same: bool = Field(description="distance <= threshold: the same person.")
    distance: float = Field(description="Cosine distance 1 - similarity, in [0, 2].")
    similarity: float = Field(description="Cosine similarity of the two L2-normalised embeddings.")
    threshold: float = Field(description="Cosine distance at or under which two faces are the same person.")
    threshold_source: str = Field(description='"model metrics" (1 - the evaluated similarity threshold) or "params".')
    model: str
    faces: dict[str, VerifyFace] = Field(description="image_a and image_b: the face each image gave.")
    evaluation: VerifyEvaluation | None = Field(
        None, description="The model's verification accuracy at the threshold used (null: a threshold from params)."
    )


class VerifyPending(BaseModel):
    """The `verify` job did not finish within the timeout: poll GET /jobs/{job_id} for its result."""

    job_id: str
    status: str
    message: str
