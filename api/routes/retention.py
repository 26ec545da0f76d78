"""Retention: `DELETE /jobs/{id}` (its files, rows and children) and `GET /keys/me/storage`.

A delete removes the store objects first and the rows last, in one transaction that holds the rows'
locks (PostgreSQL): when the store fails half-way the rows are all still there (503), and the same
DELETE again removes what is left (deleting a missing object is not an error). Nothing is ever left
as rows without files to show for them, nor can a retry requeue a job whose files are going.
"""

from __future__ import annotations

from fastapi import status
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from api.deps import CurrentKey, JobDep, SessionDep, StoreDep
from api.errors import Conflict
from api.routes import keyed_router
from api.schemas import ErrorBody
from jobs.models import Artifact, Dataset, Job, JobEvent, Model
from jobs.states import JobStatus
from jobs.store import Store

router = keyed_router("/jobs", "jobs")
keys_router = keyed_router("/keys", "keys")


class Deleted(BaseModel):
    """What a delete removed."""

    job_ids: list[str] = Field(description="The job and its descendants (a sweep's children), all gone.")
    objects: int = Field(description="Store objects deleted (artifacts, logs, checkpoints, inputs).")
    bytes: int = Field(description="Bytes of the deleted artifacts, as recorded in their rows.")


class Storage(BaseModel):
    """What this key keeps in the store, by the sizes recorded in the rows."""

    artifacts_bytes: int
    datasets_bytes: int
    models_bytes: int
    total_bytes: int
    jobs: int
    artifacts: int
    datasets: int
    models: int
    checkpoints: int = Field(description="Jobs holding a checkpoint (its size is not recorded, so not counted).")


def family(session: Session, job: Job) -> list[Job]:
    """`job` and every descendant (children of children too), locked for the delete (PostgreSQL)."""
    found = [job]
    frontier = [job.id]
    while frontier:
        children = list(session.scalars(select(Job).where(Job.parent_id.in_(frontier)).with_for_update()))
        found += children
        frontier = [c.id for c in children]
    return found


def delete_objects(session: Session, store: Store, ids: list[str]) -> int:
    """Delete every object under `jobs/<id>/` of each job (artifact rows name some; checkpoints, inputs too)."""
    keys = {k for i in ids for k in store.list(f"jobs/{i}")}
    # Artifacts whose key lies outside the job's folder (none today) go too; inside it, listing found them.
    folders = tuple(f"jobs/{i}/" for i in ids)
    keys |= {
        k for k in session.scalars(select(Artifact.key).where(Artifact.job_id.in_(ids))) if not k.startswith(folders)
    }
    for key in sorted(keys):
        store.delete(key)
    return len(keys)


@router.delete(
    "/{job_id}", response_model=Deleted, status_code=status.HTTP_200_OK, responses={409: {"model": ErrorBody}}
)
def delete_job(job: JobDep, session: SessionDep, store: StoreDep) -> Deleted:
    """Delete an ended job, its artifacts, logs and checkpoint, and its children (a sweep); 409 while any runs."""
    session.scalar(select(Job.id).where(Job.id == job.id).with_for_update())
    session.refresh(job)
    jobs = family(session, job)
    live = [j for j in jobs if not JobStatus(j.status).terminal]
    if live:
        session.rollback()
        raise Conflict(
            f"job {live[0].id} is {JobStatus(live[0].status).value}: cancel it (POST /jobs/{{id}}/cancel) "
            "and delete once it has ended",
            {"live": [{"id": j.id, "status": JobStatus(j.status).value} for j in live]},
        )
    ids = [j.id for j in jobs]
    size = int(session.scalar(select(func.coalesce(func.sum(Artifact.size), 0)).where(Artifact.job_id.in_(ids))) or 0)
    objects = delete_objects(session, store, ids)
    session.execute(delete(JobEvent).where(JobEvent.job_id.in_(ids)))
    session.execute(delete(Artifact).where(Artifact.job_id.in_(ids)))
    # Children first: the parent's row goes last (the FK cascades anyway; the order keeps SQLite without it right).
    for j in reversed(jobs):
        session.execute(delete(Job).where(Job.id == j.id))
    session.commit()
    return Deleted(job_ids=ids, objects=objects, bytes=size)


@keys_router.get("/me/storage", response_model=Storage)
def key_storage(key: CurrentKey, session: SessionDep) -> Storage:
    """Bytes this key stores: its jobs' artifacts, its datasets and its models."""
    art_n, art_b = session.execute(
        select(func.count(Artifact.id), func.coalesce(func.sum(Artifact.size), 0))
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.owner_id == key.id)
    ).one()
    jobs_n, ckpt_n = session.execute(
        select(func.count(Job.id), func.count(Job.checkpoint_key)).where(Job.owner_id == key.id)
    ).one()
    ds_n, ds_b = session.execute(
        select(func.count(Dataset.id), func.coalesce(func.sum(Dataset.size_bytes), 0)).where(Dataset.owner_id == key.id)
    ).one()
    m_n, m_b = session.execute(
        select(func.count(Model.id), func.coalesce(func.sum(Model.size), 0)).where(Model.owner_id == key.id)
    ).one()
    return Storage(
        artifacts_bytes=int(art_b), datasets_bytes=int(ds_b), models_bytes=int(m_b),
        total_bytes=int(art_b) + int(ds_b) + int(m_b), jobs=int(jobs_n), artifacts=int(art_n),
        datasets=int(ds_n), models=int(m_n), checkpoints=int(ckpt_n),
    )  # fmt: skip
