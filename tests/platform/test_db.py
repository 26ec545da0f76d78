"""Session scopes: a bookkeeping commit that does not wait for the disk still commits, and only itself."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from jobs.db import session_scope
from jobs.models import Job, JobEvent
from tests.support.factories import make_job, make_key


def _synchronous_commit(s: Session) -> str | None:
    """PostgreSQL's setting for the session's transaction (SQLite has none)."""
    if s.get_bind().dialect.name != "postgresql":
        return None
    return str(s.execute(text("SHOW synchronous_commit")).scalar_one())


def test_bookkeeping_scope_commits_without_waiting_for_the_flush_and_only_itself(db_url: str) -> None:
    pg = db_url.startswith("postgresql")
    with session_scope(db_url) as s:
        job_id = make_job(s, make_key(s)).id
        assert _synchronous_commit(s) == ("on" if pg else None)
    with session_scope(db_url, durable=False) as s:
        assert _synchronous_commit(s) == ("off" if pg else None)
        s.add(JobEvent(job_id=job_id, attempt=1, type="log", message="bookkeeping"))
    with session_scope(db_url) as s:
        # SET LOCAL ends with its transaction: the pooled connection's next one waits for the flush again.
        assert _synchronous_commit(s) == ("on" if pg else None)
        assert [e.message for e in s.query(JobEvent).filter_by(job_id=job_id, type="log")] == ["bookkeeping"]


def test_bookkeeping_scope_rolls_back_on_error(db_url: str) -> None:
    with session_scope(db_url) as s:
        job_id = make_job(s, make_key(s)).id
    with pytest.raises(RuntimeError, match="the caller failed"), session_scope(db_url, durable=False) as s:
        s.add(JobEvent(job_id=job_id, attempt=1, type="log", message="never stored"))
        s.flush()
        raise RuntimeError("the caller failed")
    with session_scope(db_url) as s:
        assert s.query(JobEvent).filter_by(job_id=job_id, type="log").count() == 0
        assert s.get(Job, job_id) is not None
