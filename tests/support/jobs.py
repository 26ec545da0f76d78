"""Jobs through the API as a user submits them: `submit`, waiting on a job, its artifacts, its events.

`submit` is the one way a test posts a job; `wait_job_until` waits on what the API shows of it
(tests.support.faults.wait_row reads the row instead, for when the API is what is broken).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from tests import support
from tests.support.services import Stack

# Leases short enough that the platform tests see a requeue in seconds (the fault tests use 4 s:
# tests.support.faults.FAST_LEASES).
FAST_LEASES = {
    "FACEJOBS_LEASE_SECONDS": "5",
    "FACEJOBS_HEARTBEAT_SECONDS": "0.5",
    "FACEJOBS_REAPER_INTERVAL_SECONDS": "1",
    "FACEJOBS_PROGRESS_MIN_INTERVAL_SECONDS": "0.2",
}


def download(stack: Stack, path: str) -> bytes:
    """An artifact's bytes: streamed by the API (local store) or from the presigned S3 URL it redirects to."""
    resp = stack.client.get(path, follow_redirects=False)
    if stack.name == "services":
        assert resp.status_code == 307, resp.text
        resp = httpx.get(resp.headers["location"])
    assert resp.status_code == 200, resp.text
    return resp.content


def wait_job_until(
    stack: Stack, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0
) -> dict[str, Any]:
    """The job as the API shows it, once `predicate` holds for it."""

    def matching() -> dict[str, Any] | None:
        job: dict[str, Any] = stack.client.get(f"/jobs/{job_id}").json()
        return job if predicate(job) else None

    return support.wait_for(matching, timeout, f"job {job_id} to match the test's condition")


def submit(stack: Stack, params: dict[str, Any], kind: str = "probe", **extra: Any) -> str:
    """POST /jobs as the stack's key (`extra`: queue, priority, max_attempts ...); the new job's id."""
    resp = stack.client.post("/jobs", json={"kind": kind, "params": params, **extra})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def event_tuples(stack: Stack, job_id: str) -> list[tuple[int, str, str]]:
    """(attempt, type, message) of the job's status and error events, oldest first, as the API shows them."""
    data = stack.client.get(f"/jobs/{job_id}/events").json()["data"]
    return [(e["attempt"], e["type"], e["message"]) for e in data if e["type"] in ("status", "error")]


def owner_of(stack: Stack, job_id: str, attempt: int) -> str:
    """The lease owner (node/pid) of an attempt, from its "running on ..." event."""
    for a, type_, message in event_tuples(stack, job_id):
        if a == attempt and type_ == "status" and message.startswith("running on "):
            return message.removeprefix("running on ").split(" (attempt")[0]
    raise AssertionError(f"no running event for attempt {attempt} of {job_id}: {event_tuples(stack, job_id)}")


def wait_http(url: str, timeout: float = 60) -> None:
    """Return once `url` answers 200 (a server a test started is up); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout}s")
