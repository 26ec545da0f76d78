"""Sweeps: `POST /sweeps` makes a parent and its children from base params and axes; `GET` ranks them."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import status
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import CeleryDep, CurrentKey, SessionDep, SettingsDep
from api.errors import ApiError, NotFound
from api.routes import keyed_router
from jobs.kinds import get_kind
from jobs.models import Job
from jobs.params.sweep import SweepCreate
from jobs.pipelines import upstreams_for
from jobs.refs import check_params_refs
from jobs.states import JobStatus
from jobs.submit import send_job
from jobs.sweeps import SweepInvalid, create_sweep, groups, plan_children, rank_children, varied_names

router = keyed_router("/sweeps", "sweeps")


class ChildPublic(BaseModel):
    id: str
    status: JobStatus
    rank: int | None
    value: float | None
    params: dict[str, Any]
    stop_reason: str | None
    error: str | None
    progress: float
    result: dict[str, Any] | None


class SweepPublic(BaseModel):
    id: str
    name: str | None
    kind: str
    status: JobStatus
    rank_by: str | None
    rank_mode: str
    varied: list[str]
    budget: dict[str, Any]
    early_stop: dict[str, Any] | None
    result: dict[str, Any] | None
    children: list[ChildPublic]
    groups: list[dict[str, Any]]
    compare_url: str


def sweep_public(session: Session, parent: Job) -> SweepPublic:
    spec = SweepCreate.model_validate(parent.params)
    children = session.scalars(select(Job).where(Job.parent_id == parent.id)).all()
    ranked = rank_children(spec, children)
    names = varied_names(spec)
    ids = ",".join(r.job.id for r in ranked if r.rank is not None) or ",".join(c.id for c in children)
    return SweepPublic(
        id=parent.id, name=spec.name, kind=spec.kind, status=parent.status, rank_by=spec.rank_by,
        rank_mode=spec.rank_mode, varied=names, budget=spec.budget.model_dump(),
        early_stop=spec.early_stop.model_dump() if spec.early_stop else None, result=parent.result,
        children=[
            ChildPublic(id=r.job.id, status=r.job.status, rank=r.rank, value=r.value,
                        params={n: r.job.params.get(n) for n in names}, stop_reason=r.job.stop_reason,
                        error=r.job.error, progress=r.job.progress, result=r.job.result)
            for r in ranked
        ],
        groups=groups(spec, ranked), compare_url="/ui/compare?ids=" + quote(ids, safe=","),
    )  # fmt: skip


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SweepPublic)
def create(
    body: SweepCreate, key: CurrentKey, session: SessionDep, settings: SettingsDep, celery: CeleryDep
) -> SweepPublic:
    """Generate every child, validate each against the kind's schema (422 lists the bad ones), then store and send."""
    get_kind(body.kind)  # an unknown kind is refused before anything is planned
    try:
        children = plan_children(body)
    except SweepInvalid as exc:
        raise ApiError(422, "invalid_sweep", str(exc), exc.details) from None
    # A child whose params name a job (`job:<id>`) waits for it, as a job submitted alone would.
    upstreams = [upstreams_for(session, key.id, check_params_refs(session, key.id, p), None) for _v, p in children]
    parent, to_send = create_sweep(
        session, body, key.id, children, queue=body.queue,
        max_attempts=body.max_attempts or settings.default_max_attempts, upstreams=upstreams,
    )  # fmt: skip
    for job in to_send:
        send_job(session, job.id, job.kind, job.queue, job.priority, app=celery)
    return sweep_public(session, parent)


@router.get("/{sweep_id}", response_model=SweepPublic)
def read(sweep_id: str, key: CurrentKey, session: SessionDep) -> SweepPublic:
    """A sweep: its children ranked by `rank_by`, grouped over seeds, and the link to compare them."""
    parent = session.scalar(select(Job).where(Job.id == sweep_id[:64], Job.owner_id == key.id, Job.kind == "sweep"))
    if parent is None:
        raise NotFound("sweep", sweep_id[:80])
    return sweep_public(session, parent)
