"""The `invert` kind through real processes: API -> broker -> Celery worker -> PostgreSQL and S3.

A tiny ArcFace model (se_resnet18 at base width 4 on sklearn's digits at 16x16, one epoch) is trained
once per module by a real `train_embedding` job; every test inverts it as `job:<id>`. The stack is
module-scoped for that reason (the model job must outlive each test), on the real services only:
the checkpoint and artifact checks are about the S3 store.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tests.support.factories import TINY_ARCFACE
from tests.support.jobs import FAST_LEASES, download, submit
from tests.support.jobs import wait_job_until as wait_for
from tests.support.services import Stack, _stack

pytestmark = pytest.mark.services

TINY_MODEL = TINY_ARCFACE
# Ten 16x16 digits in one batch: tens of milliseconds a step on an idle core (se_resnet18 is ~60
# layers of tiny ops), so tens of steps give the tests time to watch, kill and cancel a running job.
INVERT: dict[str, Any] = {"images_per_class": 1, "flip": True, "seed": 3, "lambda_bn": 0.01, "bn_form": "l2"}
# One torch thread per worker: on a busy machine two threads of tiny ops wait on each other (a
# step took 6x longer with two than with one here), and both runs of the resume test must use the
# same thread count anyway for their images to agree bit for bit.
WORKER_ENV = {**FAST_LEASES, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def invert_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    mp = pytest.MonkeyPatch()
    try:
        yield from _stack("services", request, tmp_path_factory.mktemp("invert"), mp)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def model_job(invert_stack: Stack) -> str:
    """`job:<id>` of a succeeded train_embedding job; its worker is stopped so each test owns its workers."""
    job_id = submit(invert_stack, TINY_MODEL, kind="train_embedding")
    invert_stack.start_worker(name="trainer", extra_env=WORKER_ENV)
    try:
        job = invert_stack.wait_job(job_id, timeout=180)
    finally:
        invert_stack.stop_workers()
    assert job["status"] == "succeeded", job
    return f"job:{job_id}"


@pytest.fixture
def stack(invert_stack: Stack) -> Iterator[Stack]:
    """The module's stack; the workers a test starts are killed when it ends."""
    yield invert_stack
    invert_stack.stop_workers()


def artifact_names(stack: Stack, job_id: str) -> list[str]:
    return [a["name"] for a in stack.client.get(f"/jobs/{job_id}/artifacts").json()]


def final_images(stack: Stack, job_id: str) -> dict[str, Any]:
    data = download(stack, f"/jobs/{job_id}/artifacts/tensors.pt")
    tensors: dict[str, Any] = torch.load(io.BytesIO(data), weights_only=True)
    return tensors


def logs(stack: Stack, job_id: str) -> list[str]:
    events = stack.client.get(f"/jobs/{job_id}/events", params={"limit": 200}).json()["data"]
    return [e["message"] for e in events if e["type"] == "log"]


@pytest.mark.slow
def test_invert_job_previews_while_running_and_writes_every_artifact_once(stack: Stack, model_job: str) -> None:
    stack.start_worker(extra_env=WORKER_ENV)
    job_id = submit(stack, {**INVERT, "model": model_job, "iterations": 60, "preview_every": 10}, kind="invert")

    # A preview (and progress with every loss term) is visible while the job still runs.
    seen_preview_while_running = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = stack.client.get(f"/jobs/{job_id}").json()
        if job["status"] != "running":
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.1)
            continue
        if "previews/grid.png" in artifact_names(stack, job_id):
            preview = download(stack, f"/jobs/{job_id}/artifacts/previews/grid.png")
            seen_preview_while_running = preview.startswith(b"\x89PNG")
            if seen_preview_while_running:
                break
        time.sleep(0.1)
    assert seen_preview_while_running, "no preview appeared while the job was running"

    job = stack.wait_job(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert (job["attempt"], job["progress_step"], job["progress_total"]) == (1, 60, 60)
    result = job["result"]
    assert result["iterations"] == 60 and result["images"] == 10 and result["classes"] == list(range(10))
    # The result's target_prob is the metrics artifact's, the mean over the ten classes' (one image each).
    metrics = json.loads(download(stack, f"/jobs/{job_id}/artifacts/metrics.json"))
    per_class = [metrics["per_class"][str(c)]["target_prob"] for c in range(10)]
    assert result["target_prob"] == metrics["target_prob"] == pytest.approx(sum(per_class) / 10, rel=1e-6)
    assert set(job["metrics"]) >= {"loss", "loss_bn", "loss_arcface", "loss_tv", "loss_l2", "target_prob"}
    events = stack.client.get(f"/jobs/{job_id}/events", params={"limit": 200}).json()["data"]
    steps = [e["data"]["step"] for e in events if e["type"] == "progress"]
    assert steps == sorted(steps) and steps[-1] == 60 and len(steps) >= 2

    names = artifact_names(stack, job_id)
    expected = sorted(
        ["grid.png", "tensors.pt", "metrics.json", "previews/grid.png"] + [f"images/{c}_0.png" for c in range(10)]
    )
    assert sorted(names) == expected  # each exactly once
    tensors = final_images(stack, job_id)
    assert tensors["images"].shape == (10, 1, 16, 16) and tensors["labels"].tolist() == list(range(10))
    png = download(stack, f"/jobs/{job_id}/artifacts/images/7_0.png")
    assert png.startswith(b"\x89PNG")


@pytest.mark.slow
@pytest.mark.fault
def test_sigkilled_inversion_resumes_on_another_worker_to_the_uninterrupted_images(
    stack: Stack, model_job: str
) -> None:
    params = {**INVERT, "model": model_job, "iterations": 100, "checkpoint_every": 10, "preview_every": 0}
    job_id = submit(stack, params, kind="invert")
    victim = stack.start_worker(name="victim", extra_env=WORKER_ENV)
    wait_for(stack, job_id, lambda j: (j.get("checkpoint_step") or 0) >= 20, timeout=120)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    killed_at = stack.client.get(f"/jobs/{job_id}").json()["checkpoint_step"]
    assert killed_at < 100, "the job finished before the kill: make it longer"
    reference_id = submit(stack, params, kind="invert")  # the same inversion, never interrupted

    stack.start_worker(name="rescuer", extra_env=WORKER_ENV)
    job = stack.wait_job(job_id, timeout=120)
    reference = stack.wait_job(reference_id, timeout=120)
    assert (job["status"], job["attempt"], job["preemptions"]) == ("succeeded", 2, 0), job
    assert (reference["status"], reference["attempt"]) == ("succeeded", 1)
    assert f"invert: resumed from the checkpoint at step {killed_at}" in logs(stack, job_id)
    assert job["result"]["iterations"] == 100

    resumed, uninterrupted = final_images(stack, job_id), final_images(stack, reference_id)
    assert torch.allclose(resumed["images"], uninterrupted["images"], rtol=0, atol=1e-5)
    assert sorted(artifact_names(stack, job_id)) == sorted(artifact_names(stack, reference_id))


@pytest.mark.slow
def test_cancelled_inversion_keeps_its_last_preview_and_checkpoint(stack: Stack, model_job: str) -> None:
    params = {**INVERT, "model": model_job, "iterations": 100000, "checkpoint_every": 10, "preview_every": 10}
    job_id = submit(stack, params, kind="invert")
    stack.start_worker(extra_env=WORKER_ENV)
    wait_for(stack, job_id, lambda j: (j.get("checkpoint_step") or 0) >= 20, timeout=120)
    assert stack.client.post(f"/jobs/{job_id}/cancel").status_code == 200
    job = stack.wait_job(job_id, timeout=30)
    assert job["status"] == "cancelled"
    assert 20 <= job["checkpoint_step"] < 100000

    names = artifact_names(stack, job_id)
    assert names == ["previews/grid.png"]  # the last preview, and no final artifacts
    assert download(stack, f"/jobs/{job_id}/artifacts/previews/grid.png").startswith(b"\x89PNG")
    with stack.session() as s:
        from jobs.models import Job

        key = s.get(Job, job_id).checkpoint_key
    assert key and stack.store.exists(key)
    state = torch.load(io.BytesIO(stack.store.get_bytes(key)), weights_only=True)
    assert state["kind"] == "invert" and state["step"] == job["checkpoint_step"]
    assert state["images"].shape == (10, 1, 16, 16)
