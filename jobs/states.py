"""Job statuses, their allowed transitions, and the compare-and-swap helpers that change them.

A status changes only through the functions here. Each is one UPDATE ... WHERE that names the
state it expects (and, for a running job, the attempt and lease owner), so two workers, the reaper
and the API can race and the database decides: a helper that loses returns False and changes
nothing.

    queued -> running -> succeeded | failed | cancelled
    running -> queued        (lease expired, or the worker was told to shut down)
    queued -> cancelled      (cancel before start)
    failed | cancelled -> queued   (retry, by the owner)
    waiting -> queued | held | cancelled   (a job with upstreams: jobs/pipelines.py)
    held -> waiting | cancelled            (an upstream failed; its retry lets the job wait again)
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import CursorResult, DateTime, String, and_, cast, exists, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session, aliased

if TYPE_CHECKING:
    from jobs.models import Job


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A job whose upstreams have not all succeeded (not sent to the broker), and one whose upstream failed.
    WAITING = "waiting"
    HELD = "held"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),
    JobStatus.WAITING: frozenset({JobStatus.QUEUED, JobStatus.HELD, JobStatus.CANCELLED}),
    JobStatus.HELD: frozenset({JobStatus.WAITING, JobStatus.CANCELLED}),
}


# PostgreSQL's NOTIFY channel on which each transition to an end names its job (`api/job_wait.py` listens).
JOB_ENDED_CHANNEL = "facejobs_job_ended"


class TransitionError(Exception):
    """A transition the lifecycle does not allow."""


def check_transition(old: JobStatus, new: JobStatus) -> None:
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"a job cannot go from {old.value} to {new.value}")


def _rowcount(result: Any) -> int:
    """Rows an UPDATE changed (`execute` is typed as returning a plain Result)."""
    res: CursorResult[Any] = result
    return res.rowcount


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def notify_ended(session: Session, job_id: str) -> None:
    """Announce that `job_id` ended, when this transaction commits (PostgreSQL; SQLite has no NOTIFY)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(JOB_ENDED_CHANNEL, job_id)))


def _job() -> Any:
    from jobs.models import Job

    return Job


def _fence(job_id: str, attempt: int, worker_id: str) -> Any:
    job = _job()
    return and_(
        job.id == job_id,
        job.status == JobStatus.RUNNING,
        job.attempt == attempt,
        job.lease_owner == worker_id,
    )


def claim(session: Session, job_id: str, worker_id: str, lease_seconds: int) -> int | None:
    """queued -> running for this worker; the new attempt number, or None if someone else has it."""
    job = claim_job(session, job_id, worker_id, lease_seconds)
    return int(job.attempt) if job is not None else None


def claim_job(session: Session, job_id: str, worker_id: str, lease_seconds: int) -> Job | None:
    """`claim`, answering with the claimed `Job` row (None if someone else has it).

    The UPDATE returns the whole row, so a worker needs no SELECT after winning: one round trip
    fewer per job than claiming and then reading the job.
    """
    job = _job()
    stmt = _claim_statement(job_id, worker_id, lease_seconds, utcnow())
    claimed: Job | None = session.execute(stmt.returning(job)).scalars().first()
    return claimed


def claim_running(session: Session, job_id: str, worker_id: str, lease_seconds: int, node: str) -> Job | None:
    """`claim_job`, and with it the `running on` event and worker row `node`'s current job, in one statement.

    On PostgreSQL the three writes are one statement (data-modifying CTEs: the event and the worker
    row are written only when the swap won), one round trip instead of three; SQLite has no such
    CTEs and sends them one by one. The event reads `running on <worker_id> (attempt <n>)`.
    """
    from jobs.models import JobEvent, Worker

    job = _job()
    now = utcnow()
    prefix = f"running on {worker_id} (attempt "
    if session.get_bind().dialect.name != "postgresql":
        one = claim_job(session, job_id, worker_id, lease_seconds)
        if one is not None:
            session.add(JobEvent(job_id=job_id, attempt=one.attempt, type="status",
                                 message=f"{prefix}{one.attempt})", created_at=now))  # fmt: skip
            session.execute(update(Worker).where(Worker.id == node).values(current_job_id=job_id, last_heartbeat=now))
        return one
    won = _claim_statement(job_id, worker_id, lease_seconds, now).returning(*job.__table__.c).cte("claimed")
    message = literal(prefix) + cast(won.c.attempt, String) + literal(")")
    event = insert(JobEvent).from_select(
        ["job_id", "attempt", "type", "message", "created_at"],
        select(won.c.id, won.c.attempt, literal("status"), message, literal(now, DateTime())),
    )
    worker = (
        update(Worker)
        .where(Worker.id == node, exists(select(won.c.id)))
        .values(current_job_id=job_id, last_heartbeat=now)
    )
    stmt = select(aliased(job, won)).add_cte(event.cte("running_event"), worker.cte("current_job"))
    claimed: Job | None = session.execute(stmt).scalars().first()
    return claimed


def _claim_statement(job_id: str, worker_id: str, lease_seconds: int, now: datetime) -> Any:
    """The compare-and-swap UPDATE of a claim: queued (and not cancelled) -> running for `worker_id`."""
    job = _job()
    return (
        update(job)
        .where(job.id == job_id, job.status == JobStatus.QUEUED, job.cancel_requested.is_(False))
        .values(
            status=JobStatus.RUNNING,
            attempt=job.attempt + 1,
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            updated_at=now,
        )
    )


def renew_lease(
    session: Session, job_id: str, attempt: int, worker_id: str, lease_seconds: int, **values: Any
) -> tuple[bool, bool]:
    """Extend the lease (and write `values`, e.g. progress); (still ours, cancel requested)."""
    job = _job()
    now = utcnow()
    res = session.execute(
        update(job)
        .where(_fence(job_id, attempt, worker_id))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now, **values)
        .returning(job.cancel_requested)
    )
    row = res.first()
    if row is None:
        return False, False
    return True, bool(row[0])


def fenced_update(session: Session, job_id: str, attempt: int, worker_id: str, **values: Any) -> bool:
    """Write `values` only if this worker still holds this attempt's lease."""
    job = _job()
    res = session.execute(update(job).where(_fence(job_id, attempt, worker_id)).values(updated_at=utcnow(), **values))
    return bool(_rowcount(res))


def finish(
    session: Session,
    job_id: str,
    attempt: int,
    worker_id: str,
    status: JobStatus,
    **values: Any,
) -> bool:
    """running -> succeeded | failed | cancelled, fenced by attempt and lease owner."""
    check_transition(JobStatus.RUNNING, status)
    job = _job()
    now = utcnow()
    stmt = (
        update(job)
        .where(_fence(job_id, attempt, worker_id))
        .values(status=status, finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None, **values)
    )
    if session.get_bind().dialect.name != "postgresql":
        return bool(_rowcount(session.execute(stmt)))
    # The NOTIFY rides on the UPDATE (once per row changed, so only when the swap won): no round trip of its own.
    return session.execute(stmt.returning(func.pg_notify(JOB_ENDED_CHANNEL, job.id))).first() is not None


def requeue(session: Session, job_id: str, attempt: int, worker_id: str, preempted: bool) -> bool:
    """running -> queued by the worker itself (shutdown or transient error)."""
    job = _job()
    values: dict[str, Any] = {"status": JobStatus.QUEUED, "lease_owner": None, "lease_expires_at": None}
    if preempted:
        values["preemptions"] = job.preemptions + 1
    return fenced_update(session, job_id, attempt, worker_id, **values)


def request_cancel(session: Session, job_id: str) -> JobStatus | None:
    """Cancel: a queued job becomes cancelled at once, a running one is flagged. The status after."""
    job = _job()
    now = utcnow()
    res = session.execute(
        update(job)
        .where(job.id == job_id, job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now, updated_at=now)
    )
    if _rowcount(res):
        notify_ended(session, job_id)
        return JobStatus.CANCELLED
    res = session.execute(
        update(job)
        .where(job.id == job_id, job.status == JobStatus.RUNNING)
        .values(cancel_requested=True, updated_at=now)
    )
    if _rowcount(res):
        return JobStatus.RUNNING
    status = session.execute(select(job.status).where(job.id == job_id)).scalar_one_or_none()
    return JobStatus(status) if status is not None else None


def retry(session: Session, job_id: str) -> bool:
    """failed | cancelled -> queued, with a fresh error budget; False if the job is elsewhere."""
    job = _job()
    now = utcnow()
    res = session.execute(
        update(job)
        .where(job.id == job_id, job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]))
        .values(
            status=JobStatus.QUEUED,
            cancel_requested=False,
            error=None,
            finished_at=None,
            attempt_base=job.attempt - job.preemptions,
            enqueued_at=now,
            updated_at=now,
        )
    )
    return bool(_rowcount(res))


def reap_expired(session: Session, now: datetime | None = None) -> tuple[list[str], list[str]]:
    """Requeue running jobs whose lease expired, or fail them when their attempts are spent.

    Returns (requeued ids, failed ids). Each row is changed by its own compare-and-swap, so a worker
    that renews at the same moment wins or loses cleanly.
    """
    job = _job()
    now = now or utcnow()
    rows = session.execute(
        select(job.id, job.attempt, job.preemptions + job.attempt_base, job.max_attempts, job.lease_owner).where(
            job.status == JobStatus.RUNNING, job.lease_expires_at < now
        )
    ).all()
    requeued: list[str] = []
    failed: list[str] = []
    for job_id, attempt, not_counted, max_attempts, owner in rows:
        cond = and_(
            job.id == job_id,
            job.status == JobStatus.RUNNING,
            job.attempt == attempt,
            job.lease_expires_at < now,
            or_(job.lease_owner == owner, job.lease_owner.is_(None)),
        )
        if attempt - not_counted >= max_attempts:
            values: dict[str, Any] = {
                "status": JobStatus.FAILED,
                "error": f"lease expired on attempt {attempt} (worker lost) and {max_attempts} attempts are spent",
                "finished_at": now,
            }
            bucket = failed
        else:
            values = {"status": JobStatus.QUEUED, "enqueued_at": now}
            bucket = requeued
        res = session.execute(
            update(job)
            .where(cond)
            .values(lease_owner=None, lease_expires_at=None, updated_at=now, reaped=job.reaped + 1, **values)
        )
        if _rowcount(res):
            bucket.append(job_id)
            if bucket is failed:
                notify_ended(session, job_id)
    return requeued, failed


def move(session: Session, job_id: str, old: JobStatus, new: JobStatus, **values: Any) -> bool:
    """`old` -> `new` by compare-and-swap, for the dependency states (waiting, held) and their exits.

    Used by `jobs/pipelines.py` only; the hot path (claim, finish) never calls it.
    """
    check_transition(old, new)
    job = _job()
    now = utcnow()
    if new == JobStatus.CANCELLED:
        values = {"finished_at": now, "cancel_requested": True, **values}
    res = session.execute(
        update(job).where(job.id == job_id, job.status == old).values(status=new, updated_at=now, **values)
    )
    changed = bool(_rowcount(res))
    if changed and new.terminal:
        notify_ended(session, job_id)
    return changed
