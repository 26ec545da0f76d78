"""What the fault tests share: fast leases, submitting and watching jobs, reading their side effects."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from sqlalchemy import select

from jobs.models import Artifact, Job, JobEvent
from tests.support import wait_for
from tests.support.services import Stack

# Leases short enough that a lost worker is noticed in seconds, not minutes.
FAST_LEASES = {
    "FACEJOBS_LEASE_SECONDS": "4",
    "FACEJOBS_HEARTBEAT_SECONDS": "0.5",
    "FACEJOBS_REAPER_INTERVAL_SECONDS": "1",
    "FACEJOBS_PROGRESS_MIN_INTERVAL_SECONDS": "0.2",
}
TERMINAL = ("succeeded", "failed", "cancelled")


def job_row(stack: Stack, job_id: str) -> Job:
    with stack.session() as s:
        job = s.get(Job, job_id)
        assert job is not None, job_id
        return job


def wait_row(stack: Stack, job_id: str, predicate: Callable[[Job], bool], timeout: float = 60.0) -> Job:
    """Poll the job's row (not the API: it may be the thing that is down) until `predicate` holds."""
    last: list[Job] = []

    def matching() -> Job | None:
        last[:] = [job_row(stack, job_id)]
        return last[0] if predicate(last[0]) else None

    try:
        return wait_for(matching, timeout, f"job {job_id} to match", poll=0.1)
    except AssertionError as exc:
        job = last[0]
        raise AssertionError(f"{exc}: status={job.status} attempt={job.attempt} error={job.error}") from None


def events(stack: Stack, job_id: str) -> list[JobEvent]:
    with stack.session() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def run_starts(stack: Stack, job_id: str) -> list[str]:
    """The 'running on ...' status events: one per attempt that really started."""
    return [e.message for e in events(stack, job_id) if e.type == "status" and e.message.startswith("running on ")]


def event_counts(stack: Stack) -> dict[str, Counter[str]]:
    """Per job: how many running starts, runner log lines and successes were recorded."""
    counts: dict[str, Counter[str]] = {}
    with stack.session() as s:
        for job_id, type_, message in s.execute(select(JobEvent.job_id, JobEvent.type, JobEvent.message)):
            c = counts.setdefault(job_id, Counter())
            if type_ == "status" and message.startswith("running on "):
                c["running"] += 1
            elif type_ == "status" and message == "succeeded":
                c["succeeded"] += 1
            elif type_ == "log" and "GFLOP/s" in message:
                c["probed"] += 1  # the probe runner's own side effect: once per run of its body
    return counts


def artifacts(stack: Stack, job_id: str) -> list[Artifact]:
    with stack.session() as s:
        return list(s.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def assert_artifacts_intact(stack: Stack, job_id: str, names: list[str]) -> None:
    """Exactly `names` recorded, each row matching a complete stored object byte for byte."""
    rows = artifacts(stack, job_id)
    assert [a.name for a in rows] == names, (job_id, [a.name for a in rows])
    for art in rows:
        data = stack.store.get_bytes(art.key)
        assert (len(data), hashlib.sha256(data).hexdigest()) == (art.size, art.sha256), (job_id, art.name)


def checkpoint_step(stack: Stack, job_id: str) -> int:
    """The step inside the stored checkpoint object (what a new attempt will resume from)."""
    state = torch.load(io.BytesIO(stack.store.get_bytes(f"jobs/{job_id}/checkpoint.pt")), weights_only=True)
    return int(state["step"])


def metric_values(text: str) -> dict[str, float]:
    """`{'name{labels}': value}` of a Prometheus text exposition."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def readiness(client: Any) -> tuple[int, dict[str, bool]]:
    """`/readyz` through `client`: the status code and each component's verdict."""
    r = client.get("/readyz")
    return r.status_code, {name: c["ok"] for name, c in r.json()["components"].items()}
