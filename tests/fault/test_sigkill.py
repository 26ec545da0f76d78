"""Workers SIGKILLed mid-job, eight times at random points: every job resumes and succeeds, nothing doubles.

Three real Celery workers run eight checkpointing `probe` jobs. Each job is killed exactly once, on
its first attempt, after a random number of checkpoints plus a random fraction of a second: half the
time the whole worker (its process group: a preempted machine), half the time only the pool process
running the job (a GPU process OOM-killed; Celery then redelivers the message, which the claim must
drop). The reaper requeues the job when its lease expires and another worker process resumes it from
the checkpoint the dead one left. A quarter of the jobs are killed in the other window instead: after
their artifact is recorded and before the job finishes (`WorkerRowLock`), so "nothing doubles" is
tested where a resumed attempt records the same artifact again.

Eight kills rather than the twenty this test once made: what it proves is per job (each killed job
resumes once, from its own checkpoint, on another process, and records its artifact once), and the
eight cover every case the twenty did, each twice: {whole worker, pool child} x {mid-run, after the
artifact}, with the mid-run kills (seed 8) after 1, 1, 3 and 2 of the 3 possible checkpoints, while
three workers still run jobs concurrently and replacements start mid-test. The other twelve only
repeated those cases (96 s in CI with twenty; here 172 s with 20 and 80 s with 8 on a loaded machine).
"""

from __future__ import annotations

import random

import pytest

from jobs.models import Job
from tests.support.faults import (
    FAST_LEASES,
    assert_artifacts_intact,
    checkpoint_step,
    events,
    metric_values,
    run_starts,
)
from tests.support.jobs import submit
from tests.support.kills import kill_each_once
from tests.support.services import Stack

N_JOBS, N_WORKERS, DURATION = 8, 3, 5
SEED = 8


@pytest.mark.fault
@pytest.mark.slow
def test_eight_random_sigkills_every_job_resumes_and_succeeds_once(services_stack: Stack) -> None:
    stack = services_stack
    rng = random.Random(SEED)
    ids = [submit(stack, {"matmul_size": 32, "matmul_repeats": 1, "duration_seconds": DURATION})
           for _ in range(N_JOBS)]  # fmt: skip
    # Per job: kill after this many checkpoints, plus this many seconds, the whole worker or only its pool child.
    plan = {job_id: (rng.randint(1, 3), rng.uniform(0.0, 0.9), i % 2 == 0) for i, job_id in enumerate(ids)}
    # A quarter of the jobs are killed after probe.json is recorded and before the job finishes instead
    # (held from their second-to-last checkpoint on): the resumed attempt records it again, once.
    window = {job_id: "probe.json" for i, job_id in enumerate(ids) if i % 4 in (1, 2)}
    plan |= {job_id: (DURATION - 1, 0.0, plan[job_id][2]) for job_id in window}
    for _ in range(N_WORKERS):
        stack.start_worker(extra_env=FAST_LEASES)

    killed_at, resume_step = kill_each_once(stack, ids, plan, after_artifact=window)

    # Every job was killed once, at a random point (a job that finished first means this loop fell behind).
    unkilled = sorted(set(ids) - set(killed_at))
    assert not unkilled, [(j, plan[j], [(e.created_at, e.message, e.data) for e in events(stack, j)]) for j in unkilled]
    for job_id in ids:
        with stack.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
        assert (job.status, job.attempt, job.preemptions, job.reaped) == ("succeeded", 2, 0, 1), (job_id, job.error)
        assert job.result is not None and job.result["seconds_run"] == DURATION
        owners = [m.removeprefix("running on ").split(" (attempt")[0] for m in run_starts(stack, job_id)]
        assert len(owners) == 2 and owners[0] != owners[1], owners  # resumed by another worker process
        step = resume_step[job_id]
        if job_id in window:  # killed after its last checkpoint and its artifact
            assert step == DURATION, (job_id, step)
        else:
            assert plan[job_id][0] <= step < DURATION, (job_id, step)
        evs = events(stack, job_id)
        resumed = [e.message for e in evs if e.message.startswith("resumed")]
        assert resumed == [f"resumed from checkpoint at step {step}"], (job_id, resumed)
        assert [e.message for e in evs if "reaper" in e.message] == ["requeued by the reaper: lease expired"]
        # The second attempt did only the remaining seconds, each once.
        steps = [e.data["step"] for e in evs if e.type == "progress" and e.attempt == 2 and e.data["step"] > 0]
        assert steps == list(range(step + 1, DURATION + 1)), (job_id, step, steps)
        assert_artifacts_intact(stack, job_id, ["probe.json"])  # recorded exactly once, killed in the window or not
        assert stack.store.list(f"jobs/{job_id}") == [f"jobs/{job_id}/checkpoint.pt", f"jobs/{job_id}/probe.json"]
        assert checkpoint_step(stack, job_id) == DURATION

    values = metric_values(stack.client.get("/metrics").text)
    assert {k: v for k, v in values.items() if k.startswith("facejobs_jobs{")} == {
        'facejobs_jobs{kind="probe",status="succeeded"}': N_JOBS
    }
    assert (values["facejobs_job_requeues"], values["facejobs_job_attempts"], values["facejobs_job_preemptions"]) == (
        N_JOBS, 2 * N_JOBS, 0
    )  # fmt: skip
    assert values['facejobs_job_duration_seconds_count{kind="probe"}'] == N_JOBS
