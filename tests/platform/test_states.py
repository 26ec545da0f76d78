"""The job lifecycle's compare-and-swap helpers, on PostgreSQL and on SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from jobs.db import session_scope
from jobs.models import Job, JobEvent, Worker
from jobs.states import (
    JobStatus,
    TransitionError,
    check_transition,
    claim,
    claim_running,
    fenced_update,
    finish,
    reap_expired,
    renew_lease,
    request_cancel,
    requeue,
    retry,
    utcnow,
)
from tests.support.factories import make_job, make_key


def _new_job(url: str, **values: object) -> str:
    with session_scope(url) as s:
        return make_job(s, make_key(s), **values).id


def test_claim_is_exclusive_and_counts_attempts(db_url: str) -> None:
    job_id = _new_job(db_url)
    with session_scope(db_url) as s:
        assert claim(s, job_id, "w1/1", 60) == 1
    with session_scope(db_url) as s:
        assert claim(s, job_id, "w2/2", 60) is None  # a duplicate message loses
        job = s.get(Job, job_id)
        assert (job.status, job.attempt, job.lease_owner) == (JobStatus.RUNNING, 1, "w1/1")


def test_claim_running_writes_its_event_and_the_worker_row_only_when_it_wins(db_url: str) -> None:
    job_id = _new_job(db_url)
    with session_scope(db_url) as s:
        for node in ("n1@h", "n2@h"):
            s.add(Worker(id=node, hostname="h", pid=1, queues="gpu"))
    with session_scope(db_url) as s:
        job = claim_running(s, job_id, "n1@h/7", 60, "n1@h")
        assert job is not None and (job.id, job.status, job.attempt, job.lease_owner) == (
            job_id, JobStatus.RUNNING, 1, "n1@h/7",
        )  # fmt: skip
    with session_scope(db_url) as s:
        assert claim_running(s, job_id, "n2@h/8", 60, "n2@h") is None  # a duplicate message loses, writes nothing
    with session_scope(db_url) as s:
        events = s.execute(select(JobEvent.attempt, JobEvent.type, JobEvent.message).where(JobEvent.job_id == job_id))
        assert [tuple(e) for e in events] == [(1, "status", "running on n1@h/7 (attempt 1)")]
        assert (s.get(Worker, "n1@h").current_job_id, s.get(Worker, "n2@h").current_job_id) == (job_id, None)


def test_writes_are_fenced_by_attempt_and_owner(db_url: str) -> None:
    job_id = _new_job(db_url)
    with session_scope(db_url) as s:
        claim(s, job_id, "w1/1", 60)
    with session_scope(db_url) as s:
        assert renew_lease(s, job_id, 1, "w2/2", 60) == (False, False)
        assert renew_lease(s, job_id, 2, "w1/1", 60) == (False, False)
        assert renew_lease(s, job_id, 1, "w1/1", 60, progress_step=5) == (True, False)
    with session_scope(db_url) as s:
        assert not finish(s, job_id, 1, "w2/2", JobStatus.SUCCEEDED)
        assert finish(s, job_id, 1, "w1/1", JobStatus.SUCCEEDED, result={"x": 1})
        job = s.get(Job, job_id)
        assert (job.status, job.progress_step, job.result, job.lease_owner) == (
            JobStatus.SUCCEEDED,
            5,
            {"x": 1},
            None,
        )


def test_cancel_queued_is_immediate_and_running_is_flagged(db_url: str) -> None:
    queued, running = _new_job(db_url), _new_job(db_url)
    with session_scope(db_url) as s:
        claim(s, running, "w/1", 60)
    with session_scope(db_url) as s:
        assert request_cancel(s, queued) == JobStatus.CANCELLED
        assert request_cancel(s, running) == JobStatus.RUNNING
        assert request_cancel(s, "0" * 32) is None
    with session_scope(db_url) as s:
        assert claim(s, queued, "w/1", 60) is None  # a cancelled job never starts
        assert renew_lease(s, running, 1, "w/1", 60) == (True, True)


def test_reaper_requeues_expired_leases_then_fails_after_max_attempts(db_url: str) -> None:
    job_id = _new_job(db_url, max_attempts=2)
    later = utcnow() + timedelta(seconds=120)
    for attempt in (1, 2):
        with session_scope(db_url) as s:
            assert claim(s, job_id, f"w{attempt}/1", 60) == attempt
        with session_scope(db_url) as s:
            assert reap_expired(s, utcnow()) == ([], [])  # lease still valid
            requeued, failed = reap_expired(s, later)
        expected = ([job_id], []) if attempt == 1 else ([], [job_id])
        assert (requeued, failed) == expected
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.attempt, job.reaped) == (JobStatus.FAILED, 2, 2)
        assert "2 attempts are spent" in job.error


def test_preemption_does_not_use_up_attempts_and_retry_resets_budget(db_url: str) -> None:
    job_id = _new_job(db_url, max_attempts=1)
    with session_scope(db_url) as s:
        claim(s, job_id, "w/1", 60)
    with session_scope(db_url) as s:
        assert requeue(s, job_id, 1, "w/1", preempted=True)
    with session_scope(db_url) as s:
        assert claim(s, job_id, "w/1", 60) == 2
    with session_scope(db_url) as s:
        assert reap_expired(s, utcnow() + timedelta(seconds=120)) == ([], [job_id])
    with session_scope(db_url) as s:
        assert retry(s, job_id)
        assert not retry(s, job_id)  # already queued
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.attempt_base, job.preemptions, job.error) == (JobStatus.QUEUED, 1, 1, None)
        assert claim(s, job_id, "w/1", 60) == 3
    with session_scope(db_url) as s:
        # attempt 3 is the first of the new budget: the reaper requeue would exceed max_attempts=1
        assert reap_expired(s, utcnow() + timedelta(seconds=120)) == ([], [job_id])


def test_transition_table_refuses_leaving_succeeded() -> None:
    check_transition(JobStatus.RUNNING, JobStatus.QUEUED)
    with pytest.raises(TransitionError, match="from succeeded to queued"):
        check_transition(JobStatus.SUCCEEDED, JobStatus.QUEUED)


def test_non_finite_numbers_in_results_and_metrics_are_stored_as_null(db_url: str) -> None:
    # JSON has no Infinity or NaN (PostgreSQL refuses them): a perfect reconstruction's PSNR is inf.
    job_id = _new_job(db_url)
    with session_scope(db_url) as s:
        claim(s, job_id, "w1/1", 60)
    with session_scope(db_url) as s:
        assert fenced_update(s, job_id, 1, "w1/1", metrics={"loss": float("nan"), "step": 3.0})
    result = {"gradient": {"psnr": float("inf"), "ssim": 1.0, "per_image": [float("-inf"), 20.5]}, "n": 2}
    with session_scope(db_url) as s:
        assert finish(s, job_id, 1, "w1/1", JobStatus.SUCCEEDED, result=result)
    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        assert job.metrics == {"loss": None, "step": 3.0}
        assert job.result == {"gradient": {"psnr": None, "ssim": 1.0, "per_image": [None, 20.5]}, "n": 2}
