"""Jobs over HTTP: submit, validation, idempotency, keyset pages, cancel, retry, events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from jobs.models import Job, JobEvent
from jobs.states import JobStatus, utcnow
from tests.support.factories import add_job, key_id

PROBE_DEFAULTS = {
    "matmul_size": 1024,
    "matmul_repeats": 5,
    "dtype": "float32",
    "duration_seconds": 0.0,
    "fail_with": None,
}


def metric(client: Any, line_prefix: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line {line_prefix}")


def test_submit_validates_stores_and_enqueues(stack: Any) -> None:
    c = stack.client
    r = c.post("/jobs", json={"kind": "probe", "params": {"matmul_size": 64}})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["params"] == {**PROBE_DEFAULTS, "matmul_size": 64}
    assert (job["status"], job["queue"], job["attempt"], job["priority"]) == ("queued", "gpu", 0, 0)
    assert job["max_attempts"] == stack.settings.default_max_attempts == 3
    assert job["progress"] == 0.0 and job["enqueued_at"] is not None and job["created_at"].endswith("Z")
    with stack.session() as s:
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job["id"])).all()
        assert [(e.type, e.message) for e in events] == [("status", "queued")]
    # The broker holds exactly this one message (Redis list or the embedded SQLite queue).
    assert metric(c, 'facejobs_queue_depth{queue="gpu"}') == 1.0

    r = c.post("/jobs", json={"kind": "probe", "params": {}, "queue": "cpu", "priority": 3, "max_attempts": 5})
    assert r.status_code == 201
    assert (r.json()["queue"], r.json()["priority"], r.json()["max_attempts"]) == ("cpu", 3, 5)
    assert metric(c, 'facejobs_queue_depth{queue="cpu"}') == 1.0

    r = c.post("/jobs", json={"kind": "probe", "params": {"matmul_size": 3}})
    assert r.status_code == 422
    assert r.json()["error"] == {
        "code": "invalid_params",
        "message": "invalid params for probe: 1 error(s)",
        "details": [
            {"loc": ["matmul_size"], "msg": "Input should be greater than or equal to 16", "type": "greater_than_equal"}
        ],
    }
    r = c.post("/jobs", json={"kind": "probe", "params": {"matmul_sise": 64}})
    assert (r.status_code, r.json()["error"]["details"][0]["type"]) == (422, "extra_forbidden")
    r = c.post("/jobs", json={"params": {}})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["details"] == [{"loc": ["body", "kind"], "msg": "Field required", "type": "missing"}]
    r = c.post("/jobs", json={"kind": "probe", "queue": "tpu"})
    assert (r.status_code, r.json()["error"]["details"][0]["loc"]) == (422, ["body", "queue"])
    r = c.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
    r = c.post("/jobs", json={"kind": "no_such_kind", "params": {}})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "unknown_kind" and "probe" in err["details"]["known"]
    assert err["message"].startswith("unknown job kind 'no_such_kind'")
    with stack.session() as s:
        assert len(s.scalars(select(Job)).all()) == 2  # refused submissions stored nothing


def test_idempotency_key_returns_the_first_job(stack: Any) -> None:
    first = stack.client.post("/jobs", json={"kind": "probe"}, headers={"Idempotency-Key": "run-42"})
    again = stack.client.post("/jobs", json={"kind": "probe"}, headers={"Idempotency-Key": "run-42"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    # Idempotency keys are per API key: the other key gets its own job.
    other = stack.other.post("/jobs", json={"kind": "probe"}, headers={"Idempotency-Key": "run-42"})
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    with stack.session() as s:
        assert len(s.scalars(select(Job)).all()) == 2


def test_list_jobs_keyset_pages_and_filters(stack: Any) -> None:
    owner, other = key_id(stack), key_id(stack, stack.other_key)
    base = utcnow() - timedelta(hours=1)
    ids = []
    for i in range(25):
        # Five jobs share one timestamp: the id breaks the tie, so pages neither repeat nor skip.
        created = base + timedelta(seconds=min(i, 20))
        status = JobStatus.FAILED if i % 5 == 0 else JobStatus.QUEUED
        ids.append((created, add_job(stack, owner, created, status, kind="evaluate" if i % 2 else "probe")))
    add_job(stack, other, base)
    expected = [j for _, j in sorted(ids, reverse=True)]

    seen, cursor, sizes = [], None, []
    while True:
        r = stack.client.get("/jobs", params={"limit": 10, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200
        page = r.json()
        sizes.append(len(page["data"]))
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [10, 10, 5]
    assert seen == expected

    failed = stack.client.get("/jobs", params={"status": "failed"}).json()["data"]
    failed_ids = {j for i, (_, j) in enumerate(ids) if i % 5 == 0}
    assert [j["id"] for j in failed] == [j for j in expected if j in failed_ids]
    probes = stack.client.get("/jobs", params={"kind": "probe", "status": "queued"}).json()["data"]
    assert len(probes) == 10 and {j["kind"] for j in probes} == {"probe"}
    assert stack.client.get("/jobs", params={"status": "bogus"}).status_code == 422
    r = stack.client.get("/jobs", params={"limit": stack.settings.page_size_max + 1})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "limit_too_large")
    r = stack.client.get("/jobs", params={"cursor": "not-a-cursor"})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_cursor")
    assert len(stack.other.get("/jobs").json()["data"]) == 1


def test_cancel_retry_and_events(stack: Any) -> None:
    c = stack.client
    job_id = c.post("/jobs", json={"kind": "probe"}).json()["id"]
    r = c.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200
    assert (r.json()["status"], r.json()["cancel_requested"]) == ("cancelled", True)
    assert r.json()["finished_at"] is not None
    r = c.post(f"/jobs/{job_id}/cancel")
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["details"]) == (
        409,
        "conflict",
        {"status": "cancelled"},
    )

    r = c.post(f"/jobs/{job_id}/retry")
    assert r.status_code == 200
    job = r.json()
    assert (job["status"], job["cancel_requested"], job["finished_at"], job["error"]) == ("queued", False, None, None)
    assert job["enqueued_at"] is not None
    r = c.post(f"/jobs/{job_id}/retry")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "conflict")

    running = add_job(stack, key_id(stack), status=JobStatus.RUNNING, attempt=1, lease_owner="w/1")
    r = c.post(f"/jobs/{running}/cancel")
    assert (r.json()["status"], r.json()["cancel_requested"]) == ("running", True)
    done = add_job(stack, key_id(stack), status=JobStatus.SUCCEEDED)
    assert c.post(f"/jobs/{done}/cancel").status_code == 409
    assert c.post(f"/jobs/{done}/retry").status_code == 409

    events = c.get(f"/jobs/{job_id}/events").json()
    messages = [e["message"] for e in events["data"]]
    assert messages == ["queued", "cancelled before it started", "queued again (retry)"]
    first = events["data"][0]["id"]
    assert events["next_after"] == events["data"][-1]["id"]
    newer = c.get(f"/jobs/{job_id}/events", params={"after": first}).json()
    assert [e["message"] for e in newer["data"]] == messages[1:]
    assert c.get(f"/jobs/{job_id}/events", params={"after": events["next_after"]}).json() == {
        "data": [],
        "next_after": events["next_after"],
    }
    assert len(c.get(f"/jobs/{job_id}/events", params={"limit": 1}).json()["data"]) == 1
    assert c.get(f"/jobs/{job_id}/events", params={"type": "log"}).json()["data"] == []
    assert c.get(f"/jobs/{job_id}").json()["status"] == "queued"
    assert c.get("/jobs/" + "f" * 32).status_code == 404
    r = c.get("/jobs/bad%00id")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


def test_a_job_asking_for_n_gpus_goes_to_the_gpu_n_queue(stack: Any) -> None:
    c = stack.client
    queues = {}
    for gpus in (1, 2, 4):
        r = c.post("/jobs", json={"kind": "train_embedding", "params": {"dataset": "builtin:digits", "gpus": gpus}})
        assert r.status_code == 201, r.text
        queues[gpus] = r.json()["queue"]
    assert queues == {1: "gpu", 2: "gpu-2", 4: "gpu-4"}
    # An explicit queue still wins, and only the queues workers can serve are taken.
    r = c.post("/jobs", json={"kind": "probe", "params": {}, "queue": "gpu-8"})
    assert (r.status_code, r.json()["queue"]) == (201, "gpu-8")
    assert c.post("/jobs", json={"kind": "probe", "params": {}, "queue": "gpu-3"}).status_code == 422
