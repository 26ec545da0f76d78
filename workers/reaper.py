"""The reaper: requeues jobs whose lease expired, fails them past max_attempts, re-sends lost messages.

Celery's own redelivery is a second line; this loop, over the database, is the source of truth.
Every worker's main process runs it (each change is a compare-and-swap, so several reapers agree),
and `facejobs reaper` runs it alone.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update

from jobs.broker import enqueue
from jobs.db import session_scope
from jobs.models import Job, JobEvent
from jobs.settings import Settings, get_settings
from jobs.states import JobStatus, reap_expired, utcnow

log = logging.getLogger(__name__)
UNSENT_GRACE_SECONDS = 10


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)


def reap_once(settings: Settings | None = None) -> ReapReport:
    """One pass: expired leases, then queued jobs whose message was never sent."""
    settings = settings or get_settings()
    db = settings.resolved_database_url
    report = ReapReport()
    with session_scope(db) as s:
        report.requeued, report.failed = reap_expired(s)
        for job_id in report.requeued:
            s.add(JobEvent(job_id=job_id, type="status", message="requeued by the reaper: lease expired"))
        for job_id in report.failed:
            s.add(JobEvent(job_id=job_id, type="error", message="failed by the reaper: attempts spent"))
    cutoff = utcnow() - timedelta(seconds=UNSENT_GRACE_SECONDS)
    with session_scope(db) as s:
        unsent = s.execute(
            select(Job.id, Job.kind, Job.queue).where(
                Job.status == JobStatus.QUEUED,
                (Job.enqueued_at.is_(None) & (Job.created_at < cutoff)) | Job.id.in_(report.requeued),
            )
        ).all()
    for job_id, kind, queue in unsent:
        try:
            enqueue(job_id, kind, queue)
        except Exception:
            log.exception("reaper could not send job %s; will try again", job_id)
            continue
        with session_scope(db) as s:
            s.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
        report.resent.append(job_id)
    if report.requeued or report.failed or report.resent:
        log.info("reaper: requeued %s, failed %s, re-sent %s", report.requeued, report.failed, report.resent)
    return report


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
