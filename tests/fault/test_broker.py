"""The broker loses its messages: Redis crashes with 200 jobs in flight, and the reaper's lost-message rule."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from jobs.broker import queue_size
from jobs.models import Artifact, Job
from jobs.states import JobStatus, utcnow
from tests.support import wait_for
from tests.support.factories import add_job, key_id, old
from tests.support.faults import FAST_LEASES, event_counts, metric_values, readiness
from tests.support.servers import RedisStack
from workers.reaper import reap_once

N_JOBS, N_WORKERS = 200, 2
STALE_SECONDS = 2


def status_counts(stack: Any) -> Counter[str]:
    with stack.session() as s:
        return Counter({str(st.value): n for st, n in s.execute(select(Job.status, func.count()).group_by(Job.status))})


def wait_counts(stack: Any, predicate: Any, timeout: float) -> Counter[str]:
    seen: list[Counter[str]] = []

    def matching() -> Counter[str] | None:
        seen[:] = [status_counts(stack)]
        return seen[0] if predicate(seen[0]) else None

    try:
        return wait_for(matching, timeout, "job statuses to match", poll=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: stuck at {dict(seen[0])}") from None


@pytest.mark.fault
@pytest.mark.slow
def test_redis_crash_with_200_jobs_in_flight_loses_none_and_runs_none_twice(redis_stack: RedisStack) -> None:
    stack, redis = redis_stack.stack, redis_stack.redis
    params = {"matmul_size": 16, "matmul_repeats": 1}
    ids = {str(r.json()["id"]) for r in (stack.client.post("/jobs", json={"kind": "probe", "params": params})
                                          for _ in range(N_JOBS))}  # fmt: skip
    assert len(ids) == N_JOBS
    assert queue_size("gpu") == N_JOBS
    env = {**FAST_LEASES, "FACEJOBS_REQUEUE_STALE_QUEUED_SECONDS": str(STALE_SECONDS)}
    for _ in range(N_WORKERS):
        stack.start_worker(extra_env=env)
    wait_counts(stack, lambda c: c["succeeded"] >= 20, timeout=90)

    redis.crash()  # no persistence: every queued and every unacked message is gone
    with stack.session() as s:
        lost = set(s.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED)))
    assert len(lost) >= N_JOBS // 2, len(lost)  # the crash hit while most jobs were still waiting
    assert readiness(stack.client) == (503, {"database": True, "broker": False, "store": True})  # it is down
    restarted = utcnow()
    redis.start()  # empty: the reapers must notice the queued jobs' messages are gone
    assert readiness(stack.client) == (200, {"database": True, "broker": True, "store": True})

    counts = wait_counts(stack, lambda c: c["succeeded"] + c["failed"] + c["cancelled"] == N_JOBS, timeout=150)
    assert counts == Counter({"succeeded": N_JOBS})
    # Reapers may have re-sent a job twice (each worker runs one): the workers take those duplicates too.
    wait_for(lambda: queue_size("gpu") == 0, 30, "the workers to take the re-sent duplicates")
    with stack.session() as s:
        resent = set(s.scalars(select(Job.id).where(Job.id.in_(lost), Job.enqueued_at > restarted)))
        attempts = Counter(s.scalars(select(Job.attempt)))
    # Each worker may have held one delivered message that it claimed after the crash: those needed no re-send.
    assert len(lost - resent) <= N_WORKERS, len(lost - resent)
    assert attempts == Counter({1: N_JOBS})
    # Side effects, after every duplicate was dropped by the claim: each job started once, ran its body
    # once, succeeded once and stored one artifact.
    per_job = event_counts(stack)
    assert set(per_job) == ids
    assert {j: dict(c) for j, c in per_job.items() if c != Counter(running=1, probed=1, succeeded=1)} == {}
    with stack.session() as s:
        recorded = Counter((job, name) for job, name in s.execute(select(Artifact.job_id, Artifact.name)))
    assert recorded == Counter({(job_id, "probe.json"): 1 for job_id in ids})  # every job's, once
    values = metric_values(stack.client.get("/metrics").text)
    assert values['facejobs_jobs{kind="probe",status="succeeded"}'] == N_JOBS
    assert (values['facejobs_queue_depth{queue="gpu"}'], values['facejobs_jobs_queued{queue="gpu"}']) == (0, 0)


@pytest.mark.fault
def test_reaper_resends_stale_queued_jobs_only_when_their_queue_is_empty(stack: Any) -> None:
    owner = key_id(stack)
    settings = stack.settings.model_copy(update={"requeue_stale_queued_seconds": 30})
    lost = add_job(stack, owner, enqueued_at=old(60), priority=3)
    fresh = add_job(stack, owner, enqueued_at=old(5))
    running = add_job(stack, owner, status=JobStatus.RUNNING, attempt=1, enqueued_at=old(60),
                      lease_owner="w/1", lease_expires_at=utcnow().replace(year=2100))  # fmt: skip
    never_sent = add_job(stack, owner, created_at=old(60))  # enqueued_at NULL: the older rule
    assert queue_size("gpu") == 0

    report = reap_once(settings)
    assert (sorted(report.resent), report.requeued, report.failed) == (sorted([lost, never_sent]), [], [])
    assert queue_size("gpu") == 2
    if stack.name == "services":  # re-sent with the job's own priority (kombu keeps one Redis list per step)
        import redis

        client = redis.Redis.from_url(stack.settings.broker_url)
        assert client.llen(f"{stack.settings.broker_key_prefix}gpu\x06\x163") == 1
        client.close()
    with stack.session() as s:
        assert s.get(Job, lost).enqueued_at > old(5)  # re-sent now: not again before another 30 s
        assert s.get(Job, running).status == JobStatus.RUNNING
    assert reap_once(settings).resent == []

    # A queue that still holds messages has a backlog, not lost messages: nothing is duplicated into it.
    backlog = add_job(stack, owner, enqueued_at=old(60))
    assert reap_once(settings).resent == []
    # Once it is empty (the two messages taken, their jobs not claimed), only the job that has waited
    # since long before is re-sent: the two re-sent a moment ago are not stale yet.
    assert _drain() == 2 and queue_size("gpu") == 0
    assert reap_once(settings).resent == [backlog]
    assert queue_size("gpu") == 1
    assert fresh not in reap_once(settings).resent


def _drain() -> int:
    """Take every message off the `gpu` queue, as workers would (without running anything)."""
    from jobs.broker import get_celery

    n = 0
    with get_celery().connection_for_write() as conn:
        queue = conn.SimpleQueue("gpu", no_ack=True)
        try:
            while True:
                try:
                    queue.get(timeout=0.5)
                except queue.Empty:
                    return n
                n += 1
        finally:
            queue.close()
