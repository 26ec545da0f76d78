"""PostgreSQL connections dropped under a running job, and the API while its database is away and back.

The shared server is never stopped: the first test terminates only the backends of this session's
own database; the second puts a TCP proxy of its own between the API and the server and cuts it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from jobs.states import utcnow
from tests.support import wait_for
from tests.support.faults import FAST_LEASES, assert_artifacts_intact, events, job_row, readiness, run_starts, wait_row
from tests.support.jobs import submit
from tests.support.servers import TcpProxy
from tests.support.services import Stack

TERMINATE_OTHERS = text(
    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
DURATION, STORM_SECONDS = 8, 4.0
BACKENDS_SINCE = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND backend_start > :since"
)


@pytest.mark.fault
def test_worker_reconnects_after_its_connections_are_terminated_mid_job(services_stack: Stack) -> None:
    stack = services_stack
    admin = create_engine(stack.settings.resolved_database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    job_id = submit(stack, {"matmul_size": 32, "matmul_repeats": 1, "duration_seconds": DURATION})
    worker = stack.start_worker(extra_env=FAST_LEASES)
    wait_row(stack, job_id, lambda j: (j.checkpoint_step or 0) >= 1)

    # A storm of terminations for STORM_SECONDS (the job has DURATION - 1 seconds left): the heartbeat
    # (every 0.5 s), progress and checkpoint writes (every second) find their connections dead, some of
    # them in the middle of a query, and must reconnect.
    terminated: list[int] = []
    with admin.connect() as conn:
        end = time.monotonic() + STORM_SECONDS
        while time.monotonic() < end:
            terminated.append(int(conn.execute(TERMINATE_OTHERS).scalar_one()))
            time.sleep(0.05)
        last_cut = utcnow()
    # Only the worker talks to this database meanwhile: every backend found was one it had reconnected.
    assert sum(terminated) >= 20, terminated

    job = wait_row(stack, job_id, lambda j: j.status in ("succeeded", "failed"), timeout=60)
    history = [(e.attempt, e.type, e.message[:200]) for e in events(stack, job_id) if e.type != "progress"]
    assert (job.status, job.attempt, job.error) == ("succeeded", 1, None), history
    assert job.result is not None and job.result["seconds_run"] == DURATION
    assert len(run_starts(stack, job_id)) == 1  # no lease was lost: the same attempt finished
    assert_artifacts_intact(stack, job_id, ["probe.json"])
    assert worker.poll() is None  # the worker is still alive, and talks to the database again:
    with admin.connect() as conn:
        wait_for(
            lambda: conn.execute(BACKENDS_SINCE, {"since": last_cut}).scalar_one() >= 1,
            30, "a worker connection opened after the last termination",
        )  # fmt: skip
    admin.dispose()


def _through_proxy(url: str, proxy: TcpProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


@pytest.mark.fault
def test_api_answers_503_while_the_database_is_away_then_recovers(services_stack: Stack) -> None:
    from api.app import create_app

    stack = services_stack
    proxy = TcpProxy(make_url(stack.settings.resolved_database_url).port or 5432)
    proxy.open()
    app = create_app(stack.settings.model_copy(update={"database_url": _through_proxy(stack.settings.database_url,
                                                                                          proxy)}))  # fmt: skip
    client = TestClient(app, headers={"X-API-Key": stack.key})
    before = submit(stack, {"matmul_size": 16})
    assert [j["id"] for j in client.get("/jobs").json()["data"]] == [before]
    assert readiness(client) == (200, {"database": True, "broker": True, "store": True})

    proxy.cut()  # the database goes away (the pool's connections die with it)
    down: list[Any] = [
        client.get("/jobs"),
        client.get(f"/jobs/{before}"),
        client.post("/jobs", json={"kind": "probe", "params": {}}),
    ]
    assert [(r.status_code, r.json()["error"]["code"]) for r in down] == [(503, "database_unavailable")] * 3
    assert readiness(client) == (503, {"database": False, "broker": True, "store": True})
    assert client.get("/healthz").status_code == 200
    assert 'facejobs_scrape_ok{source="database"} 0.0' in client.get("/metrics").text
    assert [j["id"] for j in stack.client.get("/jobs").json()["data"]] == [before]  # nothing half-written

    proxy.open()  # back: the same app recovers without a restart
    assert readiness(client) == (200, {"database": True, "broker": True, "store": True})
    created = client.post("/jobs", json={"kind": "probe", "params": {"matmul_size": 16}})
    assert created.status_code == 201, created.text
    assert [j["id"] for j in client.get("/jobs").json()["data"]] == [created.json()["id"], before]
    assert job_row(stack, created.json()["id"]).status == "queued"
    assert 'facejobs_scrape_ok{source="database"} 1.0' in client.get("/metrics").text
    client.close()
    proxy.cut()
