"""The query the jobs table polls every 2 s stays cheap: one indexed statement, also with 10,000 jobs.

Counted with SQLAlchemy's `before_cursor_execute` on the app's engine: a `GET /jobs?limit=50`
executes exactly two statements, the API-key lookup and one jobs query, whatever the filters and
cursor; the plan of that query uses the owner's (owner_id, created_at, id) index on both databases.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert, text

from api.auth import forget_cached_keys
from jobs.db import get_engine
from jobs.models import Job, new_id
from jobs.states import JobStatus, utcnow
from tests.support.seed import owner_id
from tests.support.services import Stack

N_JOBS = 10_000
STATUS_CYCLE = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.RUNNING, JobStatus.QUEUED)


@contextmanager
def recorded_statements(stack: Stack) -> Iterator[list[tuple[str, Any]]]:
    """Every (SQL statement, parameters) the app's engine executes inside the block."""
    engine = get_engine(stack.settings.resolved_database_url)
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def bulk_jobs(stack: Stack, n: int) -> list[str]:
    """`n` jobs of the stack's key in one INSERT, a second apart; their ids newest first."""
    owner = owner_id(stack)
    start = utcnow() - timedelta(seconds=n + 10)
    rows = [
        {"id": new_id(), "kind": "probe" if i % 2 else "invert", "params": {"i": i}, "status": STATUS_CYCLE[i % 4],
         "queue": "gpu", "owner_id": owner, "created_at": start + timedelta(seconds=i),
         "updated_at": start + timedelta(seconds=i)}
        for i in range(n)
    ]  # fmt: skip
    with stack.session() as s:
        s.execute(insert(Job), rows)
    if stack.settings.resolved_database_url.startswith("postgresql"):
        # Fresh statistics, as autovacuum would have them after a bulk load (committed: ANALYZE is transactional).
        with get_engine(stack.settings.resolved_database_url).begin() as conn:
            conn.execute(text("ANALYZE jobs"))
    return [r["id"] for r in reversed(rows)]


def query_plan(stack: Stack, statement: str, parameters: Any) -> str:
    """The database's plan of a recorded statement with its own parameters, as one string."""
    url = stack.settings.resolved_database_url
    explain = "EXPLAIN QUERY PLAN " if url.startswith("sqlite") else "EXPLAIN "
    with get_engine(url).connect() as conn:
        return " | ".join(str(r[-1]) for r in conn.exec_driver_sql(explain + statement, parameters))


def test_jobs_poll_is_one_indexed_query_with_10000_jobs(stack: Stack, artifacts_dir: Path) -> None:
    ids = bulk_jobs(stack, N_JOBS)
    timings: dict[str, float] = {}

    forget_cached_keys()  # the key lookup is one of the two statements (api/auth.py remembers keys 2 s)
    with recorded_statements(stack) as statements:
        t0 = time.perf_counter()
        first = stack.client.get("/jobs?limit=50")
        timings["first_page_ms"] = (time.perf_counter() - t0) * 1000
    assert first.status_code == 200, first.text
    assert len(statements) == 2, statements
    assert "FROM api_keys" in statements[0][0]
    jobs_sql, jobs_params = statements[1]
    assert "FROM jobs" in jobs_sql and "ORDER BY jobs.created_at DESC, jobs.id DESC" in " ".join(jobs_sql.split())
    # The plan of that very statement: a (backward) scan of the owner's index, no sort of the table.
    plan = query_plan(stack, jobs_sql, jobs_params)
    assert "ix_jobs_owner_created" in plan, plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
    page = first.json()
    assert [j["id"] for j in page["data"]] == ids[:50]

    forget_cached_keys()  # the key lookup is one of the two statements (api/auth.py remembers keys 2 s)
    with recorded_statements(stack) as statements:
        t0 = time.perf_counter()
        second = stack.client.get("/jobs", params={"limit": 50, "cursor": page["next_cursor"]})
        timings["second_page_ms"] = (time.perf_counter() - t0) * 1000
    assert len(statements) == 2, statements
    assert [j["id"] for j in second.json()["data"]] == ids[50:100]
    cursor_plan = query_plan(stack, *statements[1])
    assert "ix_jobs_owner_created" in cursor_plan and "Sort" not in cursor_plan, cursor_plan

    # Filters and a cursor do not add statements either.
    forget_cached_keys()  # the key lookup is one of the two statements (api/auth.py remembers keys 2 s)
    with recorded_statements(stack) as statements:
        t0 = time.perf_counter()
        filtered = stack.client.get("/jobs", params={"limit": 50, "status": "failed", "kind": "probe",
                                                     "cursor": second.json()["next_cursor"]})  # fmt: skip
        timings["filtered_page_ms"] = (time.perf_counter() - t0) * 1000
    assert len(statements) == 2, statements
    # Jobs i = 4k+1 are failed probes; the ones older than the first 100 rows, newest first.
    failed_probes = [j for k, j in enumerate(ids) if (N_JOBS - 1 - k) % 4 == 1 and k >= 100]
    assert [j["id"] for j in filtered.json()["data"]] == failed_probes[:50]

    timings["jobs"] = N_JOBS
    out = artifacts_dir / f"poll-query-{stack.name}.json"
    out.write_text(json.dumps({k: round(v, 2) for k, v in timings.items()} | {"plan": plan}, indent=2))


def test_jobs_poll_statement_count_does_not_grow_with_the_page(stack: Stack) -> None:
    bulk_jobs(stack, 300)
    for limit in (1, 50, 200):
        forget_cached_keys()  # the key lookup is one of the two statements (api/auth.py remembers keys 2 s)
        with recorded_statements(stack) as statements:
            resp = stack.client.get(f"/jobs?limit={limit}")
        assert resp.status_code == 200
        assert len(resp.json()["data"]) == limit
        assert len(statements) == 2, (limit, statements)
    # Within KEY_CACHE_SECONDS of its last lookup the key is not read again: the page is one statement.
    with recorded_statements(stack) as statements:
        assert stack.client.get("/jobs?limit=50").status_code == 200
    assert len(statements) == 1 and "FROM jobs" in statements[0][0], statements
