"""`GET /compare?ids=a,b,c`: jobs side by side (params diff, curves, finals, plots, seed groups); JSON or CSV.

Three indexed queries whatever the number of jobs: the jobs by primary key (and owner), their progress
events by (job_id, id), their image artifacts by job_id. The logic is `api/compare.py`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.compare import MAX_COMPARE, JobRun, comparison, groups_csv, jobs_csv, series_from_events
from api.deps import CurrentKey, SessionDep
from api.errors import ApiError, NotFound
from api.ids import ID_RE
from api.routes import keyed_router
from jobs.models import Artifact, Job, JobEvent

router = keyed_router("/compare", "compare")


def parse_ids(raw: str) -> list[str]:
    """The distinct ids of a comma-separated list, in order; 422 when empty, malformed or over the cap."""
    ids = list(dict.fromkeys(p.strip() for p in raw.split(",") if p.strip()))
    if not ids:
        raise ApiError(422, "no_ids", "ids wants a comma-separated list of job ids")
    if len(ids) > MAX_COMPARE:
        raise ApiError(
            422, "too_many_ids", f"compare at most {MAX_COMPARE} jobs ({len(ids)} given)", {"maximum": MAX_COMPARE}
        )
    bad = [i[:80] for i in ids if ID_RE.match(i) is None]
    if bad:
        raise NotFound("job", bad[0])
    return ids


def load_runs(session: Session, owner_id: str, ids: list[str]) -> list[JobRun]:
    """The owner's jobs `ids` with their series and plots, in the order asked; 404 naming a missing one."""
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids), Job.owner_id == owner_id))}
    missing = [i for i in ids if i not in jobs]
    if missing:
        raise ApiError(404, "not_found", f"job {missing[0]!r} not found", {"missing": missing})
    events: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stmt = (
        select(JobEvent.job_id, JobEvent.data)
        .where(JobEvent.job_id.in_(ids), JobEvent.type == "progress")
        .order_by(JobEvent.job_id, JobEvent.id)
    )
    for job_id, data in session.execute(stmt):
        if isinstance(data, dict):
            events[job_id].append(data)
    plots: dict[str, list[dict[str, str]]] = defaultdict(list)
    arts = select(Artifact.job_id, Artifact.name, Artifact.content_type, Artifact.sha256).where(
        Artifact.job_id.in_(ids), Artifact.content_type.like("image/%")
    )
    for job_id, name, ctype, sha in session.execute(arts.order_by(Artifact.job_id, Artifact.name)):
        plots[job_id].append(
            {"name": name, "content_type": ctype, "sha256": sha, "url": f"/jobs/{job_id}/artifacts/{name}"}
        )
    runs = []
    for i in ids:
        j = jobs[i]
        runs.append(
            JobRun(
                id=j.id, kind=j.kind, name=j.name, status=j.status.value, params=j.params or {},
                metrics=j.metrics or {}, result=j.result, tags=list(j.tags or []),
                series=series_from_events(events[i]), plots=plots[i],
            )
        )  # fmt: skip
    return runs


@router.get(
    "",
    responses={200: {"description": "The comparison (JSON), or a CSV table with format=csv.",
                     "content": {"text/csv": {}}}},
)  # fmt: skip
def compare_jobs(
    key: CurrentKey,
    session: SessionDep,
    ids: Annotated[str, Query(max_length=50 * 66, description="Comma-separated job ids (<= 50, any kinds).")],
    format: Annotated[Literal["json", "csv"], Query(description="json (default) or csv.")] = "json",
    table: Annotated[Literal["jobs", "groups"], Query(description="For csv: one row per job or per group.")] = "jobs",
    download: Annotated[bool, Query(description="Send as an attachment (export).")] = False,
) -> Response:
    """Compare jobs: params that differ, metric series, final metrics, plots, and groups over seeds."""
    data = comparison(load_runs(session, key.id, parse_ids(ids)))
    if format == "csv":
        body = jobs_csv(data) if table == "jobs" else groups_csv(data)
        headers = {"Content-Disposition": f'attachment; filename="compare-{table}.csv"'}
        return Response(body, media_type="text/csv; charset=utf-8", headers=headers)
    attachment = {"Content-Disposition": 'attachment; filename="compare.json"'}
    return JSONResponse(data, headers=attachment if download else None)
