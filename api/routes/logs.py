"""A job's log: each attempt's captured stdout, stderr and logging, tailed from a byte offset or whole.

The worker stores the log as chunks plus an index (`jobs.logstore`); this reads them back. `done`
says the attempt's log is complete and the caller has all of it: the attempt ended (the worker stores
the last chunk before it records the attempt's end, so the job row is read first, then the index).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.deps import JobDep, SessionDep, StoreDep
from api.errors import ApiError
from api.routes import keyed_router
from api.routes.artifacts import content_disposition
from jobs.logstore import chunk_key, read_from, read_index
from jobs.models import Job
from jobs.states import JobStatus
from jobs.store import Store

router = keyed_router("/jobs", "logs")
MAX_READ_BYTES = 4 * 1024**2
MAX_LOG_WAIT_SECONDS = 30.0
RECHECK_SECONDS = 0.2


class LogPage(BaseModel):
    attempt: int = Field(description="The attempt this text is from (0: the job has not started).")
    attempts: int = Field(description="How many attempts the job has had so far.")
    offset: int = Field(description="Byte offset of `text` in the attempt's log.")
    next_offset: int = Field(description="Ask from here next time.")
    size: int = Field(description="Bytes of the attempt's log stored so far.")
    done: bool = Field(description="The attempt ended and `text` reaches the end of its log: nothing more will come.")
    text: str


def _attempt_ended(job: Job, attempt: int) -> bool:
    return attempt < job.attempt or JobStatus(job.status) != JobStatus.RUNNING


def _read(job: Job, store: Store, attempt: int, offset: int, limit: int) -> LogPage:
    ended = _attempt_ended(job, attempt)  # before the index: its last chunk is stored before the end is
    index = read_index(store, job.id, attempt) if attempt else None
    size = index.size if index else 0
    data = read_from(store, job.id, attempt, index, offset, limit) if index and offset < size else b""
    next_offset = offset + len(data)
    done = (ended or bool(index and index.done)) and next_offset >= size
    return LogPage(
        attempt=attempt, attempts=job.attempt, offset=offset, next_offset=next_offset, size=size, done=done,
        text=data.decode("utf-8", "replace"),
    )  # fmt: skip


def _attempt(job: Job, attempt: int | None) -> int:
    if attempt is None:
        return job.attempt
    if attempt > job.attempt:
        raise ApiError(404, "not_found", f"job {job.id} has had {job.attempt} attempts; there is no attempt {attempt}")
    return attempt


@router.get("/{job_id}/logs", response_model=LogPage)
def read_log(
    job: JobDep,
    session: SessionDep,
    store: StoreDep,
    attempt: Annotated[int | None, Query(ge=1, le=10**6, description="Which attempt (default: the latest).")] = None,
    offset: Annotated[int, Query(ge=0, le=2**62, description="Byte offset to read from (a page's next_offset).")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_READ_BYTES, description="Most bytes to answer.")] = 1024**2,
    wait_seconds: Annotated[
        float, Query(ge=0, le=MAX_LOG_WAIT_SECONDS, description="Answer when new text comes, or after this long.")
    ] = 0,
) -> LogPage:
    """An attempt's log from `offset`: the text, where to ask next, and whether it is complete."""
    n = _attempt(job, attempt)
    page = _read(job, store, n, offset, limit)
    deadline = time.monotonic() + wait_seconds
    while not page.text and not page.done and time.monotonic() < deadline:
        time.sleep(RECHECK_SECONDS)
        _refresh(session, job)
        if attempt is None and job.attempt != n:
            break  # a new attempt began: the caller moves on to it
        page = _read(job, store, n, offset, limit)
    return page


def _refresh(session: Session, job: Job) -> None:
    session.commit()  # end the read transaction, so the refresh sees the worker's commits
    session.refresh(job)


@router.get(
    "/{job_id}/logs/download",
    response_class=StreamingResponse,
    responses={200: {"description": "The log as text.", "content": {"text/plain": {}}}},
)
def download_log(
    job: JobDep,
    store: StoreDep,
    attempt: Annotated[int | None, Query(ge=1, le=10**6, description="One attempt (default: every attempt).")] = None,
) -> StreamingResponse:
    """The whole log as one text file: one attempt, or every attempt under a header line each."""
    attempts = [_attempt(job, attempt)] if attempt is not None else list(range(1, job.attempt + 1))
    indexes = [(n, read_index(store, job.id, n)) for n in attempts]

    def body() -> Iterator[bytes]:
        for n, index in indexes:
            if attempt is None:
                yield f"===== attempt {n} =====\n".encode()
            for number in range(1, len(index.chunks) + 1 if index else 1):
                yield store.get_bytes(chunk_key(job.id, n, number))

    name = f"{job.id}-attempt-{attempt}.log" if attempt is not None else f"{job.id}.log"
    headers = {"Content-Disposition": content_disposition(name)}
    return StreamingResponse(body(), media_type="text/plain; charset=utf-8", headers=headers)
