"""`GET /jobs/{id}?wait_seconds=S`: answer when the job ends instead of being polled for it.

A client that polls pays a request (key lookup, a query, a response) per interval and reads the end
up to one interval late; on a small host the polling also takes the cores the worker needs. Here a
waiting request re-reads its job when PostgreSQL says a job ended (`jobs.states` sends
`NOTIFY facejobs_job_ended, '<id>'` in the transaction that ends it, so the wake-up comes after the
commit), and every `RECHECK_SECONDS` in any case: the embedded SQLite configuration has no NOTIFY,
and a lost listener connection must not leave a request waiting until its deadline.

One listener thread per API process holds one extra connection while any request waits, and
leaves when none has waited for `IDLE_EXIT_SECONDS`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from jobs.models import Job
from jobs.states import JOB_ENDED_CHANNEL, JobStatus

log = logging.getLogger(__name__)
RECHECK_SECONDS = 0.25  # re-read the row at least this often while waiting (SQLite, or no listener)
IDLE_EXIT_SECONDS = 30.0  # the listener thread closes its connection after this long without waiters
MAX_WAIT_SECONDS = 60.0  # the longest `wait_seconds` a request may ask for

_lock = threading.Lock()
_waiters: dict[str, set[threading.Event]] = {}
_listeners: dict[str, threading.Thread] = {}


def _listen(url: str) -> None:
    """Wake the waiters of each job id PostgreSQL announces; reconnect after errors; exit when idle."""
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    idle_since = time.monotonic()
    try:
        while time.monotonic() - idle_since < IDLE_EXIT_SECONDS:
            try:
                with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {JOB_ENDED_CHANNEL}")
                    while time.monotonic() - idle_since < IDLE_EXIT_SECONDS:
                        for note in conn.notifies(timeout=1.0):
                            with _lock:
                                for ended in _waiters.get(note.payload, ()):
                                    ended.set()
                        with _lock:
                            if _waiters:
                                idle_since = time.monotonic()
            except Exception as exc:  # waiters fall back to re-reading; try again in a second
                log.warning("job-ended listener lost its connection (%s); reconnecting", str(exc)[:200])
                time.sleep(1.0)
    finally:
        with _lock:
            _listeners.pop(url, None)


@contextlib.contextmanager
def _watch(url: str, job_id: str) -> Iterator[threading.Event]:
    """An event set when `job_id` is announced as ended, registered before the caller re-reads the row."""
    ended = threading.Event()
    with _lock:
        _waiters.setdefault(job_id, set()).add(ended)
        if url.startswith("postgresql") and url not in _listeners:
            thread = threading.Thread(target=_listen, args=(url,), name="job-ended-listener", daemon=True)
            _listeners[url] = thread
            thread.start()
    try:
        yield ended
    finally:
        with _lock:
            waiting = _waiters.get(job_id, set())
            waiting.discard(ended)
            if not waiting:
                _waiters.pop(job_id, None)


def wait_until_ended(session: Session, job: Job, url: str, seconds: float) -> None:
    """Refresh `job` until it is succeeded, failed or cancelled, or `seconds` have passed.

    The session's transaction is ended before each wait, so a waiting request holds no pooled connection.
    """
    deadline = time.monotonic() + min(seconds, MAX_WAIT_SECONDS)
    postgres = url.startswith("postgresql")
    first = True
    with _watch(url, job.id) as ended:
        while True:
            if postgres and not first:
                # A re-read after a wait is its own transaction: in autocommit it is one round trip, not
                # BEGIN, SELECT and COMMIT (the connection is set back when it returns to the pool).
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            first = False
            session.refresh(job)  # after registering: an end announced from here on is not missed
            session.commit()  # the session does not expire on commit: `job` stays readable
            left = deadline - time.monotonic()
            if JobStatus(job.status).terminal or left <= 0:
                return
            ended.wait(min(RECHECK_SECONDS, left))
            ended.clear()


def wait_for_end(session: Session, job_id: str, url: str, seconds: float) -> tuple[JobStatus, Any, str | None]:
    """(status, result, error) of job `job_id` once it has ended, or as it is after `seconds` (any length:
    `wait_until_ended` is called again past MAX_WAIT_SECONDS). For the routes that answer with a job's result."""
    job = session.get(Job, job_id)
    assert job is not None
    deadline = time.monotonic() + seconds
    while True:
        wait_until_ended(session, job, url, max(0.0, deadline - time.monotonic()))
        if JobStatus(job.status).terminal or time.monotonic() >= deadline:
            break
    out = (JobStatus(job.status), job.result, job.error)
    session.commit()
    return out
