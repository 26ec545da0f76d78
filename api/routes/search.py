"""`POST /search`: one image's faces (or one embedding) against a face index. Runs a `search_one` job.

The job goes to the cpu queue like any other (it is the caller's, listed in GET /jobs as kind
`search_one`, and its crops are its artifacts); the request waits for it to end (a PostgreSQL
NOTIFY wakes it, `api.job_wait`) and answers with its result, or 202 when it takes longer than
`timeout`. The worker keeps loaded indexes and models in a per-process cache, so a repeat query
costs a detection, an embedding and a search.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

from celery import Celery
from fastapi import Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CeleryDep, CurrentKey, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError, NotFound
from api.ingest import commit_or_undo, put_all
from api.job_wait import wait_for_end
from api.routes import keyed_router
from api.routes.uploading import multipart_body, upload_dir
from api.routes.verify import MAX_TIMEOUT_S, _check_upload
from api.schemas import ErrorBody, VerifyPending
from api.uploads import ReceivedFile, receive_multipart
from jobs.kinds import get_kind, validate_params
from jobs.models import ApiKey, Job, JobEvent, new_id
from jobs.params.embed import MAX_VERIFY_IMAGE_BYTES
from jobs.params.search import INPUT_IMAGE, MAX_EMBEDDING_SIZE, MAX_K
from jobs.refs import check_params_refs, parse_ref, resolve_ref
from jobs.settings import Settings
from jobs.states import JobStatus
from jobs.store import Store, join_key
from jobs.submit import new_job, send_job

router = keyed_router("/search", "search")
DEFAULT_TIMEOUT_S = 30.0
FIELDS = frozenset({"image", "embedding", "index", "model", "k", "detector"})
FORM = multipart_body(
    {
        "image": {"type": "string", "format": "binary", "description": "An image file (at most 8 MiB), or:"},
        "embedding": {"type": "string", "description": "Instead of an image: a JSON list of numbers (one face)."},
        "index": {"type": "string", "description": '"job:<id>" of your succeeded index job (optional with an image).'},
        "model": {"type": "string", "description": "The embedding model (default: the index's)."},
        "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 5},
        "detector": {"type": "string", "enum": ["mtcnn", "none"], "description": '"none": the image is a face crop.'},
    },
    [],
)


class SearchMatch(BaseModel):
    rank: int
    similarity: float = Field(description="Cosine similarity to the gallery face.")
    identity: str = Field(description='The gallery face\'s person ("" when its image had none).')
    source: str = Field(description='The gallery image, "dataset:<id>/<path>".')


class SearchFace(BaseModel):
    box: list[float] | None = Field(description="[x1, y1, x2, y2] in image pixels (None for an embedding query).")
    landmarks: list[list[float]] | None = Field(description="5 [x, y] points (None without detection).")
    score: float | None = Field(description="Detection probability.")
    crop: str | None = Field(description="The aligned crop's artifact name.")
    crop_url: str | None = Field(description="Where the crop downloads: /jobs/<id>/artifacts/<name>.")
    embedding: list[float]
    matches: list[SearchMatch]
    decision: str | None = Field(
        description='The best match\'s identity, "unknown" below the threshold; None without an index.'
    )


class SearchResult(BaseModel):
    """Every face of the image (largest first) with its top-k gallery matches and open-set decision."""

    job_id: str
    index: str | None
    model: str
    threshold: float | None = Field(description="Cosine-similarity threshold of the model (None: closed set).")
    faces: list[SearchFace]
    cache: dict[str, bool | None] = Field(default_factory=dict, description="Whether the worker had it loaded.")
    worker_seconds: float | None = None


def _check_index(session: Session, key: ApiKey, text: str) -> Job:
    ref = parse_ref(text.strip())
    if ref is None or ref.kind != "job" or ref.path is not None:
        raise ApiError(422, "invalid_index", 'index is "job:<id>" of an index job', {"field": "index"})
    job = resolve_ref(session, key.id, ref)
    if not isinstance(job, Job) or job.kind != "index":
        raise NotFound("index job", ref.id)
    if job.status != JobStatus.SUCCEEDED:
        raise ApiError(409, "index_not_ready", f"index job {job.id} is {job.status.value}, not succeeded",
                       {"job_id": job.id})  # fmt: skip
    return job


def _embedding(text: str, dim: int | None) -> list[float]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ApiError(422, "invalid_embedding", "embedding must be a JSON list of numbers", {"field": "embedding"})
    if not value or len(value) > MAX_EMBEDDING_SIZE or not all(math.isfinite(v) for v in value):
        raise ApiError(422, "invalid_embedding", f"embedding must hold 1..{MAX_EMBEDDING_SIZE} finite numbers")
    if dim is not None and len(value) != dim:
        raise ApiError(422, "embedding_size", f"the index holds {dim}-d embeddings; this one has {len(value)}",
                       {"expected": dim, "got": len(value)})  # fmt: skip
    if all(v == 0 for v in value):
        raise ApiError(422, "invalid_embedding", "an all-zero embedding has no direction to search")
    return [float(v) for v in value]


def _submit(
    session: Session, store: Store, celery: Celery, settings: Settings, key: ApiKey, files: dict[str, ReceivedFile],
    fields: dict[str, str],
) -> Job:  # fmt: skip
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        allowed = {"allowed": sorted(FIELDS)}
        raise ApiError(422, "unknown_field", f"unknown form field(s): {', '.join(unknown)}", allowed)
    job_id = new_id()
    params: dict[str, Any] = {k: fields[k].strip() for k in ("model", "k", "detector") if k in fields}
    index_job = _check_index(session, key, fields["index"]) if fields.get("index", "").strip() else None
    if index_job is not None:
        params["index"] = f"job:{index_job.id}"
    uploads: list[tuple[str, Path, str]] = []
    if "image" in files:
        ctype = _check_upload(files["image"], "image", settings)
        uploads.append((join_key(f"jobs/{job_id}", "inputs/image"), files["image"].path, ctype))
        params["image"] = INPUT_IMAGE
    elif "embedding" in fields:
        if index_job is None:
            raise ApiError(422, "missing_index", "an embedding is searched against an index: send index")
        dim = (index_job.result or {}).get("dim")
        params["embedding"] = _embedding(fields["embedding"], dim if isinstance(dim, int) else None)
    else:
        raise ApiError(422, "missing_image", "send image (a file) or embedding (a JSON list)", {"field": "image"})
    held = (index_job.result or {}).get("model") if index_job is not None else None
    if index_job is not None and held is not None and params.get("model", held) != held:
        raise ApiError(422, "model_mismatch", f"index job {index_job.id} holds embeddings of {held}; search it with "
                       f"that model (or leave model out), not {params['model']}", {"model": held})  # fmt: skip
    if index_job is None and "model" not in params:
        raise ApiError(422, "missing_model", "without an index, send model (what embeds the faces)")
    validated = validate_params("search_one", params)
    stored = validated.model_dump(mode="json", exclude_none=True)
    check_params_refs(session, key.id, stored)  # the model (and index) are the caller's, or 404
    if len(json.dumps(stored)) > settings.max_params_bytes:
        raise ApiError(413, "params_too_large", f"params are over {settings.max_params_bytes} bytes as JSON")
    put_all(store, uploads, "image")
    job = new_job("search_one", stored, queue=get_kind("search_one").queue, owner_id=key.id,
                  max_attempts=settings.default_max_attempts, job_id=job_id)  # fmt: skip
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, type="status", message="queued (POST /search)", created_at=job.created_at))
    commit_or_undo(session, store, [k for k, _, _ in uploads])
    send_job(session, job.id, job.kind, job.queue, job.priority, app=celery)
    return job


@router.post(
    "",
    response_model=SearchResult,
    openapi_extra=FORM,
    responses={
        202: {"model": VerifyPending, "description": "Not done within the timeout: poll GET /jobs/{job_id}."},
        400: {"model": ErrorBody, "description": "The image is not decodable or is a decompression bomb."},
        404: {"model": ErrorBody, "description": "Unknown index or model (or another key's)."},
        409: {"model": ErrorBody, "description": "The index job has not succeeded."},
        413: {"model": ErrorBody, "description": "The image is over 8 MiB."},
        422: {"model": ErrorBody, "description": "Bad fields, an embedding of the wrong length, no face found."},
    },
)
async def search(
    request: Request,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    celery: CeleryDep,
    timeout: Annotated[
        float, Query(ge=0, le=MAX_TIMEOUT_S, description=f"Seconds to wait (at most {MAX_TIMEOUT_S:g}).")
    ] = DEFAULT_TIMEOUT_S,
) -> SearchResult | Response:
    """Who is this? Every face of `image` (or one `embedding`) with its top `k` matches in `index`.

    Each face has its box, landmarks, score, aligned crop (an artifact of the job) and embedding;
    with an index, its matches (similarity, identity, source image) and the open-set decision:
    the best match's identity, or "unknown" when its similarity is under the model's evaluated
    threshold. Without an index only the faces and embeddings come back (200 with `faces: []` when
    the image has none); with an index an image without a face answers 422 `no_face`.
    """
    session.commit()
    async with upload_dir(settings) as workdir:
        form = await receive_multipart(request, workdir, MAX_VERIFY_IMAGE_BYTES, {"image"})
        job = await run_in_threadpool(_submit, session, store, celery, settings, key, form.files, form.fields)
    job_id = job.id
    status, result, error = await run_in_threadpool(
        wait_for_end, session, job_id, settings.resolved_database_url, timeout
    )
    if status == JobStatus.SUCCEEDED and isinstance(result, dict):
        if result.get("index") and not result.get("faces"):
            raise ApiError(422, "no_face", "no face was found in the image", {"job_id": job_id})
        return SearchResult(job_id=job_id, **result)
    if status in (JobStatus.FAILED, JobStatus.CANCELLED):
        first = (error or status.value).strip().splitlines()[0][:500]
        raise ApiError(422, "search_failed", f"the search job {status.value}: {first}", {"job_id": job_id})
    message = f"not finished within {timeout:g} s; GET /jobs/{job_id} has the result"
    pending = VerifyPending(job_id=job_id, status=status.value, message=message)
    headers = {"Location": f"/jobs/{job_id}"}
    return Response(pending.model_dump_json(), status_code=202, media_type="application/json", headers=headers)
