"""Datasets uploaded in parts, straight to the store: start, (local store: receive parts), complete, abort.

`POST /datasets/uploads` creates the dataset row (status `uploading`, not usable by jobs) and hands
out one URL per part: presigned S3 `UploadPart` URLs, or, with the local folder store, this API's
`PUT /datasets/uploads/{id}/parts/{n}` (streamed to a file in the store, with the API key).
`POST .../complete` joins the parts (each ETag checked) and queues an `ingest` job on the cpu queue,
which validates the archive as `POST /datasets` does and marks the dataset `ready`. The upload id is
the dataset's id. `DELETE` aborts an unfinished (or failed) upload and removes its parts.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CeleryDep, CurrentKey, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError, Conflict, NotFound
from api.ingest import clean_name
from api.routes import keyed_router
from api.routes.datasets import archive_stem
from api.schemas import ErrorBody
from jobs import dataset_status as st
from jobs import multipart
from jobs.models import ApiKey, Dataset, new_id
from jobs.states import utcnow
from jobs.store import LocalStore
from jobs.submit import new_job, submit_job

router = keyed_router("/datasets/uploads", "datasets")
DEFAULT_PART_BYTES = 64 * 1024**2
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    413: {"model": ErrorBody},
}


class UploadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200, description="The archive's file name (.zip, .tar, .tgz).")
    size: int = Field(..., ge=1, description="The archive's size in bytes.")
    parts: int | None = Field(None, ge=1, le=multipart.MAX_PARTS, description="How many parts (default: 64 MiB each).")


class PartUrl(BaseModel):
    number: int
    url: str
    method: str = "PUT"
    api_key: bool = Field(description="Send X-API-Key with the PUT (a part this API receives, not a presigned URL).")


class UploadStarted(BaseModel):
    upload_id: str
    dataset_id: str
    part_size: int
    expires_in: int
    parts: list[PartUrl]


class PartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: int = Field(..., ge=1, le=multipart.MAX_PARTS)
    etag: str = Field(..., min_length=1, max_length=200)


class UploadComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parts: list[PartIn] = Field(..., min_length=1, max_length=multipart.MAX_PARTS)


class UploadQueued(BaseModel):
    dataset_id: str
    job_id: str
    status: str


class PartReceived(BaseModel):
    number: int
    etag: str


def _upload(session: Any, key: ApiKey, upload_id: str) -> Dataset:
    """The caller's dataset of that upload id (404 otherwise: another key's reads as unknown)."""
    row = session.get(Dataset, upload_id) if len(upload_id) <= 32 else None
    if row is None or row.owner_id != key.id or "upload" not in (row.files or {}):
        raise NotFound("upload", upload_id[:80])
    return row


def _expect(ds: Dataset, *statuses: str) -> dict[str, Any]:
    status = st.status_of(ds.files)
    if status not in statuses:
        raise Conflict(f"upload {ds.id} is {status}", {"status": status})
    return dict(ds.files)


@router.post("", status_code=201, response_model=UploadStarted, responses=ERRORS)
def start_upload(
    body: UploadCreate, key: CurrentKey, session: SessionDep, settings: SettingsDep, store: StoreDep
) -> UploadStarted:
    """Start a multipart upload of a dataset archive: its id (also the dataset's) and one URL per part."""
    limit = settings.max_archive_uncompressed_bytes
    if body.size > limit:
        raise ApiError(413, "payload_too_large", f"an archive is at most {limit} bytes", {"limit_bytes": limit})
    parts = body.parts or max(1, math.ceil(body.size / DEFAULT_PART_BYTES))
    part_size = math.ceil(body.size / parts)
    if math.ceil(body.size / part_size) != parts:
        raise ApiError(422, "invalid_parts", f"{body.size} bytes cannot be cut into {parts} non-empty parts")
    if not isinstance(store, LocalStore) and parts > 1 and part_size < multipart.MIN_PART_BYTES:
        raise ApiError(
            422, "invalid_parts", f"S3 parts are at least {multipart.MIN_PART_BYTES} bytes (all but the last): "
            "ask for fewer parts", {"min_part_bytes": multipart.MIN_PART_BYTES},
        )  # fmt: skip
    if isinstance(store, LocalStore) and part_size > settings.max_upload_bytes:
        # Parts to the local store pass through this API: each is one body, under its body limit.
        raise ApiError(
            422, "invalid_parts", f"parts of {part_size} bytes are over the {settings.max_upload_bytes} bytes "
            "a request may send: ask for more parts", {"limit_bytes": settings.max_upload_bytes},
        )  # fmt: skip
    ds_id = new_id()
    object_key = f"uploads/{ds_id}/archive"
    s3_id = multipart.start(store, object_key)
    upload = {"key": object_key, "id": s3_id, "size": body.size, "parts": parts, "part_size": part_size,
              "filename": body.name}  # fmt: skip
    name = clean_name(archive_stem(body.name), "dataset")
    session.add(Dataset(id=ds_id, owner_id=key.id, name=name, key_prefix=f"datasets/{ds_id}", layout="flat",
                        files={"status": st.UPLOADING, "keys": [], "upload": upload}, created_at=utcnow()))  # fmt: skip
    session.commit()
    urls = []
    for n in range(1, parts + 1):
        url = multipart.part_url(store, object_key, s3_id, n, settings.presign_seconds)
        urls.append(PartUrl(number=n, url=url or f"/datasets/uploads/{ds_id}/parts/{n}", api_key=url is None))
    return UploadStarted(
        upload_id=ds_id, dataset_id=ds_id, part_size=part_size, expires_in=settings.presign_seconds, parts=urls
    )


@router.put("/{upload_id}/parts/{number}", response_model=PartReceived, responses=ERRORS)
async def put_part(
    request: Request,
    upload_id: Annotated[str, PathParam(max_length=64)],
    number: Annotated[int, PathParam(ge=1, le=multipart.MAX_PARTS)],
    key: CurrentKey,
    session: SessionDep,
    store: StoreDep,
    response: Response,
) -> PartReceived:
    """One part of an upload to the local folder store, streamed to disk; its ETag (for `complete`)."""
    ds = _upload(session, key, upload_id)
    files = _expect(ds, st.UPLOADING)
    session.commit()  # no connection held while the body streams in
    if not isinstance(store, LocalStore):
        raise Conflict("this deployment stores uploads in S3: PUT each part to its presigned URL")
    upload = files["upload"]
    if number > upload["parts"]:
        raise ApiError(404, "not_found", f"upload {upload_id} has {upload['parts']} parts", {"parts": upload["parts"]})
    last = upload["size"] - upload["part_size"] * (upload["parts"] - 1)
    limit = last if number == upload["parts"] else upload["part_size"]
    try:
        etag = await multipart.receive_part(store, upload["key"], number, request.stream(), limit)
    except multipart.PartRefused as exc:
        raise ApiError(413, "payload_too_large", str(exc), {"limit_bytes": limit}) from None
    response.headers["ETag"] = f'"{etag}"'
    return PartReceived(number=number, etag=etag)


@router.post("/{upload_id}/complete", status_code=202, response_model=UploadQueued, responses=ERRORS)
def complete_upload(
    upload_id: Annotated[str, PathParam(max_length=64)],
    body: UploadComplete,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    celery: CeleryDep,
) -> UploadQueued:
    """Join the parts (every part, in order, with the ETag its PUT answered) and queue the `ingest` job."""
    ds = _upload(session, key, upload_id)
    files = _expect(ds, st.UPLOADING)
    upload = files["upload"]
    numbers = [p.number for p in body.parts]
    if numbers != list(range(1, upload["parts"] + 1)):
        raise ApiError(422, "invalid_parts", f"list parts 1..{upload['parts']}, each once, in order")
    parts = [multipart.Part(p.number, p.etag) for p in body.parts]
    try:
        multipart.complete(store, upload["key"], upload["id"], parts)
    except multipart.PartRefused as exc:
        # The upload stays open: the caller may send a part again and complete once more.
        raise ApiError(400, "invalid_parts", str(exc)) from None
    job = new_job("ingest", {"dataset": f"dataset:{ds.id}"}, queue="cpu", owner_id=key.id,
                  max_attempts=settings.default_max_attempts)  # fmt: skip
    ds.files = {**files, "status": st.UPLOADED, "job": job.id}
    submit_job(session, job, app=celery)  # commits the row's new status with the job
    return UploadQueued(dataset_id=ds.id, job_id=job.id, status=st.UPLOADED)


@router.delete("/{upload_id}", status_code=204, response_class=Response, responses=ERRORS)
def abort_upload(
    upload_id: Annotated[str, PathParam(max_length=64)], key: CurrentKey, session: SessionDep, store: StoreDep
) -> Response:
    """Abort an unfinished upload (or drop a failed one): its parts and its row are removed."""
    ds = _upload(session, key, upload_id)
    files = _expect(ds, st.UPLOADING, st.FAILED)
    upload = files["upload"]

    def drop() -> None:
        multipart.abort(store, upload["key"], upload["id"])
        store.delete(upload["key"])
        for k in store.list(ds.key_prefix):
            store.delete(k)

    drop()
    session.delete(ds)
    session.commit()
    return Response(status_code=204)
