"""`GET /jobs/{id}?wait_seconds=S`: the answer comes when the job ends (PostgreSQL NOTIFY, or a re-read)."""

from __future__ import annotations

import threading
from typing import Any

from api import job_wait
from jobs.states import JobStatus, claim, finish, request_cancel
from tests.support import wait_for
from tests.support.factories import add_job, key_id


def _get_in_thread(client: Any, path: str) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(client.get(path)))
    thread.start()
    return thread, answers


def test_a_waiting_read_answers_when_the_job_ends(stack: Any) -> None:
    owner = key_id(stack)
    job_id = add_job(stack, owner)
    with stack.session() as s:
        assert claim(s, job_id, "w/1", 60) == 1
    thread, answers = _get_in_thread(stack.client, f"/jobs/{job_id}?wait_seconds=60")
    wait_for(lambda: job_id in job_wait._waiters, 30, "the request waiting on its job")
    with stack.session() as s:
        assert finish(s, job_id, 1, "w/1", JobStatus.SUCCEEDED, result={"answer": 42})
    thread.join(30)
    assert not thread.is_alive()
    assert answers[0].status_code == 200, answers[0].text
    assert (answers[0].json()["status"], answers[0].json()["result"]) == ("succeeded", {"answer": 42})
    assert job_id not in job_wait._waiters

    # A queued job cancelled while a read waits on it ends that wait too.
    queued = add_job(stack, owner)
    thread, answers = _get_in_thread(stack.client, f"/jobs/{queued}?wait_seconds=60")
    wait_for(lambda: queued in job_wait._waiters, 30, "the request waiting on its job")
    with stack.session() as s:
        assert request_cancel(s, queued) == JobStatus.CANCELLED
    thread.join(30)
    assert (answers[0].status_code, answers[0].json()["status"]) == (200, "cancelled")


def test_a_waiting_read_of_an_ended_or_unfinished_job(stack: Any) -> None:
    c = stack.client
    owner = key_id(stack)
    done = add_job(stack, owner, status=JobStatus.FAILED, error="boom")
    assert (c.get(f"/jobs/{done}?wait_seconds=60").json()["status"]) == "failed"  # at once: it has ended
    queued = add_job(stack, owner)
    r = c.get(f"/jobs/{queued}?wait_seconds=0.3")  # nothing ends it: the job as it is after the wait
    assert (r.status_code, r.json()["status"]) == (200, "queued")
    assert queued not in job_wait._waiters
    r = c.get(f"/jobs/{queued}?wait_seconds=61")
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
    assert c.get(f"/jobs/{'0' * 32}?wait_seconds=1").status_code == 404
