"""What every part of the JobContext shares: the job's identity, its attempt and lease owner, and the retried write."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import insert
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from jobs.db import session_scope
from jobs.models import Job, JobEvent
from jobs.settings import Settings
from jobs.states import fenced_update, utcnow
from jobs.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")
# A write the job cannot do without (a checkpoint's record, an artifact's row) is tried again on a fresh
# connection when the database dropped the pooled one (restart, failover, terminated backend): for about
# 2 s in all (0.2 + 0.4 + 0.6 + 0.8), then the job is requeued as after any transient error.
DB_WRITE_TRIES = 5
DB_RETRY_SECONDS = 0.2


class ContextBase:
    """The job, attempt and lease owner every write is fenced by, and the three stop flags."""

    def __init__(
        self,
        job: Job,
        attempt: int,
        worker_id: str,
        params: BaseModel,
        settings: Settings,
        store: Store,
        device: Any,
        workdir: Path,
        drain_event: threading.Event | None = None,
    ) -> None:
        self.job_id = job.id
        self.kind = job.kind
        self.owner_id = job.owner_id
        self.attempt = attempt
        self.worker_id = worker_id
        self.params = params
        self.settings = settings
        self.store = store
        self.device = device
        self._workdir = workdir
        self._workdir_made = False
        self.checkpoint_key: str | None = job.checkpoint_key
        self._db = settings.resolved_database_url
        self._cancel = threading.Event()
        self._lost = threading.Event()
        self._drain = drain_event or threading.Event()
        # `hold_writes`: the rows and job values kept for the result's commit (None: each write is its own).
        self._held: list[Callable[[Session], object]] | None = None
        self._held_events: list[dict[str, Any]] = []
        self.held_values: dict[str, Any] = {}

    @property
    def workdir(self) -> Path:
        """The attempt's scratch folder, made on first use (most jobs never ask: no mkdir and rmdir each)."""
        if not self._workdir_made:
            self._workdir.mkdir(parents=True, exist_ok=True)
            self._workdir_made = True
        return self._workdir

    @property
    def workdir_made(self) -> bool:
        return self._workdir_made

    # ---- held writes --------------------------------------------------------------------------
    def hold_writes(self) -> None:
        """Keep this job's events, progress and artifact rows until it ends, and write them with its end.

        For a runner that ends within moments (the probe without `duration_seconds`): its progress,
        log line and artifact row are then part of the result's one commit (`workers.runner`), three
        transactions fewer a job. The artifact's bytes are still stored at once; only its row waits.
        A reader sees them all when it sees the job succeeded; a runner that raises has them written
        in one transaction before its end is recorded (`write_held`).
        """
        if self._held is None:
            self._held = []

    def _hold(self, write: Callable[[Session], object]) -> bool:
        """Keep `write` for the end's commit when writes are held; False when they are not."""
        if self._held is None:
            return False
        self._held.append(write)
        return True

    def event_row(self, type_: str, message: str = "", data: dict[str, Any] | None = None) -> dict[str, Any]:
        """An event of this attempt as `insert(JobEvent)` takes it, stamped now (every key, so rows batch)."""
        return {"job_id": self.job_id, "attempt": self.attempt, "type": type_, "message": message, "data": data,
                "created_at": utcnow()}  # fmt: skip

    def add_held(self, s: Session, *events: dict[str, Any]) -> None:
        """Write the held rows and `events` in `s` (the end's transaction); nothing is held afterwards.

        The events go in one multi-row INSERT (the ORM would send one statement per event).
        """
        held, self._held = self._held or [], None
        rows, self._held_events = [*self._held_events, *events], []
        for write in held:
            write(s)
        if rows:
            s.execute(insert(JobEvent), rows)

    def write_held(self) -> None:
        """The held rows in a transaction of their own (the runner raised); a failure is logged, never raised."""
        if self._held is None:
            return
        if not self._held and not self._held_events:
            self._held = None
            return
        try:
            self._write(self.add_held)
        except Exception:
            log.exception("held writes of job %s failed (its end is recorded anyway)", self.job_id)
        finally:
            self._held = None

    def _write(self, write: Callable[[Session], T]) -> T:
        """`write` in one transaction; again (it must be idempotent) if the connection was lost under it."""
        for n in range(1, DB_WRITE_TRIES + 1):
            try:
                with session_scope(self._db) as s:
                    return write(s)
            except OperationalError as exc:
                if n == DB_WRITE_TRIES:
                    raise
                log.warning("job %s: database write failed (%s); trying again", self.job_id, str(exc)[:200])
                time.sleep(DB_RETRY_SECONDS * n)
        raise AssertionError("unreachable")

    def _fenced(self, **values: Any) -> bool:
        ok = self._write(lambda s: fenced_update(s, self.job_id, self.attempt, self.worker_id, **values))
        if not ok:
            self._lost.set()
        return ok

    def event(self, type_: str, message: str, data: dict[str, Any] | None = None) -> None:
        """A row in the job's event log; a failed write is logged, never raised into the job."""
        if self._held is not None:
            self._held_events.append(self.event_row(type_, message, data))
            return
        try:
            with session_scope(self._db, durable=False) as s:
                s.add(JobEvent(job_id=self.job_id, attempt=self.attempt, type=type_, message=message, data=data))
        except Exception:
            log.exception("event write of job %s failed (the job goes on)", self.job_id)

    def log(self, message: str) -> None:
        """A line in the job's event log."""
        log.info("job %s: %s", self.job_id, message)
        self.event("log", message)
