"""The one heartbeat thread of a worker process: the worker row fresh, the running jobs' leases renewed.

Before, a worker process ran two threads that both wrote the worker row: one for the process (idle
or not) and one more per running job. Now each process has one `Heartbeat`: every
`heartbeat_seconds` it renews the lease of each job this process runs (and flushes its throttled
progress, reads its cancel flag), then writes the row once (`last_heartbeat`) and hands the row's
drain flag to those jobs. Under the prefork pool the main process and each pool
child have their own (threads do not survive a fork), so a child's jobs learn of a drain that the
main process recorded in the row.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from jobs.db import session_scope
from jobs.models import JobEvent, Worker
from jobs.settings import get_settings
from jobs.states import utcnow
from workers.utilisation import JobPeaks, process_sampler

if TYPE_CHECKING:
    from workers.context import JobContext

log = logging.getLogger(__name__)
# How long a job's end waits for a lease renewal in flight (as long as the per-job heartbeat thread's join did).
UNWATCH_WAIT_SECONDS = 5.0


class Heartbeat(threading.Thread):
    """Every `interval` seconds: renew the leases of the watched jobs, then refresh the worker row `node`."""

    def __init__(self, node: str, interval: float, db: str | None = None) -> None:
        super().__init__(name=f"heartbeat-{node}", daemon=True)
        self.node, self.interval, self.db = node, interval, db
        self.stopped = threading.Event()
        self._jobs: dict[str, JobContext] = {}
        self._peaks: dict[str, JobPeaks] = {}  # utilisation samples per job (workers/utilisation.py)
        # Held while the leases are renewed: `unwatch` waits for a renewal in flight, so no lease
        # renewal or progress flush of a job lands after its runner returned (its end is recorded next).
        self._beating = threading.Lock()

    def watch(self, ctx: JobContext, peaks: JobPeaks | None = None) -> None:
        """Renew `ctx`'s lease from the next beat on, until `unwatch` (and sample its utilisation into `peaks`)."""
        with self._beating:
            self._jobs[ctx.job_id] = ctx
            if peaks is not None:
                self._peaks[ctx.job_id] = peaks

    def unwatch(self, ctx: JobContext) -> None:
        """Stop renewing `ctx`'s lease, once a renewal in flight is done (waiting `UNWATCH_WAIT_SECONDS` at most)."""
        got = self._beating.acquire(timeout=UNWATCH_WAIT_SECONDS)
        try:
            self._jobs.pop(ctx.job_id, None)
            self._peaks.pop(ctx.job_id, None)
        finally:
            if got:
                self._beating.release()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """One beat; a failure is logged and never reaches a job (the next beat tries again)."""
        with self._beating:
            jobs = list(self._jobs.values())
            for ctx in jobs:
                ctx.heartbeat()
            peaks = [(ctx, self._peaks[ctx.job_id]) for ctx in jobs if ctx.job_id in self._peaks]
        sample = _sample()
        # The row write is outside the lock: a row held by another transaction stalls this beat,
        # never a job's end. The job the worker runs is set at the claim and cleared at the end
        # (workers/runner.py), not here, so a late beat cannot bring back a finished job.
        try:
            with session_scope(self.db, durable=False) as s:
                w = s.get(Worker, self.node)
                if w is not None:
                    w.last_heartbeat = utcnow()
                    if sample and w.pid == os.getpid():  # the worker's main process: its whole tree
                        w.load = sample
                    if w.draining:
                        for ctx in jobs:
                            ctx.mark_draining()
                for ctx, peak in peaks if sample else ():  # the job's series, in the row's transaction
                    peak.add(sample)
                    data = {"t": peak.elapsed(), **sample}
                    s.add(JobEvent(job_id=ctx.job_id, attempt=ctx.attempt, type="sys", data=data))
        except Exception:
            log.exception("worker heartbeat failed (the jobs go on)")


def _sample() -> dict[str, float]:
    """This process's utilisation now (empty where it cannot be read; the beat goes on)."""
    settings = get_settings()
    sampler = process_sampler(settings.device != "cpu", settings.cuda_visible_devices)
    try:
        return sampler.sample() if sampler is not None else {}
    except Exception:
        log.exception("utilisation sample failed")
        return {}


_lock = threading.Lock()
# (pid, node, interval, database) -> its heartbeat: one per worker process; a test process that runs
# jobs of several stacks or lease settings gets one for each.
_beats: dict[tuple[int, str, float, str | None], Heartbeat] = {}


def process_heartbeat(node: str, interval: float, db: str | None = None) -> Heartbeat:
    """This process's heartbeat for worker `node`, started on first use (again in a forked child)."""
    key = (os.getpid(), node, interval, db)
    with _lock:
        beat = _beats.get(key)
        if beat is None or beat.stopped.is_set() or not beat.is_alive():
            beat = _beats[key] = Heartbeat(node, interval, db)
            beat.start()
        return beat


def _after_fork_in_child() -> None:
    # The parent's threads are gone in the child, and a lock it held at the fork would never be freed.
    global _lock
    _lock = threading.Lock()
    _beats.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def renewing(ctx: JobContext, node: str) -> Iterator[Heartbeat]:
    """Keep `ctx`'s lease renewed by this process's heartbeat while the block runs."""
    beat = process_heartbeat(node, ctx.settings.heartbeat_seconds, ctx.settings.resolved_database_url)
    beat.watch(ctx)
    try:
        yield beat
    finally:
        beat.unwatch(ctx)
