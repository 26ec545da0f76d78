"""Workers SIGKILLed mid-job, twenty times at random points: every job resumes and succeeds, nothing doubles.

Three real Celery workers run twenty checkpointing `probe` jobs. Each job is killed exactly once, on
its first attempt, after a random number of checkpoints plus a random fraction of a second: half the
time the whole worker (its process group: a preempted machine), half the time only the pool process
running the job (a GPU process OOM-killed; Celery then redelivers the message, which the claim must
drop). The reaper requeues the job when its lease expires and another worker process resumes it from
the checkpoint the dead one left. A quarter of the jobs are killed in the other window instead: after
their artifact is recorded and before the job finishes (`WorkerRowLock`), so "nothing doubles" is
tested where a resumed attempt records the same artifact again.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from jobs.models import Artifact, Job, Worker
from jobs.states import renew_lease
from tests.fault.support import (
    FAST_LEASES,
    TERMINAL,
    assert_artifacts_intact,
    checkpoint_step,
    events,
    metric_values,
    run_starts,
    submit,
)
from tests.services import Stack

N_JOBS, N_WORKERS, DURATION = 20, 3, 5
SEED = 8
LEASE_SECONDS = int(FAST_LEASES["FACEJOBS_LEASE_SECONDS"])
SETTLE_SECONDS = 1.0  # after a kill, before reading what the dead process left in the store
DEADLINE_SECONDS = 240


def pool_pid(owner: str) -> int:
    """The pid of the process that holds a lease (`node/pid`)."""
    return int(owner.rsplit("/", 1)[1])


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for its parent counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def kill(stack: Stack, owner: str, whole_worker: bool) -> None:
    """SIGKILL the worker process group holding `owner`'s lease (and start a replacement), or just its pool child."""
    child = pool_pid(owner)
    group = os.getpgid(child)
    proc: subprocess.Popen[bytes] = next(p for p in stack.workers if p.pid == group)
    if whole_worker:
        os.killpg(group, signal.SIGKILL)
        proc.wait(10)
        stack.workers.remove(proc)
        stack.start_worker(extra_env=FAST_LEASES)
    else:
        os.kill(child, signal.SIGKILL)  # Celery's main process forks a new pool child
    deadline = time.monotonic() + 10
    while not gone(child):
        assert time.monotonic() < deadline, f"pool process {child} survived SIGKILL"
        time.sleep(0.02)


class WorkerRowLock:
    """Holds `SELECT ... FOR UPDATE` on a worker's row, so that process stalls after its job's last artifact.

    The runner's caller clears the worker row's current job (`_set_current`) after the runner returns and
    before it records the result; the heartbeat thread writes the same row (so `kill_each_once` renews
    the held job's lease in its place). With the row locked, a job records all its artifacts and then
    waits, still running: a kill then lands between "artifact recorded" and "job finished", every time,
    instead of by luck in a window of milliseconds.
    """

    def __init__(self, stack: Stack, owner: str) -> None:
        from jobs.db import get_engine

        self.conn = get_engine(stack.settings.resolved_database_url).connect()
        self.trans = self.conn.begin()
        node = owner.rsplit("/", 1)[0]
        assert self.conn.execute(select(Worker.id).where(Worker.id == node).with_for_update()).scalar() == node

    def release(self) -> None:
        self.trans.rollback()
        self.conn.close()


def kill_each_once(
    stack: Stack,
    ids: list[str],
    plan: dict[str, tuple[int, float, bool]],
    steps_per_checkpoint: int = 1,
    also_wait: tuple[str, ...] = (),
    deadline_seconds: float = DEADLINE_SECONDS,
    poll_seconds: float = 0.1,
    after_artifact: dict[str, str] | None = None,
) -> tuple[dict[str, float], dict[str, int]]:
    """Run until every job of `ids` and `also_wait` is terminal, killing each job of `ids` once.

    `plan[id]` = (checkpoints, jitter, whole_worker): the job's first attempt is killed `jitter`
    seconds after its checkpoint step reaches `checkpoints * steps_per_checkpoint`, the whole worker
    or only its pool child. A job in `after_artifact` (id -> the last artifact its runner records) is
    instead held before it can finish once its step reaches that point (`WorkerRowLock`), and killed
    as soon as that artifact's row exists: between its artifacts being recorded and the job finishing.
    Returns when each job was killed and the checkpoint step it left.
    """
    after_artifact = after_artifact or {}
    due: dict[str, float] = {}
    held: dict[str, tuple[WorkerRowLock, str]] = {}
    killed_at: dict[str, float] = {}
    resume_step: dict[str, int] = {}
    deadline = time.monotonic() + deadline_seconds
    try:
        while True:
            with stack.session() as s:
                rows = s.execute(
                    select(Job.id, Job.status, Job.attempt, Job.checkpoint_step, Job.lease_owner).where(
                        Job.id.in_([*ids, *also_wait])
                    )
                ).all()
                named = select(Artifact.job_id, Artifact.name).where(Artifact.job_id.in_(list(held)))
                recorded = {(job, name) for job, name in s.execute(named)}
            if all(r.status in TERMINAL for r in rows):
                return killed_at, resume_step
            assert time.monotonic() < deadline, f"jobs still not done: {[(r.id, r.status, r.attempt) for r in rows]}"
            now = time.monotonic()
            for job_id, status, attempt, step, owner in rows:
                if job_id not in plan:
                    continue
                if job_id in killed_at:
                    if job_id not in resume_step and now >= killed_at[job_id] + SETTLE_SECONDS:
                        # The lease (4 s) has not expired yet, so no new attempt has written a checkpoint.
                        assert attempt == 1, (job_id, status, attempt)
                        resume_step[job_id] = checkpoint_step(stack, job_id)
                    continue
                if job_id in held:
                    lock, held_owner = held[job_id]
                    # The stalled heartbeat thread cannot renew the lease: renew it for it, so the job is
                    # still this attempt's when its artifacts are in, however long the runner takes.
                    with stack.session() as s:
                        assert renew_lease(s, job_id, 1, held_owner, LEASE_SECONDS) == (True, False), job_id
                    if (job_id, after_artifact[job_id]) in recorded:
                        assert (status, attempt) == ("running", 1), (job_id, status, attempt)  # recorded, unfinished
                        kill(stack, held_owner, plan[job_id][2])
                        killed_at[job_id] = time.monotonic()
                        lock.release()
                        del held[job_id]
                    continue
                if status != "running" or attempt != 1 or owner is None:
                    continue
                after_checkpoints, jitter, whole_worker = plan[job_id]
                if (step or 0) >= after_checkpoints * steps_per_checkpoint:
                    if job_id in after_artifact:
                        held[job_id] = (WorkerRowLock(stack, owner), owner)
                        continue
                    due.setdefault(job_id, now + jitter)
                if job_id in due and now >= due[job_id]:
                    kill(stack, owner, whole_worker)
                    killed_at[job_id] = time.monotonic()
            time.sleep(poll_seconds)
    finally:
        for lock, _ in held.values():
            lock.release()


@pytest.mark.fault
@pytest.mark.slow
def test_twenty_random_sigkills_every_job_resumes_and_succeeds_once(services_stack: Stack) -> None:
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
