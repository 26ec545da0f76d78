"""Running one job: claim by compare-and-swap, heartbeat, call the kind's runner, record the end.

`execute(job_id)` is all a Celery task does. The database decides everything: a message for a job
that is not `queued` is dropped, and every write after the claim is fenced by the attempt.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import traceback
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from jobs.db import session_scope
from jobs.errors import JobInputError, TransientError
from jobs.kinds import get_kind, load_runner, validate_params
from jobs.models import Job, JobEvent, Worker
from jobs.redact import new_error_id, scrub_paths
from jobs.settings import Settings, get_settings
from jobs.states import JobStatus, claim_running, finish, requeue, utcnow
from jobs.store import get_store
from jobs.submit import send_job
from ml.core.errors import InputError, Stopped
from workers.context import JobContext
from workers.device_faults import (
    DeviceUnavailableError,
    classify,
    oom_message,
    release_device_memory,
    resolve_device,
)
from workers.heartbeat import process_heartbeat
from workers.logcapture import AttemptLog, capturing
from workers.runners import Preempted
from workers.utilisation import JobPeaks

log = logging.getLogger(__name__)
TRACEBACK_TAIL = 4000  # the most of an error message an event row keeps
PUBLIC_DETAIL = 1000  # characters of an unexpected exception's text shown to the job's owner
DEVICE_REQUEUE = "requeued: fatal device error"  # the event that counts a job's device-error requeues


@dataclass
class Outcome:
    status: str  # dropped | succeeded | failed | cancelled | requeued | lost
    detail: str = ""
    # The device context of this process is broken: the task ends the process after recording the
    # outcome, so Celery's pool starts a fresh one (see workers.tasks).
    exit_process: bool = False


def default_device(torch_threads: int | None = None, choice: str = "auto") -> Any:
    """The worker's device from `FACEJOBS_DEVICE` (auto: its one visible GPU, else the CPU).

    Raises:
        DeviceUnavailableError: `cuda` where torch sees none (the job is handed back, not failed).
    """
    return resolve_device(choice, torch_threads)


def worker_identity(node: str | None = None) -> tuple[str, str]:
    """(worker row id, lease owner): the node name, and node/pid so each pool child is distinct."""
    node = node or f"facejobs@{socket.gethostname()}"
    return node, f"{node}/{os.getpid()}"


def _event(db: str, job_id: str, attempt: int, type_: str, message: str) -> None:
    try:
        with session_scope(db, durable=False) as s:
            s.add(JobEvent(job_id=job_id, attempt=attempt, type=type_, message=message))
    except Exception:
        log.exception("could not record %s event for job %s", type_, job_id)


def execute(
    job_id: str,
    node: str | None = None,
    settings: Settings | None = None,
    device: Any = None,
    drain_event: threading.Event | None = None,
) -> Outcome:
    """Claim and run job `job_id` to an end (or a requeue); never raises for the job's own errors."""
    settings = settings or get_settings()
    db = settings.resolved_database_url
    node, owner = worker_identity(node)
    # The claim commits without waiting for the WAL flush (`relax_commit`): others see it at once, so
    # the compare-and-swap is as strict; only a crash of the database server within a fraction of a
    # second can undo it, and then this attempt's fenced writes (its result included) fail, the job
    # reads queued, and the reaper sends it again. The result's commit below is durable.
    with session_scope(db, durable=False) as s:
        # The claim, its `running on` event and the worker's current job: one statement (PostgreSQL).
        job = claim_running(s, job_id, owner, settings.lease_seconds, node)
        attempt = job.attempt if job is not None else None
    if attempt is None or job is None:
        log.info("job %s is not queued (or is cancelled): message dropped", job_id)
        return Outcome("dropped")

    spec = get_kind(job.kind)
    workdir = settings.home.resolve() / "work" / f"{job_id}-{attempt}"  # made when a runner first asks
    try:
        params = validate_params(job.kind, job.params)
    except Exception as exc:
        _set_current(db, node, None)
        return _fail(db, job_id, attempt, owner, exc)
    ctx = JobContext(job, attempt, owner, params, settings, get_store(settings), device, workdir, drain_event)
    # The lease is renewed from here on: importing torch and loading models can take a while.
    beat = process_heartbeat(node, settings.heartbeat_seconds, db)
    peaks, attempt_log = JobPeaks(), AttemptLog(ctx.store, job_id, attempt)  # no I/O until used
    beat.watch(ctx, peaks)
    returned = False
    try:
        if ctx.device is None:
            ctx.device = default_device(settings.torch_threads, settings.device)
        peaks.begin(ctx.device)
        with capturing(attempt_log):  # stdout, stderr, logging -> the attempt's log (workers/logcapture.py)
            result = load_runner(spec)(ctx)
        result = {**(result or {}), "sys": peaks.result()}
        returned = True  # the result's commit below clears the worker's current job
    except Exception as exc:
        ctx.write_held()  # its log lines and progress before the end that says why
        data = _log_failure(ctx, db, attempt_log, exc)
        return _error_outcome(ctx, db, spec.name, exc, data)
    finally:
        attempt_log.close()  # its last chunk is stored before the attempt's end is recorded
        beat.unwatch(ctx)
        if not returned:  # else the result's commit below clears the worker's current job
            _set_current(db, node, None)
        if ctx.workdir_made:
            shutil.rmtree(workdir, ignore_errors=True)

    try:
        with session_scope(db) as s:
            # The worker row first, in the result's commit (one transaction fewer per job): should that
            # row be locked, this waits before holding the job's row, so the reaper is never stuck behind it.
            _mark_current(s, node, None)
            # Progress held for this commit (`JobContext.hold_writes`) is written by the same UPDATE.
            held = ctx.held_values
            done = held.get("progress_total", Job.progress_total)
            ok = finish(
                s, job_id, attempt, owner, JobStatus.SUCCEEDED, result=result or {}, **{**held, "progress_step": done}
            )  # fmt: skip
            if ok:  # the result, its event and any held rows in one commit
                ctx.add_held(s, ctx.event_row("status", "succeeded"))
    except OperationalError:
        _set_current(db, node, None)
        raise  # the database is away: the lease runs out and the reaper gives the job another attempt
    except SQLAlchemyError as exc:
        # A result the database refuses would be refused again on every attempt: fail now, say why.
        _set_current(db, node, None)
        return _fail(db, job_id, attempt, owner, exc)
    if not ok:
        return Outcome("lost", "lease lost before the result was recorded")
    return Outcome("succeeded")


def _mark_current(s: Session, node: str, job_id: str | None) -> None:
    s.execute(update(Worker).where(Worker.id == node).values(current_job_id=job_id, last_heartbeat=utcnow()))


def _set_current(db: str, node: str, job_id: str | None) -> None:
    try:
        with session_scope(db, durable=False) as s:
            _mark_current(s, node, job_id)
    except Exception:
        log.exception("could not update worker %s", node)


def _log_failure(ctx: JobContext, db: str, attempt_log: AttemptLog, exc: Exception) -> dict[str, Any] | None:
    """The traceback into the attempt's log, at the job's last progress step; that step and its place in the log.

    Stored before the attempt's end is recorded, so a reader that sees the job failed finds it there.
    """
    if isinstance(exc, Preempted | Stopped):
        attempt_log.close()
        return None
    # Throttled progress not yet written is newer than the row (workers/context/lease.py).
    pending = getattr(ctx, "_pending", None)
    step: int | None = None
    try:
        if pending and "progress_step" in pending:
            step = int(pending["progress_step"])
        else:
            with session_scope(db, durable=False) as s:
                step = s.scalar(select(Job.progress_step).where(Job.id == ctx.job_id))
    except Exception:
        log.exception("could not read the last step of job %s", ctx.job_id)
    offset = attempt_log.write_exception(exc, step)
    attempt_log.close()
    return {"step": step, "log": {"attempt": ctx.attempt, "offset": offset}}


def _error_outcome(ctx: JobContext, db: str, kind: str, exc: Exception, data: dict[str, Any] | None = None) -> Outcome:
    """The one place where what a runner raised becomes the job's outcome.

    - `Preempted` (or ml's `Stopped`, which a runner need not translate): the run checkpointed
      because it was asked to stop (cancel, drain, lease lost).
    - A store outage, or the database dropping the connection under a write: not the job's fault,
      retried against its attempts.
    - A fatal device error (`torch.AcceleratorError`, or `cuda` asked of a worker without one): not
      the job's fault either, and this process can run nothing more on its device; the job goes back
      to the queue without using an attempt and the process ends (Celery starts a fresh one).
    - Out of device memory: the job's sizes are too big for this device; it fails at once, naming
      the params of its kind to lower.
    - Anything else fails the job with the error: bad input at once (`JobInputError`, or ml's
      `InputError` as it is), bugs with their traceback.
    """
    if isinstance(exc, Preempted | Stopped):
        return _stopped(ctx, db, kind)
    if isinstance(exc, TransientError | OperationalError):
        return _transient(ctx, db, exc)
    fault = classify(exc)
    if fault == "fatal":
        return _device_lost(ctx, db, kind, exc)
    if ctx.lease_lost:
        return Outcome("lost", str(exc))
    if fault == "out_of_memory":
        message = oom_message(kind, ctx.params, ctx.device, exc)
        release_device_memory(exc)
        return _fail(db, ctx.job_id, ctx.attempt, ctx.worker_id, exc, message=message, data=data)
    return _fail(db, ctx.job_id, ctx.attempt, ctx.worker_id, exc, data=data)


def _device_lost(ctx: JobContext, db: str, kind: str, exc: Exception) -> Outcome:
    """Hand the job to a fresh process (not counted as an attempt), up to `max_device_error_requeues`."""
    error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:500] if str(exc) else ''}"
    log.error("job %s hit a fatal device error on %s: %s (this process exits)", ctx.job_id, ctx.worker_id, error)
    if ctx.lease_lost:
        return Outcome("lost", error, exit_process=True)
    limit = ctx.settings.max_device_error_requeues
    with session_scope(db) as s:
        job = s.get(Job, ctx.job_id)
        queue = job.queue if job else "gpu"
        base = job.attempt_base if job else 0
        earlier = s.scalar(
            select(func.count()).select_from(JobEvent).where(
                JobEvent.job_id == ctx.job_id, JobEvent.attempt > base, JobEvent.type == "error",
                JobEvent.message.startswith(DEVICE_REQUEUE),
            )
        )  # fmt: skip
    if (earlier or 0) >= limit:
        processes = f"{limit + 1} worker process{'es' if limit else ''}"
        if isinstance(exc, DeviceUnavailableError):
            why = f"{processes} took it and found no usable device: fix those workers, or submit it to another queue"
        else:
            why = (
                f"a fatal device error on each of {processes}: the job itself seems to trigger it (a device-side "
                "assert usually means an index out of range, e.g. labels beyond the number of classes); run it "
                "on the CPU (queue cpu) to see the error in plain words"
            )
        message = f"{error}\n\n{why}"
        out = _fail(db, ctx.job_id, ctx.attempt, ctx.worker_id, exc, message=message)
        out.exit_process = True
        return out
    with session_scope(db) as s:
        ok = requeue(s, ctx.job_id, ctx.attempt, ctx.worker_id, preempted=True)
    if ok:
        _event(
            db, ctx.job_id, ctx.attempt, "error",
            f"{DEVICE_REQUEUE} on {ctx.worker_id} ({error}); a fresh worker process takes it over "
            "(not counted as a failure)",
        )  # fmt: skip
        _send_again(db, ctx.job_id, kind, queue)
    return Outcome("requeued", error, exit_process=True)


def _stopped(ctx: JobContext, db: str, kind: str) -> Outcome:
    """The runner checkpointed and returned early: cancelled, lease lost, or worker draining."""
    if ctx.lease_lost:
        return Outcome("lost", "lease lost; another attempt owns the job")
    if ctx.cancelled:
        with session_scope(db) as s:
            finish(s, ctx.job_id, ctx.attempt, ctx.worker_id, JobStatus.CANCELLED, error="cancelled by the user")
        _event(db, ctx.job_id, ctx.attempt, "status", "cancelled")
        return Outcome("cancelled")
    with session_scope(db) as s:
        ok = requeue(s, ctx.job_id, ctx.attempt, ctx.worker_id, preempted=True)
        job = s.get(Job, ctx.job_id)
        queue = job.queue if job else "gpu"
    if ok:
        _event(db, ctx.job_id, ctx.attempt, "status", "requeued: worker shutting down (not counted as a failure)")
        _send_again(db, ctx.job_id, kind, queue)
    return Outcome("requeued", "worker shutting down")


def _transient(ctx: JobContext, db: str, exc: Exception) -> Outcome:
    with session_scope(db) as s:
        job = s.get(Job, ctx.job_id)
        budget_left = job is not None and (job.attempt - job.preemptions - job.attempt_base) < job.max_attempts
    if not budget_left:
        return _fail(db, ctx.job_id, ctx.attempt, ctx.worker_id, exc)
    with session_scope(db) as s:
        ok = requeue(s, ctx.job_id, ctx.attempt, ctx.worker_id, preempted=False)
    if ok:
        _event(db, ctx.job_id, ctx.attempt, "error", f"transient error, retrying: {exc}")
        _send_again(db, ctx.job_id, ctx.kind, job.queue if job else "gpu")
    return Outcome("requeued", str(exc))


def _send_again(db: str, job_id: str, kind: str, queue: str) -> None:
    with session_scope(db) as s:
        send_job(s, job_id, kind, queue)


def _fail(
    db: str, job_id: str, attempt: int, owner: str, exc: BaseException, message: str | None = None,
    data: dict[str, Any] | None = None,
) -> Outcome:  # fmt: skip
    if message is not None:
        pass  # said by the caller (device faults): no traceback, the message names the remedy
    elif isinstance(exc, JobInputError | InputError):
        message = f"{exc}"
        if exc.__cause__ is not None:
            message += f"\n{exc.__cause__}"
    else:
        # The traceback (with the worker's paths and code) goes to the worker's log under an id;
        # the job's owner sees the exception and that id.
        error_id = new_error_id()
        log.error("job %s failed with error %s:\n%s", job_id, error_id, "".join(traceback.format_exception(exc)))
        detail = scrub_paths(str(exc))[:PUBLIC_DETAIL]
        message = f"{type(exc).__name__}: {detail}\n\n(error {error_id}: the worker's log has the traceback)"
    message = scrub_paths(message)  # input errors too may name the worker's cache or work folders
    with session_scope(db) as s:
        # The status and its error event in one commit: a reader that sees `failed` also sees why.
        finish(s, job_id, attempt, owner, JobStatus.FAILED, error=message)
        # `data`: the job's step at the failure and where the traceback starts in the attempt's log.
        s.add(JobEvent(job_id=job_id, attempt=attempt, type="error", message=message[:TRACEBACK_TAIL], data=data))
    log.warning("job %s failed: %s", job_id, str(exc)[:500])
    return Outcome("failed", message)
