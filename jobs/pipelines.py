"""Dependencies between jobs: `waiting` until every upstream succeeded, `held` while one has failed.

A job gets upstreams at submit (`after: [ids]`, and every `job:<id>` ref in its params), as rows of
`job_deps`. Both ends exist before the edge is written, so no cycle can be made. The rules, each a
compare-and-swap of `jobs.states.move`:

    every upstream succeeded    waiting -> queued (and sent)
    an upstream failed          waiting -> held
    no upstream failed any more held -> waiting   (the failed one was retried)
    an upstream was cancelled   waiting | held | queued -> cancelled, transitively (running: cancel requested)

Who applies them: `resolve` (from the reaper loop, every `reaper_interval_seconds`), which reads the
database state and so is right after any crash; the API's cancel and retry apply their part at once.
The worker's finish path is left as it is (no extra round trip for a job without dependencies): a
released job starts within one reaper interval of its last upstream's end.

A *container* (kind `pipeline` or `sweep`) is a parent job no worker runs: created `running` with
no lease (so the reaper never expires it), its children point at it by `parent_id`, and `resolve`
settles it when they have all ended (`jobs/sweeps.py` adds a sweep's budget and early stopping).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, aliased

from jobs.models import Job, JobDependency, JobEvent
from jobs.refs import Ref, RefNotFound
from jobs.states import JobStatus, move, request_cancel, utcnow
from jobs.submit import send_job

log = logging.getLogger(__name__)
CONTAINER_KINDS = ("pipeline", "sweep")
PENDING = (JobStatus.WAITING, JobStatus.HELD)


def upstreams_for(
    session: Session, owner_id: str, refs: dict[str, Any], after: Iterable[str] | None
) -> dict[str, JobStatus]:
    """The upstreams of a new job (id -> status): the `job:` rows its params name, and `after`.

    `refs` is what `check_params_refs` answered (rows already read: no query for them); only `after`
    costs a query, so a job with neither costs nothing.

    Raises:
        RefNotFound: an id of `after` that is not one of the owner's jobs.
    """
    found = {row.id: JobStatus(row.status) for row in refs.values() if isinstance(row, Job)}
    wanted = sorted(set(after or ()) - set(found))
    if wanted:
        rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(wanted), Job.owner_id == owner_id)).all()
        got = {job_id: JobStatus(status) for job_id, status in rows}
        missing = [i for i in wanted if i not in got]
        if missing:
            raise RefNotFound(Ref("job", missing[0]))
        found.update(got)
    return found


def target_status(upstream: Iterable[JobStatus]) -> JobStatus:
    """Where a dependent belongs given its upstreams' statuses (queued: it may run now)."""
    statuses = set(upstream)
    if JobStatus.CANCELLED in statuses:
        return JobStatus.CANCELLED
    if JobStatus.FAILED in statuses:
        return JobStatus.HELD
    if statuses <= {JobStatus.SUCCEEDED}:
        return JobStatus.QUEUED
    return JobStatus.WAITING


def add_dependent(session: Session, job: Job, upstream: dict[str, JobStatus]) -> None:
    """Add `job` (a `new_job` row) with its `job_deps` rows, in the state its upstreams give; not committed.

    An upstream already cancelled makes the job held too (not cancelled): its retry lets the job run.
    """
    target = target_status(upstream.values())
    job.status = JobStatus.HELD if target == JobStatus.CANCELLED else target
    session.add(job)
    session.flush()
    session.add_all(JobDependency(job_id=job.id, upstream_id=u) for u in sorted(upstream))
    after = ", ".join(sorted(upstream))
    message = {JobStatus.QUEUED: "queued", JobStatus.WAITING: f"waiting for {after}"}.get(
        job.status, f"held: an upstream of {after} failed or was cancelled"
    )
    session.add(JobEvent(job_id=job.id, type="status", message=message, created_at=job.created_at))


def submit_dependent(session: Session, job: Job, upstream: dict[str, JobStatus], app: Celery | None = None) -> bool:
    """`submit_job` for a job with upstreams: commit it waiting (or held, or queued and sent); whether it was sent."""
    add_dependent(session, job, upstream)
    session.commit()
    if job.status != JobStatus.QUEUED:
        return False
    return send_job(session, job.id, job.kind, job.queue, job.priority, app=app)


def _event(session: Session, job_id: str, message: str, type_: str = "status", attempt: int = 0) -> None:
    session.add(JobEvent(job_id=job_id, attempt=attempt, type=type_, message=message))


def cancel_one(session: Session, job_id: str, reason: str | None = None) -> JobStatus | None:
    """Cancel one job whatever its state (waiting and held at once); the status after. No cascade."""
    row = session.execute(select(Job.status, Job.attempt).where(Job.id == job_id)).first()
    if row is None:
        return None
    status, attempt = JobStatus(row[0]), int(row[1])
    values: dict[str, Any] = {} if reason is None else {"stop_reason": reason}
    said = f": {reason}" if reason else ""
    if status in PENDING:
        if move(session, job_id, status, JobStatus.CANCELLED, error=reason or "cancelled by the user", **values):
            _event(session, job_id, f"cancelled{said}" if reason else "cancelled before it started", attempt=attempt)
            return JobStatus.CANCELLED
        status = JobStatus(session.scalar(select(Job.status).where(Job.id == job_id)) or status)
    if status.terminal:
        return status
    after = request_cancel(session, job_id)
    if after in (JobStatus.CANCELLED, JobStatus.RUNNING):
        if values:
            session.execute(update(Job).where(Job.id == job_id).values(**values))
        if after == JobStatus.CANCELLED:
            message = f"cancelled{said}" if reason else "cancelled before it started"
        else:
            message = f"cancel requested{said}"
        _event(session, job_id, message, attempt=attempt)
    return after


def dependents(session: Session, job_ids: Iterable[str]) -> list[str]:
    """The direct downstreams and the children of `job_ids`."""
    ids = list(job_ids)
    if not ids:
        return []
    down = session.scalars(select(JobDependency.job_id).where(JobDependency.upstream_id.in_(ids))).all()
    children = session.scalars(select(Job.id).where(Job.parent_id.in_(ids))).all()
    return sorted(set(down) | set(children))


def cancel_with_dependents(session: Session, job_id: str) -> JobStatus | None:
    """Cancel `job_id`, then every job downstream of it (and every child of a container), transitively.

    The status of `job_id` after (as `request_cancel` answers); not committed.
    """
    after = cancel_one(session, job_id)
    seen = {job_id}
    frontier = [job_id]
    while frontier:
        nxt = [d for d in dependents(session, frontier) if d not in seen]
        seen.update(nxt)
        for dep in nxt:
            cancel_one(session, dep, reason=f"upstream {job_id} was cancelled")
        frontier = nxt
    return after


def unhold_dependents(session: Session, job_id: str) -> list[str]:
    """After a retry of `job_id`: its held dependents with no failed or cancelled upstream left go back to waiting."""
    held = session.scalars(
        select(Job.id)
        .join(JobDependency, JobDependency.job_id == Job.id)
        .where(JobDependency.upstream_id == job_id, Job.status == JobStatus.HELD)
    ).all()
    moved = []
    for dep in held:
        if target_status(_upstream_statuses(session, [dep])[dep]) != JobStatus.HELD and move(
            session, dep, JobStatus.HELD, JobStatus.WAITING
        ):
            _event(session, dep, f"waiting again: upstream {job_id} was retried")
            moved.append(dep)
    return moved


def reopen_parent(session: Session, job_id: str) -> bool:
    """After a retry of `job_id`: a pipeline it belongs to that had ended (failed) runs again until its steps end."""
    parent_id = session.scalar(select(Job.parent_id).where(Job.id == job_id))
    if parent_id is None:
        return False
    res = session.execute(
        update(Job)
        .where(
            Job.id == parent_id, Job.kind == "pipeline", Job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]),
            Job.cancel_requested.is_(False),
        )
        .values(status=JobStatus.RUNNING, finished_at=None, error=None, result=None, updated_at=utcnow())
    )  # fmt: skip
    if res.rowcount:  # type: ignore[attr-defined]
        _event(session, parent_id, f"running again: step {job_id} was retried")
        return True
    return False


def _upstream_statuses(session: Session, job_ids: list[str]) -> dict[str, list[JobStatus]]:
    up = aliased(Job)
    rows = session.execute(
        select(JobDependency.job_id, up.status)
        .join(up, up.id == JobDependency.upstream_id)
        .where(JobDependency.job_id.in_(job_ids))
    ).all()
    out: dict[str, list[JobStatus]] = defaultdict(list)
    for job_id, status in rows:
        out[job_id].append(JobStatus(status))
    return out


@dataclass
class ResolveReport:
    released: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    unheld: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # sweep children stopped (budget, median rule)

    def __bool__(self) -> bool:
        return any((self.released, self.held, self.unheld, self.cancelled, self.settled, self.stopped))


def resolve_dependencies(session: Session, report: ResolveReport) -> list[tuple[str, str, str, int]]:
    """Apply the rules to every waiting and held job; (id, kind, queue, priority) of those now queued (send them).

    Not committed: the caller commits, then sends (a crash between the two leaves a queued job with
    no `enqueued_at`, which the reaper's unsent rule sends).
    """
    pending = session.execute(
        select(Job.id, Job.status, Job.kind, Job.queue, Job.priority).where(Job.status.in_(PENDING))
    ).all()
    if not pending:
        return []
    ups = _upstream_statuses(session, [row[0] for row in pending])
    to_send = []
    for job_id, status, kind, queue, priority in pending:
        status = JobStatus(status)
        target = target_status(ups.get(job_id, []))
        if target == status:
            continue
        if target == JobStatus.CANCELLED:
            cancelled_up = "an upstream was cancelled"
            if move(session, job_id, status, JobStatus.CANCELLED, error=cancelled_up, stop_reason=cancelled_up):
                _event(session, job_id, f"cancelled: {cancelled_up}")
                report.cancelled.append(job_id)
            continue
        if target == JobStatus.HELD:
            if move(session, job_id, status, JobStatus.HELD):
                _event(session, job_id, "held: an upstream failed (retry it to continue)")
                report.held.append(job_id)
            continue
        if status == JobStatus.HELD:
            if not move(session, job_id, JobStatus.HELD, JobStatus.WAITING):
                continue
            _event(session, job_id, "waiting again: no upstream has failed")
            report.unheld.append(job_id)
            if target == JobStatus.WAITING:
                continue
        if move(session, job_id, JobStatus.WAITING, JobStatus.QUEUED, enqueued_at=None):
            _event(session, job_id, "queued: every upstream succeeded")
            report.released.append(job_id)
            to_send.append((job_id, kind, queue, priority))
    return to_send


def settle_containers(session: Session, report: ResolveReport, now: Any = None) -> None:
    """End every running pipeline or sweep whose children have all ended (sweeps: `jobs.sweeps.summary`)."""
    from jobs.sweeps import sweep_result

    parent = aliased(Job)
    open_children = (
        select(Job.id)
        .where(Job.parent_id == parent.id, Job.status.not_in([s.value for s in JobStatus if s.terminal]))
        .exists()
    )
    rows = session.execute(
        select(parent.id, parent.kind, parent.cancel_requested).where(
            parent.kind.in_(CONTAINER_KINDS),
            parent.status == JobStatus.RUNNING,
            parent.lease_owner.is_(None),
            ~open_children,
        )
    ).all()
    for job_id, kind, cancel_requested in rows:
        children = session.scalars(select(Job).where(Job.parent_id == job_id)).all()
        statuses = [JobStatus(c.status) for c in children]
        if cancel_requested:
            status, result = JobStatus.CANCELLED, None
        elif kind == "sweep":
            result = sweep_result(session, job_id, children)
            status = JobStatus.SUCCEEDED if JobStatus.SUCCEEDED in statuses else JobStatus.FAILED
        else:
            result = {"steps": len(children), "succeeded": statuses.count(JobStatus.SUCCEEDED)}
            if all(s == JobStatus.SUCCEEDED for s in statuses):
                status = JobStatus.SUCCEEDED
            else:
                status = JobStatus.FAILED if JobStatus.FAILED in statuses else JobStatus.CANCELLED
        error = (
            None
            if status == JobStatus.SUCCEEDED
            else f"{kind} ended: " + ", ".join(f"{statuses.count(s)} {s.value}" for s in JobStatus if statuses.count(s))
        )
        if move_container(session, job_id, status, result=result, error=error):
            _event(session, job_id, status.value)
            report.settled.append(job_id)


def move_container(session: Session, job_id: str, status: JobStatus, **values: Any) -> bool:
    """running -> an end for a container (a parent no worker holds: kind pipeline/sweep, no lease)."""
    from jobs.states import notify_ended

    now = utcnow()
    res = session.execute(
        update(Job)
        .where(
            Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner.is_(None), Job.kind.in_(CONTAINER_KINDS)
        )
        .values(status=status, finished_at=now, updated_at=now, progress_step=Job.progress_total, **values)
    )
    changed = bool(res.rowcount)  # type: ignore[attr-defined]
    if changed:
        notify_ended(session, job_id)
    return changed


def resolve(db: str) -> ResolveReport:
    """One pass over dependencies, sweeps and containers (the reaper loop runs it); sends what it released."""
    from jobs.db import session_scope
    from jobs.sweeps import enforce_sweeps

    report = ResolveReport()
    with session_scope(db) as s:
        to_send = resolve_dependencies(s, report)
    for job_id, kind, queue, priority in to_send:
        with session_scope(db) as s:
            send_job(s, job_id, kind, queue, priority)
    with session_scope(db) as s:
        enforce_sweeps(s, report)
    with session_scope(db) as s:
        settle_containers(s, report)
    if report:
        log.info("dependencies: %s", report)
    return report
