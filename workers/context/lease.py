"""Lease and progress: the stop flags, the heartbeat's lease renewal, and throttled progress."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from jobs.db import session_scope
from jobs.models import JobEvent
from jobs.states import fenced_update, renew_lease
from workers.context.base import ContextBase

log = logging.getLogger(__name__)


class LeaseAndProgress(ContextBase):
    """Whether the job should stop (cancel, lease lost, drain), the lease renewal and progress writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_progress_write = 0.0
        self._pending: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def lease_lost(self) -> bool:
        return self._lost.is_set()

    @property
    def draining(self) -> bool:
        return self._drain.is_set()

    def should_stop(self) -> bool:
        """True when the job was cancelled, the lease was lost, or the worker is shutting down."""
        return self._cancel.is_set() or self._lost.is_set() or self._drain.is_set()

    def mark_draining(self) -> None:
        """The worker is shutting down: `should_stop()` answers True from now on."""
        self._drain.set()

    # ---- heartbeat (called from the heartbeat thread) ---------------------------------------
    def heartbeat(self) -> None:
        """Renew the lease, flush throttled progress, and read the cancel flag."""
        with self._lock:
            pending, self._pending = self._pending, None
        values = pending or {}
        try:
            with session_scope(self._db, durable=False) as s:
                ours, cancel = renew_lease(
                    s, self.job_id, self.attempt, self.worker_id, self.settings.lease_seconds, **values
                )
        except Exception:
            log.exception("heartbeat of job %s failed; will retry", self.job_id)
            if pending:
                with self._lock:
                    self._pending = self._pending or pending
            return
        if not ours:
            log.warning("job %s: lease lost (attempt %s)", self.job_id, self.attempt)
            self._lost.set()
        if cancel:
            self._cancel.set()

    # ---- what runners call --------------------------------------------------------------------
    def progress(self, step: int, total: int, **metrics: float) -> None:
        """Record progress; at most one database write per `progress_min_interval_seconds`."""
        clean = {k: float(v) for k, v in metrics.items()}
        now = time.monotonic()
        values = {"progress_step": int(step), "progress_total": int(total), "metrics": clean}
        if self._held is not None:  # written with the job's end (`hold_writes`)
            self.held_values.update(values)
            self._held_events.append(self.event_row("progress", data={"step": int(step), "total": int(total), **clean}))
            return
        if now - self._last_progress_write < self.settings.progress_min_interval_seconds and step < total:
            with self._lock:
                self._pending = values
            return
        self._last_progress_write = now
        with self._lock:
            self._pending = None
        try:
            with session_scope(self._db, durable=False) as s:
                ok = fenced_update(s, self.job_id, self.attempt, self.worker_id, **values)
                if ok:
                    s.add(
                        JobEvent(
                            job_id=self.job_id,
                            attempt=self.attempt,
                            type="progress",
                            data={"step": int(step), "total": int(total), **clean},
                        )
                    )
            if not ok:
                self._lost.set()
        except Exception:
            log.exception("progress write of job %s failed (the job goes on)", self.job_id)
