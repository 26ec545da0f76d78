"""Thin Celery entry points, one per job kind: each takes the job id and calls `execute`."""

from __future__ import annotations

import logging
from typing import Any

from jobs.broker import task_name
from jobs.kinds import registry

log = logging.getLogger(__name__)
EXIT_DEVICE_LOST = 75  # EX_TEMPFAIL: the pool starts a fresh process; nothing is wrong with the worker


def _make_task(kind: str) -> Any:
    from workers.celery_app import DRAIN, app

    @app.task(name=task_name(kind), bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_job(self: Any, job_id: str) -> str:
        from workers.runner import execute

        outcome = execute(job_id, node=self.request.hostname, drain_event=DRAIN)
        if outcome.exit_process:
            # A broken CUDA context fails every later kernel of this process: leave now. Under
            # prefork billiard reports this exit and the pool forks a fresh child; Celery treats the
            # message as lost with its worker and requeues it, a duplicate of the one `execute`
            # already sent, which the claim drops (the database decides who runs a job).
            log.error("job %s: the device of this worker process is broken; the process exits", job_id)
            raise SystemExit(EXIT_DEVICE_LOST)
        return outcome.status

    run_job.__doc__ = f"Run a `{kind}` job."
    return run_job


TASKS = {kind: _make_task(kind) for kind in registry()}
