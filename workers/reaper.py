"""The reaper: requeues jobs whose lease expired, fails them past max_attempts, re-sends lost messages.

It also runs the dependency resolver (`jobs.pipelines.resolve`): waiting jobs whose upstreams all
succeeded are sent, sweeps' budgets and early stopping are enforced, finished parents settled.

Celery's own redelivery is a second line; this loop, over the database, is the source of truth.
Every worker's main process runs it (each change is a compare-and-swap, so several reapers agree),
and `facejobs reaper` runs it alone.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select

from jobs.broker import queue_size
from jobs.db import session_scope
from jobs.models import Job, JobEvent
from jobs.pipelines import ResolveReport, resolve
from jobs.settings import Settings, get_settings
from jobs.states import JobStatus, reap_expired, utcnow
from jobs.submit import send_job

log = logging.getLogger(__name__)
UNSENT_GRACE_SECONDS = 10


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    dependencies: ResolveReport = field(default_factory=ResolveReport)


def reap_once(settings: Settings | None = None) -> ReapReport:
    """One pass: expired leases, then queued jobs whose message was never sent or was lost."""
    settings = settings or get_settings()
    db = settings.resolved_database_url
    report = ReapReport()
    with session_scope(db) as s:
        report.requeued, report.failed = reap_expired(s)
        for job_id in report.requeued:
            s.add(JobEvent(job_id=job_id, type="status", message="requeued by the reaper: lease expired"))
        for job_id in report.failed:
            s.add(JobEvent(job_id=job_id, type="error", message="failed by the reaper: attempts spent"))
    now = utcnow()
    cutoff = now - timedelta(seconds=UNSENT_GRACE_SECONDS)
    stale = now - timedelta(seconds=settings.requeue_stale_queued_seconds)
    lost = queues_that_lost_messages(db, stale)
    with session_scope(db) as s:
        unsent = s.execute(
            select(Job.id, Job.kind, Job.queue, Job.priority).where(
                Job.status == JobStatus.QUEUED,
                (Job.enqueued_at.is_(None) & (Job.created_at < cutoff))
                | Job.id.in_(report.requeued)
                | (Job.queue.in_(lost) & (Job.enqueued_at < stale)),
            )
        ).all()
    for job_id, kind, queue, priority in unsent:
        with session_scope(db) as s:
            if send_job(s, job_id, kind, queue, priority):
                report.resent.append(job_id)
    # Pipelines and sweeps: release, hold and cancel dependents, enforce sweeps' budgets, settle parents.
    report.dependencies = resolve(db)
    if report.requeued or report.failed or report.resent:
        log.info("reaper: requeued %s, failed %s, re-sent %s", report.requeued, report.failed, report.resent)
    return report


def queues_that_lost_messages(db: str, stale_before: datetime) -> list[str]:
    """Queues whose broker list is empty although a job in them was sent before `stale_before` and is still queued.

    A worker takes a message and claims its job within moments, so such a job's message is gone: the
    broker restarted without persistence, or a worker died between receiving it and the claim (an
    unacked message comes back only after the visibility timeout). Re-sending it is safe: the claim is
    a compare-and-swap, so a duplicate message is dropped. A queue that still holds messages is left
    alone, so a long backlog is not flooded with duplicates.
    """
    with session_scope(db) as s:
        queues = s.scalars(
            select(Job.queue).where(Job.status == JobStatus.QUEUED, Job.enqueued_at < stale_before).distinct()
        ).all()
    lost: list[str] = []
    for queue in queues:
        try:
            if queue_size(queue) == 0:
                lost.append(queue)
        except Exception as exc:
            log.warning("reaper could not count the messages of queue %s (%s); will look again", queue, exc)
    return lost


class ReaperThread(threading.Thread):
    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(name="reaper", daemon=True)
        self.settings = settings or get_settings()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.settings.reaper_interval_seconds):
            try:
                reap_once(self.settings)
            except Exception:
                log.exception("reaper pass failed; next pass in %ss", self.settings.reaper_interval_seconds)
