"""`POST /verify`: are two face images the same person? Runs a `verify` job and waits for it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from celery import Celery
from fastapi import Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CeleryDep, CurrentKey, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError, NotFound, PayloadTooLarge
from api.images import BadImage, check_image
from api.ingest import commit_or_undo, put_all
from api.job_wait import wait_for_end
from api.routes import keyed_router
from api.routes.uploading import multipart_body, upload_dir
from api.schemas import ErrorBody, VerifyPending, VerifyResult
from api.uploads import ReceivedFile, receive_multipart
from jobs.kinds import get_kind, validate_params
from jobs.models import ApiKey, Job, JobEvent, Model, new_id
from jobs.params.embed import INPUT_NAMES, MAX_VERIFY_IMAGE_BYTES, VerifyParams
from jobs.refs import RefPathNotFound, check_params_refs, parse_ref, resolve_ref
from jobs.settings import Settings
from jobs.states import JobStatus
from jobs.store import Store, join_key
from jobs.submit import new_job, send_job

router = keyed_router("/verify", "verify")
DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 120.0
# Form fields besides the two images: the verify kind's params (strings, coerced by its model).
PARAM_FIELDS = frozenset(VerifyParams.model_fields) - set(INPUT_NAMES)
# Documented as a file part; the same field may instead carry the text "dataset:<id>/<path>".
_IMAGE_FIELD = {
    "type": "string",
    "format": "binary",
    "description": "The image file (PNG, JPEG, PGM, BMP, GIF, TIFF, WebP; at most 8 MiB), or instead a plain "
    'text field "dataset:<id>/<path in the dataset>" naming an image of one of your datasets.',
}
FORM = multipart_body(
    {
        "image_a": _IMAGE_FIELD,
        "image_b": {**_IMAGE_FIELD, "description": "The second image, as image_a."},
        "model": {
            "type": "string",
            "description": '"job:<id>" of your succeeded train_embedding job (its evaluated threshold is used), '
            'or "facenet:vggface2" / "facenet:casia-webface" with weights and threshold.',
        },
        "weights": {"type": "string", "description": 'FaceNet only: "model:<id>" of your uploaded weights.'},
        "threshold": {
            "type": "number",
            "description": "Cosine distance at or under which the faces match (default: the model's own).",
        },
        "detector": {"type": "string", "enum": ["mtcnn", "none"], "description": '"none": images are face crops.'},
        "min_face_size": {"type": "integer"},
        "upscale_below": {"type": "integer"},
        "flip_tta": {"type": "boolean"},
    },
    ["image_a", "image_b", "model"],
)


def _check_upload(upload: ReceivedFile, name: str, settings: Settings) -> str:
    if upload.size > MAX_VERIFY_IMAGE_BYTES:
        limit = MAX_VERIFY_IMAGE_BYTES
        raise PayloadTooLarge(f"{name} is {upload.size} bytes; at most {limit}", limit)
    if upload.size == 0:
        raise ApiError(400, "invalid_image", f"{name} is empty")
    try:
        return check_image(upload.path, settings.max_image_pixels, name)
    except BadImage as exc:
        raise ApiError(400, "invalid_image", f"{name}: {exc}", {"field": name}) from None


def _check_dataset_image(session: Session, key: ApiKey, name: str, text: str) -> None:
    ref = parse_ref(text)
    if ref is None or ref.kind != "dataset" or ref.path is None:
        raise ApiError(
            422, "invalid_image_ref", f'{name}: send an image file, or the text "dataset:<id>/<path>"', {"field": name}
        )
    try:
        resolve_ref(session, key.id, ref)
    except RefPathNotFound:
        raise ApiError(
            404, "image_not_found", f"{name}: dataset {ref.id} has no image {ref.path!r}", {"field": name}
        ) from None


def _check_model(session: Session, key: ApiKey, params: VerifyParams) -> None:
    """The model must be the caller's and usable; another key's reads as unknown (404)."""
    ref = parse_ref(params.model)
    if ref is not None and ref.kind == "job":
        job = resolve_ref(session, key.id, ref)
        if not isinstance(job, Job) or job.kind != "train_embedding":
            raise NotFound("model job", ref.id)
        if job.status != JobStatus.SUCCEEDED:
            raise ApiError(
                409, "model_not_ready", f"model job {job.id} is {job.status.value}, not succeeded", {"job_id": job.id}
            )
        return
    if ref is not None and ref.kind == "model":  # an uploaded ONNX embedding model
        row = resolve_ref(session, key.id, ref)
        if not isinstance(row, Model) or row.kind != "onnx":
            raise NotFound("onnx model", ref.id)
        if params.threshold is None and "threshold" not in (row.meta or {}):
            raise ApiError(422, "threshold_required", f"{params.model} was uploaded without a threshold: pass one")
        return
    if params.weights is not None:
        weights = parse_ref(params.weights)
        row = resolve_ref(session, key.id, weights) if weights is not None and weights.kind == "model" else None
        if not isinstance(row, Model) or row.kind != "facenet":
            raise NotFound("facenet weights", weights.id if weights is not None else params.weights)
    if params.threshold is None:
        raise ApiError(
            422,
            "threshold_required",
            f"{params.model} has no evaluation of its own: pass threshold (a cosine distance, e.g. 0.6)",
        )


def _submit(
    session: Session, store: Store, celery: Celery, settings: Settings, key: ApiKey, files: dict[str, Any],
    fields: dict[str, str],
) -> Job:  # fmt: skip
    """Check everything, store the uploaded images under the job's prefix, create and send the job."""
    unknown = sorted(set(fields) - PARAM_FIELDS - set(INPUT_NAMES))
    if unknown:
        allowed = sorted(PARAM_FIELDS | set(INPUT_NAMES))
        raise ApiError(422, "unknown_field", f"unknown form field(s): {', '.join(unknown)}", {"allowed": allowed})
    job_id = new_id()
    params: dict[str, Any] = {k: v for k, v in fields.items() if k in PARAM_FIELDS}
    uploads: list[tuple[str, Path, str]] = []
    for name in INPUT_NAMES:
        if name in files:
            ctype = _check_upload(files[name], name, settings)
            uploads.append((join_key(f"jobs/{job_id}/inputs", name), files[name].path, ctype))
            params[name] = f"input:{name}"
        elif name in fields:
            _check_dataset_image(session, key, name, fields[name].strip())
            params[name] = fields[name].strip()
        else:
            raise ApiError(422, "missing_image", f"send {name} (a file, or dataset:<id>/<path>)", {"field": name})
    if "model" not in params:
        raise ApiError(422, "missing_model", 'send model: "job:<id>" of a train_embedding job, or "facenet:<weights>"')
    validated = validate_params("verify", params)
    assert isinstance(validated, VerifyParams)
    _check_model(session, key, validated)
    stored = validated.model_dump(mode="json")
    check_params_refs(session, key.id, stored)  # every other reference, as POST /jobs checks them
    if len(json.dumps(stored)) > settings.max_params_bytes:
        raise ApiError(413, "params_too_large", f"params are over {settings.max_params_bytes} bytes as JSON")
    put_all(store, uploads, "images")
    job = new_job(
        "verify",
        stored,
        queue=get_kind("verify").queue,
        owner_id=key.id,
        max_attempts=settings.default_max_attempts,
        job_id=job_id,
    )
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, type="status", message="queued (POST /verify)", created_at=job.created_at))
    commit_or_undo(session, store, [k for k, _, _ in uploads])
    send_job(session, job.id, job.kind, job.queue, job.priority, app=celery)
    return job


@router.post(
    "",
    response_model=VerifyResult,
    openapi_extra=FORM,
    responses={
        202: {"model": VerifyPending, "description": "Not done within the timeout: poll GET /jobs/{job_id}."},
        400: {"model": ErrorBody, "description": "An image is not decodable or is a decompression bomb."},
        404: {"model": ErrorBody, "description": "Unknown model, weights, dataset or image (or another key's)."},
        409: {"model": ErrorBody, "description": "The model's training job has not succeeded."},
        413: {"model": ErrorBody, "description": "An image is over 8 MiB."},
        415: {"model": ErrorBody, "description": "The body is not multipart/form-data."},
        422: {"model": ErrorBody, "description": "Bad params, or the job failed on the images (e.g. no face)."},
    },
)
async def verify(
    request: Request,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    celery: CeleryDep,
    timeout: Annotated[
        float,
        Query(ge=0, le=MAX_TIMEOUT_S, description=f"Seconds to wait for the answer (at most {MAX_TIMEOUT_S:g})."),
    ] = DEFAULT_TIMEOUT_S,
) -> VerifyResult | Response:
    """Compare the faces of two images with a model: cosine distance, the model's threshold, same or not.

    Send a multipart form with `image_a` and `image_b` (each an image file, or the text
    `dataset:<id>/<path>` naming an image of one of your datasets) and `model` (`job:<id>` of your
    succeeded train_embedding job, whose evaluated threshold is used). The largest face of each image
    is detected (MTCNN), aligned and embedded by a `verify` job on the cpu queue, owned by your key.
    The answer comes when the job finishes within `timeout` seconds; otherwise 202 with the job's id
    (GET /jobs/{id} then has the same numbers in `result`). A job that fails on the images (no face
    found) answers 422 with its error.
    """
    session.commit()  # end the key check's read while the images stream in
    async with upload_dir(settings) as workdir:
        form = await receive_multipart(request, workdir, 2 * MAX_VERIFY_IMAGE_BYTES, set(INPUT_NAMES))
        job = await run_in_threadpool(_submit, session, store, celery, settings, key, form.files, form.fields)
    job_id = job.id
    url = settings.resolved_database_url
    status, result, error = await run_in_threadpool(wait_for_end, session, job_id, url, timeout)
    if status == JobStatus.SUCCEEDED and result is not None:
        return VerifyResult(job_id=job_id, **result)
    if status in (JobStatus.FAILED, JobStatus.CANCELLED):
        first = (error or status.value).strip().splitlines()[0][:500]
        raise ApiError(422, "verify_failed", f"the verify job {status.value}: {first}", {"job_id": job_id})
    pending = VerifyPending(
        job_id=job_id,
        status=status.value,
        message=f"not finished within {timeout:g} s; GET /jobs/{job_id} has the result when it is done",
    )
    headers = {"Location": f"/jobs/{job_id}"}
    return Response(pending.model_dump_json(), status_code=202, media_type="application/json", headers=headers)
