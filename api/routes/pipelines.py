"""Pipelines: `POST /pipelines` submits steps that refer to earlier steps, all or nothing; a job's graph."""

from __future__ import annotations

import re
from typing import Any

from fastapi import status
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import CeleryDep, CurrentKey, JobDep, SessionDep, SettingsDep
from api.errors import ApiError, NotFound
from api.routes import keyed_router
from jobs.kinds import get_kind
from jobs.models import Job, JobDependency, JobEvent, new_id
from jobs.pipelines import CONTAINER_KINDS, add_dependent
from jobs.refs import find_refs, resolve_ref
from jobs.states import JobStatus, utcnow
from jobs.submit import new_job, send_job

router = keyed_router("/pipelines", "pipelines")
graph_router = keyed_router("/jobs", "jobs")
STEP_NAME = r"^[A-Za-z0-9_-]{1,64}$"
STEP_REF = re.compile(r"^step:(?P<name>[A-Za-z0-9_-]{1,64})(?:/(?P<path>.+))?$")


class StepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=STEP_NAME)
    kind: str = Field(..., min_length=1, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict, description='May name earlier steps: "step:<name>".')
    after: list[str] = Field(default_factory=list, max_length=50, description="Earlier steps this one waits for.")


class PipelineCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200)
    steps: list[StepCreate] = Field(..., min_length=1, max_length=50)
    max_attempts: int | None = Field(None, ge=1, le=100)


class NodePublic(BaseModel):
    id: str
    kind: str
    status: JobStatus
    name: str | None = None
    upstreams: list[str] = Field(default_factory=list)
    stop_reason: str | None = None


class PipelinePublic(BaseModel):
    id: str
    name: str
    status: JobStatus
    steps: list[NodePublic]


class GraphPublic(BaseModel):
    """A job's direct upstreams (it waits for them) and downstreams (they wait for it)."""

    upstreams: list[NodePublic]
    downstreams: list[NodePublic]
    parent_id: str | None
    page: str | None = Field(None, description="The dashboard page of this job as a pipeline or sweep.")


def _rewrite(value: Any, ids: dict[str, str], earlier: set[str], used: set[str], where: str) -> Any:
    """`value` with every "step:<name>" replaced by "job:<id>"; `used` collects the names."""
    if isinstance(value, str):
        m = STEP_REF.match(value)
        if m is None:
            return value
        name = m.group("name")
        if name not in earlier:
            raise ApiError(422, "invalid_pipeline", f"{where}: step:{name} is not an earlier step", {"ref": value})
        used.add(name)
        return f"job:{ids[name]}" + (f"/{m.group('path')}" if m.group("path") else "")
    if isinstance(value, dict):
        return {k: _rewrite(v, ids, earlier, used, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, ids, earlier, used, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _nodes(session: Session, jobs: list[Job], names: dict[str, str] | None = None) -> list[NodePublic]:
    ids = [j.id for j in jobs]
    ups: dict[str, list[str]] = {}
    for job_id, up in session.execute(
        select(JobDependency.job_id, JobDependency.upstream_id).where(JobDependency.job_id.in_(ids))
    ):
        ups.setdefault(job_id, []).append(up)
    names = names or {}
    return [
        NodePublic(id=j.id, kind=j.kind, status=j.status, name=names.get(j.id), upstreams=sorted(ups.get(j.id, [])),
                   stop_reason=j.stop_reason)
        for j in jobs
    ]  # fmt: skip


def pipeline_public(session: Session, parent: Job) -> PipelinePublic:
    steps = parent.params.get("steps", [])
    order = [s["job_id"] for s in steps]
    names = {s["job_id"]: s["name"] for s in steps}
    rows = {j.id: j for j in session.scalars(select(Job).where(Job.parent_id == parent.id))}
    jobs = [rows[i] for i in order if i in rows]
    return PipelinePublic(id=parent.id, name=parent.params.get("name", ""), status=parent.status,
                          steps=_nodes(session, jobs, names))  # fmt: skip


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PipelinePublic)
def create_pipeline(
    body: PipelineCreate, key: CurrentKey, session: SessionDep, settings: SettingsDep, celery: CeleryDep
) -> PipelinePublic:
    """Submit every step at once: each is validated against its kind's schema before anything is stored."""
    ids = {s.name: new_id() for s in body.steps}
    if len(ids) != len(body.steps):
        raise ApiError(422, "invalid_pipeline", "step names must be unique")
    earlier: set[str] = set()
    planned: list[tuple[StepCreate, dict[str, Any], set[str]]] = []
    bad: list[dict[str, Any]] = []
    for step in body.steps:
        used = set(step.after)
        unknown = used - earlier
        if unknown:
            raise ApiError(422, "invalid_pipeline", f"step {step.name}: after names no earlier step: {sorted(unknown)}")
        params = _rewrite(step.params, ids, earlier, used, f"steps.{step.name}.params")
        try:
            params = get_kind(step.kind).params.model_validate(params).model_dump(mode="json")
        except ValidationError as exc:
            errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()]
            bad.append({"step": step.name, "kind": step.kind, "errors": errors})
        planned.append((step, params, used))
        earlier.add(step.name)
    if bad:
        raise ApiError(
            422, "invalid_pipeline", f"{len(bad)} step(s) fail their kind's schema; nothing was created", bad
        )
    ours = set(ids.values())
    external: list[dict[str, JobStatus]] = []
    for _step, params, _used in planned:
        found: dict[str, JobStatus] = {}
        for _where, ref in find_refs(params):
            if ref.kind == "job" and ref.id in ours:
                continue
            row = resolve_ref(session, key.id, ref)
            if isinstance(row, Job):
                found[row.id] = JobStatus(row.status)
        external.append(found)
    now = utcnow()
    max_attempts = body.max_attempts or settings.default_max_attempts
    parent = Job(
        id=new_id(), kind="pipeline", status=JobStatus.RUNNING, queue="cpu", owner_id=key.id, max_attempts=1,
        params={"name": body.name, "steps": [{"name": s.name, "kind": s.kind, "job_id": ids[s.name],
                                              "after": sorted(u)} for s, _p, u in planned]},
        progress_total=len(planned), created_at=now, updated_at=now, started_at=now,
    )  # fmt: skip
    session.add(parent)
    session.flush()
    session.add(JobEvent(job_id=parent.id, type="status", message=f"pipeline of {len(planned)} steps"))
    to_send: list[Job] = []
    for (step, params, used), outside in zip(planned, external, strict=True):
        spec = get_kind(step.kind)
        job = new_job(spec.name, params, queue=spec.queue_for(params), owner_id=key.id, max_attempts=max_attempts,
                      job_id=ids[step.name])  # fmt: skip
        job.parent_id = parent.id
        upstream = {ids[u]: JobStatus.WAITING for u in used} | outside
        if upstream:
            add_dependent(session, job, upstream)
        else:
            session.add(job)
            session.flush()
            session.add(JobEvent(job_id=job.id, type="status", message="queued", created_at=now))
        if job.status == JobStatus.QUEUED:
            to_send.append(job)
    session.commit()
    for job in to_send:
        send_job(session, job.id, job.kind, job.queue, job.priority, app=celery)
    return pipeline_public(session, parent)


@router.get("/{pipeline_id}", response_model=PipelinePublic)
def read_pipeline(pipeline_id: str, key: CurrentKey, session: SessionDep) -> PipelinePublic:
    """A pipeline: its steps in order, each with its status and upstreams."""
    parent = session.scalar(
        select(Job).where(Job.id == pipeline_id[:64], Job.owner_id == key.id, Job.kind == "pipeline")
    )
    if parent is None:
        raise NotFound("pipeline", pipeline_id[:80])
    return pipeline_public(session, parent)


@graph_router.get("/{job_id}/graph", response_model=GraphPublic)
def job_graph(job: JobDep, session: SessionDep) -> GraphPublic:
    """The jobs this one waits for and those waiting for it."""
    up_ids = session.scalars(select(JobDependency.upstream_id).where(JobDependency.job_id == job.id)).all()
    down_ids = session.scalars(select(JobDependency.job_id).where(JobDependency.upstream_id == job.id)).all()
    rows = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_([*up_ids, *down_ids])))}
    ups = [rows[i] for i in sorted(up_ids) if i in rows]
    downs = [rows[i] for i in sorted(down_ids) if i in rows]
    page = f"/ui/{job.kind}s/{job.id}" if job.kind in CONTAINER_KINDS else None
    return GraphPublic(
        upstreams=_nodes(session, ups), downstreams=_nodes(session, downs), parent_id=job.parent_id, page=page
    )


__all__ = ["graph_router", "router"]
