"""The one submit service: store a job as queued, send its broker message, stamp when it was sent.

The API's create and retry, the worker's resend after a requeue and the reaper's resend all go
through `send_job` (a new job through `submit_job`, which stamps in the row's own commit), so "the
message is out" means the same everywhere: `enqueued_at` is the time of the last send, and NULL
when the broker refused it. The reaper re-sends every queued job whose stamp is NULL (and those
whose queue lost its messages), so a broker outage never loses a job.

The Celery app is passed in (the API's, or the default sending app of `jobs.broker`), so this
module needs neither the API nor the workers' task code.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session

from jobs.broker import enqueue
from jobs.db import relax_commit
from jobs.models import Job, JobEvent, new_id
from jobs.states import JobStatus, utcnow

log = logging.getLogger(__name__)


def new_job(
    kind: str,
    params: dict[str, Any],
    *,
    queue: str,
    owner_id: str,
    max_attempts: int,
    priority: int = 0,
    idempotency_key: str | None = None,
    job_id: str | None = None,
) -> Job:
    """A queued job row (not yet added to a session), created and updated now.

    `job_id` is for a caller that names the job's files before the row exists (`POST /verify` stores
    the uploaded images under it); by default the id is fresh.
    """
    now = utcnow()
    return Job(
        id=job_id or new_id(),
        kind=kind,
        params=params,
        status=JobStatus.QUEUED,
        priority=priority,
        queue=queue,
        owner_id=owner_id,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
        # Loaded from the start, so a send's stamp (or its NULL) shows on this object (the API answers with it).
        enqueued_at=None,
        created_at=now,
        updated_at=now,
    )


def submit_job(session: Session, job: Job, app: Celery | None = None) -> bool:
    """Commit `job` with its `queued` event and its sent stamp, then send it; whether the message went out.

    The row is committed before the message is sent, so the worker that takes the message finds the
    job. The stamp `enqueued_at` is in that same commit (one transaction a submit, not two): should
    the broker refuse the message, the stamp is cleared (`send_job`'s NULL, which the reaper
    re-sends); should this process die between the commit and the send, the job is queued, stamped
    and in no queue, which the reaper's lost-messages rule re-sends once its queue is empty
    (`workers.reaper.queues_that_lost_messages`). A unique-key conflict (two requests with one
    Idempotency-Key) raises `IntegrityError` from the commit, before anything is sent; the caller
    rolls back and answers with the other job.
    """
    job.enqueued_at = utcnow()
    session.add(job)
    session.flush()  # the job row first: the event references it
    session.add(JobEvent(job_id=job.id, type="status", message="queued", created_at=job.created_at))
    session.commit()
    try:
        enqueue(job.id, job.kind, job.queue, job.priority, app=app)
    except Exception as exc:
        _unsent(session, job.id, exc)
        return False
    return True


def _unsent(session: Session, job_id: str, exc: Exception) -> None:
    # The row stays queued with enqueued_at NULL: the reaper's unsent rule sends it again.
    log.warning("could not send job %s to the broker (the reaper will re-send it): %s", job_id, exc)
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=None))
    session.commit()


def send_job(
    session: Session, job_id: str, kind: str, queue: str, priority: int = 0, app: Celery | None = None
) -> bool:
    """Send the job's message and stamp `enqueued_at`; False (stamp NULL, the reaper re-sends) if the broker is down.

    Commits `session`: the caller has committed the job as queued already (a message must never
    name a row a worker cannot see yet).
    """
    try:
        enqueue(job_id, kind, queue, priority, app=app)
    except Exception as exc:
        _unsent(session, job_id, exc)
        return False
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
    # The stamp need not wait for the disk: were it lost, the reaper would send again and the claim drop the copy.
    relax_commit(session)
    session.commit()
    return True
