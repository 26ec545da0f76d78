"""Health, readiness per component, Prometheus metrics, kinds, workers, and a database that is down."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from jobs.models import Worker
from jobs.states import JobStatus, utcnow
from tests.support.factories import add_job, client_for, key_id, old


def test_health_readiness_and_kinds(stack: Any) -> None:
    assert stack.client.get("/healthz").json() == {"status": "ok"}
    ready = stack.client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ok"
    assert {name: c["ok"] for name, c in body["components"].items()} == {
        "database": True,
        "broker": True,
        "store": True,
    }

    kinds = {k["name"]: k for k in stack.client.get("/kinds").json()}
    probe = kinds["probe"]
    assert (probe["queue"], probe["description"]) == (
        "gpu",
        "What a worker is: torch/CUDA versions, device, memory and a timed matmul.",
    )
    size = probe["params_schema"]["properties"]["matmul_size"]
    assert (size["type"], size["minimum"], size["maximum"], size["default"]) == ("integer", 16, 16384, 1024)
    assert probe["params_schema"]["additionalProperties"] is False


def test_workers_and_metrics(stack: Any) -> None:
    owner = key_id(stack)
    now = utcnow()
    with stack.session() as s:
        s.add(Worker(id="gpu0@host", hostname="host", pid=11, queues="gpu", device="cuda:0", last_heartbeat=now))
        s.add(Worker(id="cpu@host", hostname="host", pid=12, queues="cpu", last_heartbeat=old(600)))
    for _ in range(2):
        assert stack.client.post("/jobs", json={"kind": "probe"}).status_code == 201
    add_job(
        stack,
        owner,
        status=JobStatus.SUCCEEDED,
        started_at=now - timedelta(seconds=30),
        finished_at=now,
        attempt=2,
        reaped=1,
    )
    add_job(
        stack,
        owner,
        status=JobStatus.FAILED,
        kind="evaluate",
        started_at=now - timedelta(seconds=7200),
        finished_at=now,
        attempt=3,
        preemptions=2,
    )

    workers = stack.client.get("/workers").json()
    assert [(w["id"], w["stale"], w["device"]) for w in workers] == [
        ("cpu@host", True, "cpu"),
        ("gpu0@host", False, "cuda:0"),
    ]

    text = stack.client.get("/metrics").text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and line[0] != "#"
    }
    expected = {
        'facejobs_jobs{kind="probe",status="queued"}': 2.0,
        'facejobs_jobs{kind="probe",status="succeeded"}': 1.0,
        'facejobs_jobs{kind="evaluate",status="failed"}': 1.0,
        'facejobs_jobs_queued{queue="gpu"}': 2.0,
        'facejobs_queue_depth{queue="gpu"}': 2.0,
        'facejobs_queue_depth{queue="cpu"}': 0.0,
        'facejobs_job_duration_seconds_bucket{kind="probe",le="15.0"}': 0.0,
        'facejobs_job_duration_seconds_bucket{kind="probe",le="60.0"}': 1.0,
        'facejobs_job_duration_seconds_count{kind="probe"}': 1.0,
        'facejobs_job_duration_seconds_bucket{kind="evaluate",le="3600.0"}': 0.0,
        'facejobs_job_duration_seconds_bucket{kind="evaluate",le="14400.0"}': 1.0,
        "facejobs_job_requeues": 1.0,
        "facejobs_job_preemptions": 2.0,
        "facejobs_job_attempts": 5.0,
        'facejobs_scrape_ok{source="database"}': 1.0,
        'facejobs_scrape_ok{source="broker"}': 1.0,
    }
    assert {k: values.get(k) for k in expected} == expected
    assert abs(values['facejobs_job_duration_seconds_sum{kind="probe"}'] - 30.0) < 0.01
    assert 599 < values['facejobs_worker_heartbeat_age_seconds{queues="cpu",worker="cpu@host"}'] < 700
    assert values['facejobs_worker_heartbeat_age_seconds{queues="gpu",worker="gpu0@host"}'] < 60


def test_database_down_answers_503_not_500(stack: Any) -> None:
    down = client_for(stack, database_url="postgresql+psycopg://postgres@127.0.0.1:1/facejobs")
    r = down.get("/jobs")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "database_unavailable"
    assert down.post("/jobs", json={"kind": "probe"}).status_code == 503
    ready = down.get("/readyz")
    assert ready.status_code == 503
    components = ready.json()["components"]
    assert (
        ready.json()["status"],
        components["database"]["ok"],
        components["broker"]["ok"],
        components["store"]["ok"],
    ) == (
        "unavailable",
        False,
        True,
        True,
    )
    assert "OperationalError" in components["database"]["error"]
    metrics = down.get("/metrics")
    assert metrics.status_code == 200 and 'facejobs_scrape_ok{source="database"} 0.0' in metrics.text
    assert down.get("/healthz").status_code == 200


def test_broker_down_keeps_the_job_for_the_reaper(stack: Any) -> None:
    down = client_for(stack, broker_url="redis://127.0.0.1:1/0", broker_fallback_embedded=False)
    r = down.post("/jobs", json={"kind": "probe"})
    assert r.status_code == 201
    assert (r.json()["status"], r.json()["enqueued_at"]) == ("queued", None)  # the reaper re-sends these
    ready = down.get("/readyz")
    assert ready.status_code == 503
    assert {n: c["ok"] for n, c in ready.json()["components"].items()} == {
        "database": True,
        "broker": False,
        "store": True,
    }
    assert 'facejobs_scrape_ok{source="broker"} 0.0' in down.get("/metrics").text
