"""A job whose own work goes wrong (a NaN loss, data it may not read) fails at once and is not retried.

tests/platform/test_worker.py covers a runner that raises; these go through a real training kind and
a worker-side input check, and run reaper passes to see that nothing requeues the job.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.broker import enqueue
from jobs.kinds import validate_params
from jobs.models import Job
from tests.support.factories import add_job, key_id, make_zip, orl_files, upload
from tests.support.faults import FAST_LEASES, events, job_row, run_starts, wait_row
from tests.support.jobs import submit
from tests.support.services import Stack
from workers.reaper import reap_once

# Seeded, and measured to blow up: SGD at lr 10 with heavy momentum and weight decay on a tiny
# iresnet18 reaches a NaN ArcFace loss within the first epoch on builtin:digits.
DIVERGING = {
    "dataset": "builtin:digits", "backbone": "iresnet18", "base_width": 4, "embedding_size": 8, "image_size": 16,
    "optimizer": "sgd", "lr": 10.0, "momentum": 0.99, "weight_decay": 1.0, "loss_lr_multiplier": 100.0,
    "scale": 1024.0, "margin": 89.0, "schedule": "constant", "epochs": 3, "batch_size": 8,
    "max_train_samples": 128, "folds": 2, "max_pairs": 10,
}  # fmt: skip
REAPER_PASSES = 3


def assert_stays_failed(stack: Stack, job_id: str) -> None:
    """Reaper passes run here (not a sleep that hopes the worker's reaper ran meanwhile) leave the job failed."""
    for _ in range(REAPER_PASSES):
        report = reap_once(stack.settings)
        assert job_id not in {*report.requeued, *report.failed, *report.resent}, report
    job = job_row(stack, job_id)
    assert (job.status, job.attempt, job.reaped) == ("failed", 1, 0)
    assert len(run_starts(stack, job_id)) == 1


@pytest.mark.fault
@pytest.mark.slow
def test_nan_loss_and_foreign_data_fail_once_with_their_error(services_stack: Stack, orl_dir: Path) -> None:
    stack = services_stack
    nan_job = submit(stack, DIVERGING, kind="train_embedding", max_attempts=3)
    # Bad data: a dataset id that exists, but belongs to another key. The API answers 404 at submit...
    theirs = upload(stack.other, "/datasets", "faces.zip", make_zip(orl_files(orl_dir, ids=("s1", "s2"), per_id=2)))
    assert theirs.status_code == 201, theirs.text
    foreign = {**DIVERGING, "dataset": f"dataset:{theirs.json()['id']}"}
    refused = stack.client.post("/jobs", json={"kind": "train_embedding", "params": foreign})
    assert (refused.status_code, refused.json()["error"]["code"]) == (404, "not_found")
    # ...and the worker checks again (a row can change between submit and run): a job written past the API.
    foreign_job = add_job(stack, key_id(stack), kind="train_embedding")
    with stack.session() as s:
        row = s.get(Job, foreign_job)
        assert row is not None
        row.params = validate_params("train_embedding", foreign).model_dump(mode="json")
    enqueue(foreign_job, "train_embedding", "gpu")
    stack.start_worker(extra_env=FAST_LEASES)

    job = wait_row(stack, nan_job, lambda j: j.status in ("succeeded", "failed"), timeout=120)
    assert job.status == "failed"
    error = job.error or ""
    assert error.startswith("FloatingPointError: the ArcFace loss became nan at epoch 1; lower lr\n"), error
    # No traceback for the caller: an error id that finds it in the worker's log.
    assert "Traceback" not in error
    error_id = error.rsplit("(error ", 1)[1].split(":", 1)[0]
    log = "".join(p.read_text() for p in stack.home.glob("worker-*.log"))
    logged = log[log.index(f"job {nan_job} failed with error {error_id}:") :]
    assert "Traceback (most recent call last)" in logged and "train_embedding" in logged
    assert [e.message for e in events(stack, nan_job) if e.type == "error"] == [error]
    assert_stays_failed(stack, nan_job)

    job = wait_row(stack, foreign_job, lambda j: j.status in ("succeeded", "failed"), timeout=60)
    assert (job.status, job.error) == ("failed", f"dataset {theirs.json()['id']} not found")
    assert_stays_failed(stack, foreign_job)
    assert stack.other.get(f"/datasets/{theirs.json()['id']}").status_code == 200  # their dataset is untouched
