"""Jobs: submit, read, cancel, retry, and their events (list and labels: job_labels.py; delete: retention.py)."""

from __future__ import annotations

import json
import logging
from typing import Annotated

from fastapi import Header, Query, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import CeleryDep, CurrentKey, JobDep, SessionDep, SettingsDep
from api.errors import ApiError, Conflict
from api.job_wait import MAX_WAIT_SECONDS, wait_until_ended
from api.pagination import check_limit
from api.routes import keyed_router
from api.schemas import ErrorBody, EventPublic, EventsPage, JobCreate, JobPublic
from jobs.kinds import get_kind, validate_params
from jobs.models import ApiKey, Job, JobEvent
from jobs.pipelines import (
    CONTAINER_KINDS,
    cancel_with_dependents,
    reopen_parent,
    submit_dependent,
    unhold_dependents,
    upstreams_for,
)
from jobs.refs import check_params_refs
from jobs.states import JobStatus, retry
from jobs.submit import new_job, send_job, submit_job

log = logging.getLogger(__name__)
router = keyed_router("/jobs", "jobs")
# Event ids are 64-bit signed integers; a larger `after` is refused (422) instead of overflowing the driver.
MAX_EVENT_ID = 2**63 - 1


def _by_idempotency_key(session: Session, key: ApiKey, idem: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == key.id, Job.idempotency_key == idem))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={200: {"model": JobPublic, "description": "The job of this Idempotency-Key."}, 413: {"model": ErrorBody}},
)
def create_job(
    body: JobCreate,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> Job:
    """Submit a job: validate its params, store it as queued and send it to its queue."""
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, key, idempotency_key)
        if existing is not None:
            response.status_code = status.HTTP_200_OK
            return existing
    spec = get_kind(body.kind)
    params = validate_params(body.kind, body.params).model_dump(mode="json")
    # Every job:/model:/dataset: reference must name one of the caller's objects: 404 now, not a failed job.
    refs = check_params_refs(session, key.id, params)
    if len(json.dumps(params)) > settings.max_params_bytes:
        raise ApiError(
            413,
            "params_too_large",
            f"params are over {settings.max_params_bytes} bytes as JSON",
            {"limit_bytes": settings.max_params_bytes},
        )
    job = new_job(
        spec.name,
        params,
        queue=body.queue or spec.queue_for(params),  # gpu-N for a job that asks for N GPUs
        owner_id=key.id,
        max_attempts=body.max_attempts or settings.default_max_attempts,
        priority=body.priority,
        idempotency_key=idempotency_key,
    )
    job.name, job.tags, job.notes = body.name, body.tags, body.notes  # labels: api/routes/job_labels.py
    # `job:` refs (rows read above) and `after` make it wait for those jobs; no query when it has neither.
    upstream = upstreams_for(session, key.id, refs, body.after)
    try:
        if upstream:
            submit_dependent(session, job, upstream, app=celery)
        else:
            submit_job(session, job, app=celery)
    except IntegrityError:
        # Two requests with the same Idempotency-Key raced; the other one created the job.
        session.rollback()
        existing = _by_idempotency_key(session, key, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        response.status_code = status.HTTP_200_OK
        return existing
    return job


@router.get("/{job_id}", response_model=JobPublic)
def read_job(
    job: JobDep,
    session: SessionDep,
    settings: SettingsDep,
    wait_seconds: Annotated[
        float, Query(ge=0, le=MAX_WAIT_SECONDS, description="Answer when the job ends, or after this long.")
    ] = 0,
) -> Job:
    """One job: status, progress, metrics, result or error (optionally once it has ended)."""
    if wait_seconds > 0 and not JobStatus(job.status).terminal:
        wait_until_ended(session, job, settings.resolved_database_url, wait_seconds)
    return job


@router.post("/{job_id}/cancel", response_model=JobPublic, responses={409: {"model": ErrorBody}})
def cancel_job(job: JobDep, session: SessionDep) -> Job:
    """Cancel a job: a queued one at once, a running one at its next check (within seconds)."""
    if job.status.terminal:
        raise Conflict(f"job {job.id} is already {job.status.value}", {"status": job.status.value})
    # Its dependents (and a sweep's or pipeline's children) are cancelled with it, transitively.
    after = cancel_with_dependents(session, job.id)
    if after in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        session.rollback()
        raise Conflict(f"job {job.id} is already {after.value}", {"status": after.value})
    session.commit()
    session.refresh(job)
    return job


@router.post("/{job_id}/retry", response_model=JobPublic, responses={409: {"model": ErrorBody}})
def retry_job(job: JobDep, session: SessionDep, celery: CeleryDep) -> Job:
    """Queue a failed or cancelled job again, with a fresh error budget; it resumes from its checkpoint.

    Its held dependents go back to waiting, and run once it has succeeded.
    """
    if job.kind in CONTAINER_KINDS or not retry(session, job.id):
        session.rollback()
        session.refresh(job)
        raise Conflict(
            f"only failed or cancelled jobs can be retried; job {job.id} is {job.status.value}",
            {"status": job.status.value},
        )
    session.add(JobEvent(job_id=job.id, attempt=job.attempt, type="status", message="queued again (retry)"))
    unhold_dependents(session, job.id)
    reopen_parent(session, job.id)
    session.commit()
    session.refresh(job)
    send_job(session, job.id, job.kind, job.queue, job.priority, app=celery)
    return job


@router.get("/{job_id}/events", response_model=EventsPage)
def list_job_events(
    job: JobDep,
    session: SessionDep,
    settings: SettingsDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID, description="Only events with a larger id.")] = None,
    type_: Annotated[str | None, Query(alias="type", max_length=16)] = None,
    limit: Annotated[int, Query(ge=1)] = 100,
) -> EventsPage:
    """A job's events (logs, status changes, errors), oldest first."""
    check_limit(limit, settings.page_size_max)
    stmt = select(JobEvent).where(JobEvent.job_id == job.id)
    if after is not None:
        stmt = stmt.where(JobEvent.id > after)
    if type_ is not None:
        stmt = stmt.where(JobEvent.type == type_)
    rows = session.scalars(stmt.order_by(JobEvent.id).limit(limit)).all()
    data = [EventPublic.model_validate(e) for e in rows]
    return EventsPage(data=data, next_after=data[-1].id if data else after)
