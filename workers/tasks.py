"""Thin Celery entry points, one per job kind: each takes the job id and calls `execute`."""

from __future__ import annotations

from typing import Any

from jobs.broker import task_name
from jobs.kinds import registry


def _make_task(kind: str) -> Any:
    from workers.celery_app import DRAIN, app

    @app.task(name=task_name(kind), bind=True, acks_late=True, reject_on_worker_lost=True)
    def run_job(self: Any, job_id: str) -> str:
        from workers.runner import execute

        return execute(job_id, node=self.request.hostname, drain_event=DRAIN).status

    run_job.__doc__ = f"Run a `{kind}` job."
    return run_job


TASKS = {kind: _make_task(kind) for kind in registry()}
