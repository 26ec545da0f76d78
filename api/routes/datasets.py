"""Datasets: upload an archive of face images (one folder per identity, or flat), list, read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import Path as PathParam
from fastapi import Query, Request, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api import dataset_files
from api.deps import CurrentKey, DatasetDep, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError
from api.ingest import clean_name, ingest_dataset
from api.pagination import check_limit, keyset, page
from api.routes import keyed_router
from api.routes.uploading import multipart_body, upload_dir
from api.schemas import DatasetCreated, DatasetFilesPage, DatasetPublic, DatasetsPage, EmbedSummary, ErrorBody
from api.uploads import receive_multipart
from jobs.models import Dataset

router = keyed_router("/datasets", "datasets")
FORM = multipart_body(
    {
        "file": {"type": "string", "format": "binary", "description": ".zip, .tar, .tar.gz or .tgz"},
        "name": {"type": "string", "maxLength": 200, "description": "Display name (default: the file's)."},
    },
    ["file"],
)


def archive_stem(filename: str) -> str:
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


@router.post(
    "",
    status_code=201,
    response_model=DatasetCreated,
    openapi_extra=FORM,
    responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def create_dataset(
    request: Request, key: CurrentKey, session: SessionDep, settings: SettingsDep, store: StoreDep
) -> DatasetCreated:
    """Upload a dataset archive; every image is checked before anything is stored."""
    # End the key check's read transaction: no pooled connection is held while the body streams in.
    session.commit()
    async with upload_dir(settings) as workdir:
        form = await receive_multipart(request, workdir, settings.max_upload_bytes, {"file"})
        upload = form.files.get("file")
        if upload is None:
            raise ApiError(422, "missing_file", "send the archive in the form field 'file'")
        name = clean_name(form.fields.get("name"), archive_stem(upload.filename) or "dataset")
        return await run_in_threadpool(ingest_dataset, session, store, settings, key, upload, name, Path(workdir))


@router.get("", response_model=DatasetsPage)
def list_datasets(
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
) -> DatasetsPage:
    """The caller's datasets, newest first."""
    check_limit(limit, settings.page_size_max)
    stmt = select(Dataset).where(Dataset.owner_id == key.id)
    rows = session.scalars(keyset(stmt, Dataset.created_at, Dataset.id, cursor, limit)).all()
    data, next_cursor = page(rows, limit)
    return DatasetsPage(data=[DatasetPublic.model_validate(d) for d in data], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic)
def read_dataset(dataset: DatasetDep) -> Dataset:
    """One dataset: layout, file and identity counts, and its `dataset:<id>` reference."""
    return dataset


@router.get(
    "/{dataset_id}/files",
    response_model=DatasetFilesPage,
    responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
def list_dataset_files(
    dataset: DatasetDep,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    identity: Annotated[str | None, Query(max_length=512, description="Only this identity's files.")] = None,
    embed: Annotated[
        str | None, Query(max_length=80, description="job:<id> of a succeeded embed job of this dataset.")
    ] = None,
    failed: Annotated[bool, Query(description="Only the files the embed job could not use.")] = False,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1)] = 48,
) -> DatasetFilesPage:
    """A page of the dataset's files (natural order), each with its thumbnail route and, given an
    embed job of this dataset, the faces it found there (box, landmarks) or why it failed."""
    check_limit(limit, settings.page_size_max)
    keys = dataset_files.dataset_keys(dataset)
    counts: dict[str, int] = {}
    for k in keys:
        name = dataset_files.identity_of(dataset, k)
        counts[name] = counts.get(name, 0) + 1
    tables, summary = None, None
    if embed is not None:
        job = dataset_files.embed_job_for(session, key, dataset, embed)
        tables = dataset_files.embed_tables(session, store, job)
        reasons: dict[str, int] = {}
        for reason, _ in tables.failures.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        faces = sum(len(v) for v in tables.faces.values())
        summary = EmbedSummary(
            job_id=job.id, files=len(keys), faces=faces, failures=len(tables.failures), failure_reasons=reasons
        )
    elif failed:
        raise ApiError(422, "embed_required", "failed=true needs embed=job:<id> (whose failures to list)")
    if identity is not None:
        keys = [k for k in keys if dataset_files.identity_of(dataset, k) == identity]
    if failed and tables is not None:
        keys = [k for k in keys if k in tables.failures]
    chunk = keys[offset : offset + limit]
    data = []
    for k in chunk:
        fail = tables.failures.get(k) if tables is not None else None
        data.append(
            {
                "path": k,
                "identity": dataset_files.identity_of(dataset, k),
                "thumbnail": f"/datasets/{dataset.id}/thumbnails/{quote(k)}",
                "faces": tables.faces.get(k, []) if tables is not None else None,
                "failure": {"reason": fail[0], "detail": fail[1]} if fail else None,
            }
        )
    return DatasetFilesPage(
        dataset_id=dataset.id,
        total=len(keys),
        offset=offset,
        limit=limit,
        next_offset=offset + limit if offset + limit < len(keys) else None,
        identities=[{"name": n, "files": c} for n, c in counts.items()],
        embed=summary,
        data=data,
    )


@router.get(
    "/{dataset_id}/thumbnails/{path:path}",
    response_class=Response,
    responses={
        200: {"description": "A PNG at most `size` pixels a side.", "content": {"image/png": {}}},
        400: {"model": ErrorBody},
        404: {"model": ErrorBody},
        413: {"model": ErrorBody},
    },
)
def read_thumbnail(
    dataset: DatasetDep,
    path: Annotated[str, PathParam(max_length=1024, description="The image's path inside the dataset.")],
    settings: SettingsDep,
    store: StoreDep,
    size: Annotated[int, Query(ge=dataset_files.THUMB_SIDES[0], le=dataset_files.THUMB_SIDES[1])] = 160,
) -> Response:
    """One of the dataset's images, decoded from the store and shrunk to a PNG thumbnail."""
    png = dataset_files.thumbnail(store, dataset, path, size, settings.max_image_pixels)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
