"""Jobs' labels (name, tags, notes): the filtered list `GET /jobs` and `PATCH /jobs/{id}`.

Every filter narrows the same keyset page (newest first, `api/pagination.py`) and each has an index on
PostgreSQL (migration 0003_job_labels): `tag` is array containment under a GIN index, `q` an ILIKE over
name, notes and kind under pg_trgm GIN indexes, `name_prefix` a pattern-ops btree; `bench/poll.py`
checks the plans. On SQLite the same filters are LIKE and json_each scans.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query
from sqlalchemy import ColumnElement, Select, String, and_, cast, func, literal, literal_column, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from api.deps import CurrentKey, JobDep, SessionDep, SettingsDep
from api.errors import ApiError
from api.pagination import check_limit, keyset, page
from api.routes import keyed_router
from api.schemas import NAME_MAX, TAG_MAX, TAGS_MAX, ErrorBody, JobPatch, JobPublic, JobsPage
from jobs.models import Job
from jobs.states import JobStatus

router = keyed_router("/jobs", "jobs")
Q_MAX = 200


def like_escape(text: str) -> str:
    """`text` with LIKE's wildcards taken literally (escape character backslash)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _naive_utc(value: datetime) -> datetime:
    # The database holds naive UTC; a caller's offset is honoured, a naive value is read as UTC.
    try:
        return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first representable instant
        raise ApiError(422, "invalid_time", f"{value.isoformat()} is out of range in UTC") from None


def has_tags(dialect: str, tags: list[str]) -> ColumnElement[bool]:
    """Jobs carrying every one of `tags`."""
    if dialect == "postgresql":
        contains: ColumnElement[bool] = Job.tags.op("@>")(cast(literal(tags, ARRAY(String(64))), ARRAY(String(64))))
        return contains
    conditions = []
    for tag in tags:
        each = func.json_each(Job.tags).table_valued("value")
        conditions.append(select(literal(1)).select_from(each).where(each.c.value == tag).exists())
    return and_(*conditions)


def name_starts(dialect: str, prefix: str) -> ColumnElement[bool]:
    """Jobs whose name starts with `prefix`, case counting (SQLite's LIKE ignores case, so it compares a slice)."""
    if dialect == "sqlite":
        return func.substr(Job.name, 1, len(prefix)) == prefix
    return Job.name.like(like_escape(prefix) + "%", escape="\\")


def text_match(q: str) -> ColumnElement[bool]:
    """Jobs whose name, notes or kind contain `q`, ignoring case."""
    pattern = f"%{like_escape(q)}%"
    return or_(*(col.ilike(pattern, escape="\\") for col in (Job.name, Job.notes, Job.kind)))


def filtered_jobs(
    session: Session,
    owner_id: str,
    *,
    status: JobStatus | None = None,
    kind: str | None = None,
    tags: list[str] | None = None,
    name_prefix: str | None = None,
    q: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    parent_id: str | None = None,
) -> Select[Job]:
    """The owner's jobs matching every filter given (unordered; `keyset` orders and pages it)."""
    stmt = select(Job).where(Job.owner_id == owner_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if tags:
        stmt = stmt.where(has_tags(session.get_bind().dialect.name, tags))
    if name_prefix:
        stmt = stmt.where(name_starts(session.get_bind().dialect.name, name_prefix))
    if q:
        stmt = stmt.where(text_match(q))
    if created_after is not None:
        stmt = stmt.where(Job.created_at > _naive_utc(created_after))
    if created_before is not None:
        stmt = stmt.where(Job.created_at < _naive_utc(created_before))
    if parent_id is not None:
        stmt = stmt.where(Job.parent_id == parent_id)
    return stmt


# Below this many matches a name prefix is answered match-first (sort them); at or above it, by the walk.
PREFIX_PROBE = 5000


def order_column(session: Session, owner_id: str, name_prefix: str | None) -> ColumnElement[datetime] | Any:
    """`created_at`, or with a selective name prefix on PostgreSQL the same value as an expression.

    A prefix names an experiment, whose jobs were made together: walking the (owner, created_at) index
    newest first until 50 match (the plan the estimate picks) then reads every newer job, 127 ms at
    100,000 jobs in bench/poll.py. Ordering by an expression makes the planner find the matches by the
    name index and sort them instead. That is right for a few thousand matches and wrong for a broad
    prefix (1 s for 167,000 matches at 1,000,000 jobs), so one index-only probe counts the matches up
    to PREFIX_PROBE first, and a broad prefix keeps the walk, which finds 50 of them quickly.
    """
    if not name_prefix or session.get_bind().dialect.name != "postgresql":
        return Job.created_at
    probe = select(literal(1)).where(Job.owner_id == owner_id, name_starts("postgresql", name_prefix))
    matches = session.scalar(select(func.count()).select_from(probe.limit(PREFIX_PROBE).subquery()))
    if (matches or 0) >= PREFIX_PROBE:
        return Job.created_at
    return Job.created_at + literal_column("interval '0'")


@router.get("", response_model=JobsPage)
def list_jobs(
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    tag: Annotated[
        list[str] | None, Query(max_length=TAG_MAX, description="Repeatable; a job must carry every one.")
    ] = None,
    name_prefix: Annotated[str | None, Query(max_length=NAME_MAX, description="Names starting so (case counts).")] = (
        None
    ),
    q: Annotated[str | None, Query(max_length=Q_MAX, description="Text in name, notes or kind (any case).")] = None,
    created_after: Annotated[datetime | None, Query(description="Created after this (UTC when no offset).")] = None,
    created_before: Annotated[datetime | None, Query(description="Created before this time.")] = None,
    parent_id: Annotated[str | None, Query(max_length=32, description="Children of this job (a sweep's).")] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
) -> JobsPage:
    """List the caller's jobs, newest first, one page at a time, optionally filtered."""
    check_limit(limit, settings.page_size_max)
    if tag is not None and len(tag) > TAGS_MAX:
        raise ApiError(422, "too_many_tags", f"at most {TAGS_MAX} tag filters", {"maximum": TAGS_MAX})
    stmt = filtered_jobs(
        session, key.id, status=status_, kind=kind, tags=tag, name_prefix=name_prefix, q=q,
        created_after=created_after, created_before=created_before, parent_id=parent_id,
    )  # fmt: skip
    rows = session.scalars(keyset(stmt, order_column(session, key.id, name_prefix), Job.id, cursor, limit)).all()
    data, next_cursor = page(rows, limit)
    return JobsPage(data=[JobPublic.model_validate(j) for j in data], next_cursor=next_cursor)


@router.patch("/{job_id}", response_model=JobPublic, responses={422: {"model": ErrorBody}})
def patch_job(job: JobDep, body: JobPatch, session: SessionDep) -> Job:
    """Change a job's name, tags (replace, add, remove) or notes, in any state."""
    # Lock the row (PostgreSQL) so two concurrent tag edits both land instead of one overwriting the other.
    locked = session.scalar(
        select(Job).where(Job.id == job.id).with_for_update().execution_options(populate_existing=True)
    )
    assert locked is not None  # JobDep found it in this very session
    given = body.model_fields_set
    if "name" in given:
        locked.name = body.name
    if "notes" in given:
        locked.notes = body.notes
    tags = list(locked.tags or [])
    if body.tags is not None:
        tags = list(body.tags)
    for t in body.add_tags or []:
        if t not in tags:
            tags.append(t)
    removed = set(body.remove_tags or [])
    tags = [t for t in tags if t not in removed]
    if len(tags) > TAGS_MAX:
        session.rollback()
        raise ApiError(
            422, "too_many_tags", f"a job has at most {TAGS_MAX} tags; this edit leaves {len(tags)}",
            {"maximum": TAGS_MAX, "tags": len(tags)},
        )  # fmt: skip
    if tags != list(locked.tags or []):
        locked.tags = tags
    session.commit()
    session.refresh(locked)
    return locked
