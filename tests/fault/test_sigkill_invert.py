"""Eight `invert` jobs, each SIGKILLed once at a random point: every one resumes and ends bit-for-bit.

The checkpointing job is the real one now: a tiny ArcFace model is trained by a `train_embedding`
job, then nine inversions of it with the same seed run on three real Celery workers. Eight are
killed once on their first attempt, after a random number of checkpoints plus a random fraction of a
second, half the time the whole worker (a preempted machine), half the time only its pool process
(an OOM-killed GPU process); the ninth runs untouched as the reference. Each killed job must be
requeued by the reaper, resumed on another worker process from the checkpoint the dead one left, and
end with the reference's images (to 1e-5), the same artifacts recorded once each, and attempt 2. A
quarter of them are killed after all their artifacts are recorded and before the job finishes (see
`WorkerRowLock` in test_sigkill.py), so the resumed attempt records every name a second time.

Eight kills rather than the twenty this test once made: every assertion is per job, and the eight
cover each case the twenty did, twice: {whole worker, pool child} x {mid-run, after the artifacts}.
The seed (22) puts the four mid-run kills after 2, 3, 1 and 4 checkpoints (of the 1-4 drawn), so
early and late resumes are both checked against the reference; three workers still run jobs side by
side and replacement workers start mid-test. The other twelve only repeated those cases, at the
cost of most of the test's time (264 s in CI with twenty; here 514 s with 20 and 288 s with 8 on a
loaded shared machine).
"""

from __future__ import annotations

import io
import random
from typing import Any

import pytest
import torch

from jobs.models import Job
from tests.support.factories import TINY_ARCFACE
from tests.support.faults import FAST_LEASES, assert_artifacts_intact, events, run_starts
from tests.support.jobs import submit
from tests.support.kills import kill_each_once
from tests.support.services import Stack

N_JOBS, N_WORKERS, SEED = 8, 3, 22
DEADLINE_SECONDS = 600
CHECKPOINT_EVERY, ITERATIONS = 20, 200
TINY_MODEL = TINY_ARCFACE
INVERT: dict[str, Any] = {
    "images_per_class": 1,
    "iterations": ITERATIONS,
    "checkpoint_every": CHECKPOINT_EVERY,
    "preview_every": 100,
    "flip": True,
    "jitter": 2,
    "lambda_bn": 0.01,
    "bn_form": "l2",
    "seed": 3,
}


def tensors(stack: Stack, job_id: str) -> dict[str, Any]:
    data = stack.store.get_bytes(f"jobs/{job_id}/tensors.pt")
    out: dict[str, Any] = torch.load(io.BytesIO(data), weights_only=True)
    return out


def artifact_names(stack: Stack, job_id: str) -> list[str]:
    return [a["name"] for a in stack.client.get(f"/jobs/{job_id}/artifacts").json()]


@pytest.mark.fault
@pytest.mark.slow
def test_eight_random_sigkills_of_inversions_resume_to_the_uninterrupted_images(services_stack: Stack) -> None:
    stack = services_stack
    model_job = submit(stack, TINY_MODEL, kind="train_embedding")
    stack.start_worker(name="trainer", extra_env=FAST_LEASES)
    trained = stack.wait_job(model_job, timeout=240)
    stack.stop_workers()
    assert trained["status"] == "succeeded", trained

    params = {**INVERT, "model": f"job:{model_job}"}
    reference = submit(stack, params, kind="invert")
    ids = [submit(stack, params, kind="invert") for _ in range(N_JOBS)]
    rng = random.Random(SEED)
    # Per job: kill after this many checkpoints, plus this many seconds, the whole worker or only its pool child.
    plan = {job_id: (rng.randint(1, 4), rng.uniform(0.0, 0.5), i % 2 == 0) for i, job_id in enumerate(ids)}
    # A quarter are killed after recording all their artifacts (metrics.json is the last) and before
    # finishing instead, held from their last checkpoint on: the resumed attempt records each again, once.
    window = {job_id: "metrics.json" for i, job_id in enumerate(ids) if i % 4 in (1, 2)}
    plan |= {job_id: (ITERATIONS // CHECKPOINT_EVERY - 1, 0.0, plan[job_id][2]) for job_id in window}
    for _ in range(N_WORKERS):
        stack.start_worker(extra_env=FAST_LEASES)

    killed_at, resume_step = kill_each_once(
        stack, ids, plan, CHECKPOINT_EVERY, also_wait=(reference,), deadline_seconds=DEADLINE_SECONDS,
        poll_seconds=0.05, after_artifact=window,
    )  # fmt: skip

    ref_job = stack.client.get(f"/jobs/{reference}").json()
    assert (ref_job["status"], ref_job["attempt"]) == ("succeeded", 1), ref_job
    ref = tensors(stack, reference)
    ref_names = sorted(artifact_names(stack, reference))
    assert ref_names == sorted(["grid.png", "metrics.json", "previews/grid.png", "tensors.pt",
                                *(f"images/{digit}_0.png" for digit in range(10))])  # fmt: skip

    unkilled = sorted(set(ids) - set(killed_at))
    assert not unkilled, [(j, plan[j]) for j in unkilled]  # a job that finished first: this loop fell behind
    for job_id in ids:
        with stack.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
        assert (job.status, job.attempt, job.preemptions, job.reaped) == ("succeeded", 2, 0, 1), (job_id, job.error)
        owners = [m.removeprefix("running on ").split(" (attempt")[0] for m in run_starts(stack, job_id)]
        assert len(owners) == 2 and owners[0] != owners[1], owners  # resumed by another worker process
        step = resume_step[job_id]
        if job_id in window:  # killed after its artifacts: the last checkpoint was at step 180
            assert step == ITERATIONS - CHECKPOINT_EVERY, (job_id, step)
        else:
            assert plan[job_id][0] * CHECKPOINT_EVERY <= step < ITERATIONS, (job_id, step)
            assert step % CHECKPOINT_EVERY == 0, (job_id, step)
        resumed = [e.message for e in events(stack, job_id) if e.message.startswith("resumed")]
        assert resumed == [f"resumed from checkpoint at step {step}"], (job_id, resumed)
        # The killed-and-resumed run ends exactly where the untouched one did.
        got = tensors(stack, job_id)
        assert torch.equal(got["labels"], ref["labels"]) and got["classes"] == ref["classes"]
        assert torch.allclose(got["images"], ref["images"], atol=1e-5, rtol=0), (
            job_id, step, float((got["images"] - ref["images"]).abs().max())
        )  # fmt: skip
        # Every artifact recorded once (also where the kill came after all were recorded), each row
        # matching a complete stored object.
        assert sorted(artifact_names(stack, job_id)) == ref_names, job_id
        assert_artifacts_intact(stack, job_id, ref_names)
