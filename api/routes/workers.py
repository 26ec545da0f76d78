"""Workers and their heartbeats."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from api.deps import CurrentKey, SessionDep, SettingsDep
from api.routes import keyed_router
from api.schemas import WorkerPublic
from jobs.models import Job, Worker
from jobs.states import utcnow

router = keyed_router("/workers", "workers")


@router.get("", response_model=list[WorkerPublic])
def list_workers(key: CurrentKey, session: SessionDep, settings: SettingsDep) -> list[WorkerPublic]:
    """Every known worker; `stale` when its heartbeat is older than `worker_stale_seconds`.

    `current_job_id` is shown only for the caller's own jobs (null while a worker runs another key's),
    so a key learns nothing of other keys' work beyond "busy".
    """
    cutoff = utcnow() - timedelta(seconds=settings.worker_stale_seconds)
    rows = session.scalars(select(Worker).order_by(Worker.id)).all()
    running = {w.current_job_id for w in rows if w.current_job_id}
    mine = set(session.scalars(select(Job.id).where(Job.id.in_(running), Job.owner_id == key.id))) if running else set()
    return [
        WorkerPublic.model_validate(
            {
                **{c: getattr(w, c) for c in WorkerPublic.model_fields if c not in ("stale", "current_job_id", "busy")},
                "current_job_id": w.current_job_id if w.current_job_id in mine else None,
                "busy": w.current_job_id is not None,
                "stale": w.last_heartbeat < cutoff,
            }
        )
        for w in rows
    ]
