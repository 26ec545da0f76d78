"""Flower against a facejobs broker: with FACEJOBS_TASK_EVENTS on, a job's task shows in Flower's API."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support import wait_for
from tests.support.jobs import submit, wait_http
from tests.support.s3server import free_ports
from tests.support.services import REPO, Stack, reset_process_state

pytestmark = pytest.mark.slow


def test_flower_reads_a_jobs_task_by_its_celery_task_id(services_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = services_stack
    events = {"FACEJOBS_TASK_EVENTS": "true"}
    # The API sends the task-sent event: its app is rebuilt with the setting on.
    monkeypatch.setenv("FACEJOBS_TASK_EVENTS", "true")
    reset_process_state()
    from api.app import create_app

    stack.app = create_app()
    stack.client = TestClient(stack.app, headers={"X-API-Key": stack.key})
    (port,) = free_ports(1)
    # `-A workers.celery_app`: Flower reads the facejobs settings (broker URL and key prefix) as workers do.
    # --enable_events=False: Flower must not switch the events on itself; the setting is what is tested.
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "flower", f"--port={port}",
         "--address=127.0.0.1", "--enable_events=False"],
        cwd=REPO, env={**os.environ, **stack.env, **events, "FLOWER_UNAUTHENTICATED_API": "true"},
        stdout=(stack.home / "flower.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    stack.workers.append(flower)  # stopped with the workers
    wait_http(f"http://127.0.0.1:{port}/healthcheck")
    stack.start_worker(extra_env=events)  # Flower listens by the time the worker is up
    job_id = submit(stack, {"matmul_size": 32, "matmul_repeats": 1})
    assert stack.wait_job(job_id, timeout=120)["status"] == "succeeded"

    def task() -> dict[str, Any] | None:
        resp = httpx.get(f"http://127.0.0.1:{port}/api/task/info/{job_id}", timeout=5)
        info: dict[str, Any] = resp.json() if resp.status_code == 200 else {}
        return info if info.get("state") == "SUCCESS" else None

    info = wait_for(task, 30, f"Flower to show task {job_id} succeeded", poll=0.5)
    # The Celery task id facejobs used is the job id (jobs.broker.enqueue); its one argument too.
    assert (info["uuid"], info["name"], info["state"]) == (job_id, "facejobs.probe", "SUCCESS")
    assert job_id in info["args"] and info["sent"] is not None and info["received"] is not None
    listed = httpx.get(f"http://127.0.0.1:{port}/api/tasks", timeout=5).json()
    assert listed[job_id]["name"] == "facejobs.probe"
