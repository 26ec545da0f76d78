"""The S3 server is killed while a job uploads: retries bridge a short outage; a long one fails the job cleanly.

The server is this module's own SeaweedFS, SIGKILLed and started again on the same ports and data
folder (the shared session server is never touched).
"""

from __future__ import annotations

import pytest

from tests.support import wait_for
from tests.support.faults import (
    FAST_LEASES,
    artifacts,
    assert_artifacts_intact,
    checkpoint_step,
    events,
    metric_values,
    readiness,
    run_starts,
    wait_row,
)
from tests.support.jobs import submit
from tests.support.servers import S3Stack, TcpProxy, TripwireProxy

DURATION = 4


@pytest.mark.fault
def test_short_s3_outage_is_bridged_by_the_upload_retries(s3_stack: S3Stack) -> None:
    stack, s3 = s3_stack.stack, s3_stack.s3
    # Backoff 0.25, 0.5, 1, 2, 4, 8 s: up to 15 s of outage is waited out inside one upload.
    retries = {"FACEJOBS_STORE_RETRIES": "6", "FACEJOBS_STORE_BACKOFF_SECONDS": "0.25"}
    job_id = submit(stack, {"matmul_size": 32, "matmul_repeats": 1, "duration_seconds": DURATION})
    # The worker reaches S3 through a proxy that counts its connections: each try of an upload during
    # the outage is one connection the proxy accepts and cannot forward.
    proxy = TcpProxy(s3.ports["s3.port"])
    proxy.open()
    stack.start_worker(extra_env={**FAST_LEASES, **retries, "FACEJOBS_S3_ENDPOINT": f"127.0.0.1:{proxy.port}"})
    stopped_at = wait_row(stack, job_id, lambda j: (j.checkpoint_step or 0) >= 1).checkpoint_step
    s3.stop()
    tries_before = proxy.accepted
    wait_for(lambda: proxy.accepted >= tries_before + 2, 30, "two upload tries to fall into the outage")
    assert wait_row(stack, job_id, lambda j: True).checkpoint_step in (stopped_at, (stopped_at or 0) + 1)
    s3.start()  # same ports, same data: the blocked upload goes through on a later try

    job = wait_row(stack, job_id, lambda j: j.status in ("succeeded", "failed"), timeout=60)
    proxy.cut()
    assert (job.status, job.attempt, job.error) == ("succeeded", 1, None)
    assert job.result is not None and job.result["seconds_run"] == DURATION
    assert [e.message for e in events(stack, job_id) if e.type == "error"] == []
    assert_artifacts_intact(stack, job_id, ["probe.json"])
    assert checkpoint_step(stack, job_id) == DURATION


@pytest.mark.fault
def test_s3_gone_fails_the_job_after_its_retries_and_keeps_the_last_checkpoint(s3_stack: S3Stack) -> None:
    stack, s3 = s3_stack.stack, s3_stack.s3
    retries = {"FACEJOBS_STORE_RETRIES": "2", "FACEJOBS_STORE_BACKOFF_SECONDS": "0.3"}  # waits 0.3 s, then 0.6 s
    job_id = submit(stack, {"matmul_size": 32, "matmul_repeats": 1, "duration_seconds": DURATION}, max_attempts=2)
    stack.start_worker(extra_env={**FAST_LEASES, **retries})
    wait_row(stack, job_id, lambda j: (j.checkpoint_step or 0) >= 1)
    s3.stop()

    job = wait_row(stack, job_id, lambda j: j.status in ("succeeded", "failed"), timeout=60)
    key = f"jobs/{job_id}/checkpoint.pt"
    assert (job.status, job.attempt, job.preemptions) == ("failed", 2, 0)
    # Attempt 1 could not upload its next checkpoint and was requeued; attempt 2 could not read the last one.
    assert (job.error or "").startswith(f"TransientError: object store unavailable during download {key}: "), job.error
    assert "Traceback" not in (job.error or "")  # the traceback is in the worker's log, under the error id
    error_id = (job.error or "").rsplit("(error ", 1)[1].split(":", 1)[0]
    log = "".join(p.read_text() for p in stack.home.glob("worker-*.log"))
    assert "Traceback (most recent call last)" in log[log.index(f"job {job_id} failed with error {error_id}:") :]
    evs = events(stack, job_id)
    # (attempt, what was said, the operation that ran out of retries)
    errors = [(e.attempt, e.message.split(": ", 1)[0], e.message.split(" during ", 1)[1].split(":", 1)[0])
              for e in evs if e.type == "error"]  # fmt: skip
    assert errors == [(1, "transient error, retrying", f"upload {key}"), (2, "TransientError", f"download {key}")]
    assert len(run_starts(stack, job_id)) == 2
    # The failing upload waited out its backoff (0.3 + 0.6 s) before giving up.
    last_progress = max(e.created_at for e in evs if e.type == "progress" and e.attempt == 1)
    gave_up = next(e.created_at for e in evs if e.type == "error")
    assert (gave_up - last_progress).total_seconds() >= 0.9

    assert readiness(stack.client) == (503, {"database": True, "broker": True, "store": False})
    values = metric_values(stack.client.get("/metrics").text)
    assert values['facejobs_jobs{kind="probe",status="failed"}'] == 1
    s3.start()
    assert readiness(stack.client) == (200, {"database": True, "broker": True, "store": True})
    # The job never reached probe.json (the next test cuts the store during that upload).
    assert artifacts(stack, job_id) == []
    assert stack.store.list(f"jobs/{job_id}") == [key]
    assert checkpoint_step(stack, job_id) == job.checkpoint_step  # the recorded checkpoint is complete


@pytest.mark.fault
def test_s3_gone_during_the_artifact_upload_records_no_artifact(s3_stack: S3Stack) -> None:
    stack, s3 = s3_stack.stack, s3_stack.s3
    job_id = submit(stack, {"matmul_size": 32, "matmul_repeats": 1}, max_attempts=1)  # no checkpoints: one upload
    key = f"jobs/{job_id}/probe.json"
    # The worker reaches S3 through a proxy that stops the server the moment the artifact's PUT starts
    # (the request is not forwarded): the upload is cut after put_artifact began it, every time.
    proxy = TripwireProxy(s3.ports["s3.port"], f"PUT /{stack.settings.s3_bucket}/{key}".encode(), s3.stop)
    proxy.open()
    try:
        retries = {"FACEJOBS_STORE_RETRIES": "2", "FACEJOBS_STORE_BACKOFF_SECONDS": "0.1"}
        stack.start_worker(extra_env={**FAST_LEASES, **retries, "FACEJOBS_S3_ENDPOINT": f"127.0.0.1:{proxy.port}"})
        job = wait_row(stack, job_id, lambda j: j.status in ("succeeded", "failed"), timeout=60)
    finally:
        proxy.cut()
    assert proxy.tripped.is_set()
    assert (job.status, job.attempt) == ("failed", 1)
    assert (job.error or "").startswith(f"TransientError: object store unavailable during upload {key}: "), job.error
    s3.start()
    assert artifacts(stack, job_id) == []  # the failed upload recorded no row
    assert stack.store.list(f"jobs/{job_id}") == []  # and stored nothing
