"""A job's whole path with real processes: API -> broker -> Celery worker -> database and store."""

from __future__ import annotations

import io
import json
import os
import signal

import pytest
import torch

from tests.support.jobs import FAST_LEASES, download, submit
from tests.support.jobs import wait_job_until as wait_for
from tests.support.services import Stack


def test_probe_runs_end_to_end(stack: Stack) -> None:
    job_id = submit(stack, {"matmul_size": 128, "matmul_repeats": 2})
    stack.start_worker()
    job = stack.wait_job(job_id)
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["torch"] == torch.__version__
    assert result["device"] == "cpu"
    assert result["matmul_size"] == 128
    # The figure is the arithmetic of the timed matmul (2 n^3 flops), not a speed this test could promise.
    assert result["gflops"] == pytest.approx(2 * 128**3 / result["matmul_seconds"] / 1e9, rel=1e-12)
    assert (job["attempt"], job["progress"]) == (1, 1.0)
    arts = stack.client.get(f"/jobs/{job_id}/artifacts").json()
    assert [a["name"] for a in arts] == ["probe.json"]
    # The result is the runner's (probe.json) plus the worker's peak memory under "sys".
    assert sorted(result["sys"]) == ["peak_rss_mb"] and result["sys"]["peak_rss_mb"] > 50  # torch alone is more
    assert json.loads(download(stack, f"/jobs/{job_id}/artifacts/probe.json")) == {
        k: v for k, v in result.items() if k != "sys"
    }
    workers = stack.client.get("/workers").json()
    assert len(workers) == 1 and workers[0]["queues"] == "cpu,gpu" and not workers[0]["stale"]


def test_failing_job_records_error_and_is_not_retried(stack: Stack) -> None:
    job_id = submit(stack, {"fail_with": "synthetic failure 42"})
    stack.start_worker()
    job = stack.wait_job(job_id)
    assert (job["status"], job["attempt"]) == ("failed", 1)
    # The owner sees the exception and an error id; the traceback is in the worker's log under that id.
    error_id = job["error"].rsplit("(error ", 1)[1].split(":", 1)[0]
    expected = f"RuntimeError: synthetic failure 42\n\n(error {error_id}: the worker's log has the traceback)"
    assert job["error"] == expected
    log = "".join(p.read_text() for p in stack.home.glob("worker-*.log"))
    logged = log[log.index(f"job {job_id} failed with error {error_id}:") :]
    assert "Traceback (most recent call last)" in logged and "run_probe" in logged
    events = stack.client.get(f"/jobs/{job_id}/events").json()["data"]
    assert [e["type"] for e in events if e["type"] in ("status", "error")][-1] == "error"


def test_cancel_running_job_keeps_its_checkpoint(stack: Stack) -> None:
    job_id = submit(stack, {"matmul_size": 64, "duration_seconds": 120})
    stack.start_worker(extra_env=FAST_LEASES)
    at_cancel = wait_for(stack, job_id, lambda j: (j.get("checkpoint_step") or 0) >= 2)["checkpoint_step"]
    assert stack.client.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = stack.wait_job(job_id, timeout=60)
    assert (job["status"], job["result"]) == ("cancelled", None)  # stopped long before its 120 s
    with stack.session() as s:
        from jobs.models import Job

        key = s.get(Job, job_id).checkpoint_key
    # The checkpoint it keeps is the one its row names: the last second it ran, at or after the cancel.
    step = int(torch.load(io.BytesIO(stack.store.get_bytes(key)), weights_only=False)["step"])
    assert job["checkpoint_step"] == step
    assert at_cancel <= step < 120, (at_cancel, step)


@pytest.mark.fault
def test_sigterm_checkpoints_requeues_and_another_worker_resumes(services_stack: Stack) -> None:
    stack = services_stack
    job_id = submit(stack, {"matmul_size": 64, "duration_seconds": 6})
    first = stack.start_worker(name="first", extra_env=FAST_LEASES)
    wait_for(stack, job_id, lambda j: (j.get("checkpoint_step") or 0) >= 2)
    os.kill(first.pid, signal.SIGTERM)
    first.wait(30)
    job = wait_for(stack, job_id, lambda j: j["status"] == "queued", timeout=5)
    assert (job["attempt"], job["preemptions"]) == (1, 1)
    stopped_at = job["checkpoint_step"]
    stack.start_worker(name="second", extra_env=FAST_LEASES)
    job = stack.wait_job(job_id)
    assert (job["status"], job["attempt"], job["preemptions"]) == ("succeeded", 2, 1)
    assert job["result"]["seconds_run"] == 6
    logs = [e["message"] for e in stack.client.get(f"/jobs/{job_id}/events").json()["data"] if e["type"] == "log"]
    assert f"resumed from checkpoint at step {stopped_at}" in logs


@pytest.mark.fault
def test_sigkill_is_recovered_by_the_reaper_from_the_last_checkpoint(services_stack: Stack) -> None:
    stack = services_stack
    job_id = submit(stack, {"matmul_size": 64, "duration_seconds": 6})
    victim = stack.start_worker(name="victim", extra_env=FAST_LEASES)
    wait_for(stack, job_id, lambda j: (j.get("checkpoint_step") or 0) >= 2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    stack.start_worker(name="rescuer", extra_env=FAST_LEASES)
    job = stack.wait_job(job_id, timeout=60)
    assert (job["status"], job["attempt"], job["preemptions"]) == ("succeeded", 2, 0)
    arts = stack.client.get(f"/jobs/{job_id}/artifacts").json()
    assert [a["name"] for a in arts] == ["probe.json"]
    events = stack.client.get(f"/jobs/{job_id}/events").json()["data"]
    assert any(e["message"] == "requeued by the reaper: lease expired" for e in events)
