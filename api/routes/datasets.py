"""Datasets: upload an archive of face images (one folder per identity, or flat), list, read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentKey, DatasetDep, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError
from api.ingest import clean_name, ingest_dataset
from api.pagination import check_limit, keyset, page
from api.routes import keyed_router
from api.routes.uploading import multipart_body, upload_dir
from api.schemas import DatasetCreated, DatasetPublic, DatasetsPage, ErrorBody
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
