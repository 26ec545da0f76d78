"""Workers and their heartbeats."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from api.deps import SessionDep, SettingsDep
from api.routes import keyed_router
from api.schemas import WorkerPublic
from jobs.models import Worker
from jobs.states import utcnow

router = keyed_router("/workers", "workers")


@router.get("", response_model=list[WorkerPublic])
def list_workers(session: SessionDep, settings: SettingsDep) -> list[WorkerPublic]:
    """Every known worker; `stale` when its heartbeat is older than `worker_stale_seconds`."""
    cutoff = utcnow() - timedelta(seconds=settings.worker_stale_seconds)
    rows = session.scalars(select(Worker).order_by(Worker.id)).all()
    return [
        WorkerPublic.model_validate(
            {
                **{c: getattr(w, c) for c in WorkerPublic.model_fields if c != "stale"},
                "stale": w.last_heartbeat < cutoff,
            }
        )
        for w in rows
    ]
