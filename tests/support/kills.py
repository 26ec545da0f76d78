"""SIGKILL a worker (its whole process group, or only the pool child running a job) at a chosen point of a job.

`kill_each_once` drives the SIGKILL fault tests (probe and invert jobs): each job of a plan is killed
once, after a number of checkpoints, or between its last artifact and its end (`WorkerRowLock`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from sqlalchemy import select

from jobs.models import Artifact, Job, Worker
from jobs.states import renew_lease
from tests.support.faults import FAST_LEASES, TERMINAL, checkpoint_step
from tests.support.services import Stack

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
