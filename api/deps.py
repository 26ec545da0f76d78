"""`Annotated` dependencies, so no handler repeats a lookup or an ownership check.

`SettingsDep` and `StoreDep` come from the app; `SessionDep` is one Session per request (closed after
it; handlers commit themselves); `CurrentKey` is the caller's key (401 otherwise); `JobDep`,
`DatasetDep` and `ModelDep` load the resource of that key or answer 404, so another key's id reads
exactly like an unknown one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, TypeVar

from celery import Celery
from fastapi import Depends, Path, Request, Security
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import api_key_header, authenticate
from api.errors import ApiError, NotFound
from api.ids import ID_RE
from jobs.db import session_factory
from jobs.models import ApiKey, Dataset, Job, Model
from jobs.settings import Settings
from jobs.store import Store, get_store

OwnedT = TypeVar("OwnedT", Job, Dataset, Model)


async def get_app_settings(request: Request) -> Settings:
    """Dependency: the settings the app was created with (async: no I/O, so no thread-pool hop)."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """Dependency: a Session for this request; uncommitted work is rolled back when it closes."""
    session = session_factory(settings.resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_app_celery(request: Request) -> Celery:
    """Dependency: the Celery app this API sends job messages with (async: no thread-pool hop)."""
    celery: Celery = request.app.state.celery
    return celery


CeleryDep = Annotated[Celery, Depends(get_app_celery)]


def get_app_store(settings: SettingsDep) -> Store:
    """Dependency: the configured artifact store (503 when it cannot even be set up)."""
    try:
        return get_store(settings)
    except OSError as exc:
        raise ApiError(503, "store_unavailable", "the object store is unavailable; try again") from exc


StoreDep = Annotated[Store, Depends(get_app_store)]


def get_current_key(
    session: SessionDep, settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)]
) -> ApiKey:
    """Dependency: the caller's live key (401 when missing, unknown or revoked)."""
    return authenticate(session, settings, key)


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


def _owned(session: Session, model: type[OwnedT], ident: str, key: ApiKey, what: str) -> OwnedT:
    if ID_RE.match(ident) is None:
        raise NotFound(what, ident[:80])
    row = session.scalar(select(model).where(model.id == ident, model.owner_id == key.id))
    if row is None:
        raise NotFound(what, ident)
    return row


def get_job(job_id: Annotated[str, Path(description="The job's id.")], session: SessionDep, key: CurrentKey) -> Job:
    """Dependency: the caller's job `job_id` (404 for an unknown id or another key's job)."""
    return _owned(session, Job, job_id, key, "job")


def get_dataset(
    dataset_id: Annotated[str, Path(description="The dataset's id.")], session: SessionDep, key: CurrentKey
) -> Dataset:
    """Dependency: the caller's dataset (404 otherwise)."""
    return _owned(session, Dataset, dataset_id, key, "dataset")


def get_model(
    model_id: Annotated[str, Path(description="The model's id.")], session: SessionDep, key: CurrentKey
) -> Model:
    """Dependency: the caller's model (404 otherwise)."""
    return _owned(session, Model, model_id, key, "model")


JobDep = Annotated[Job, Depends(get_job)]
DatasetDep = Annotated[Dataset, Depends(get_dataset)]
ModelDep = Annotated[Model, Depends(get_model)]
