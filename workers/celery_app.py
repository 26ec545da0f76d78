"""The workers' Celery app: the shared configuration plus tasks and process hooks.

Heavy things (torch, CUDA, database pools) are created after the prefork pool forks, in
`worker_process_init`; the main process only keeps the worker row, the reaper and the drain flag.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import signals
from sqlalchemy import delete

from jobs.broker import make_celery
from jobs.db import dispose_engines, session_scope
from jobs.models import Worker
from jobs.settings import get_settings
from jobs.states import utcnow
from jobs.store import reset_stores
from workers.heartbeat import process_heartbeat

log = logging.getLogger(__name__)
app = make_celery()
# A pool child that applies deterministic mode imports torch in `worker_process_init`; Celery's 4 s
# default for a child to come up is less than that import takes on a busy host.
app.conf.worker_proc_alive_timeout = 120.0
DRAIN = threading.Event()  # set in this process when the worker is told to shut down
_main_threads: list[Any] = []

import workers.tasks  # noqa: E402,F401  (registers one task per kind on `app`)


def _node(sender: Any) -> str:
    return getattr(sender, "hostname", None) or f"facejobs@{socket.gethostname()}"


def _device_name() -> str:
    """What the worker row shows; read from the settings, never by asking CUDA in the parent before the fork."""
    settings = get_settings()
    if settings.device == "cpu":
        return "cpu"
    visible = settings.cuda_visible_devices
    if visible not in (None, "", "-1"):
        return f"cuda (CUDA_VISIBLE_DEVICES={visible})"
    return "cuda" if settings.device == "cuda" else "cpu"


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Pools and clients inherited from the parent must not be shared across the fork.
    dispose_engines()
    reset_stores()
    if get_settings().deterministic:
        # Before any CUDA work of this process: cuBLAS reads its workspace setting when CUDA starts.
        from ml.core.determinism import set_deterministic

        set_deterministic(True)
        log.info("deterministic mode on in worker process %s", os.getpid())


@signals.worker_ready.connect
def _register_worker(sender: Any = None, **_: Any) -> None:
    from workers.reaper import ReaperThread

    settings = get_settings()
    node = _node(sender)
    queues = ",".join(sorted(q.name for q in sender.app.amqp.queues.consume_from.values())) if sender else ""
    with session_scope() as s:
        w = s.get(Worker, node) or Worker(id=node, hostname=socket.gethostname(), pid=os.getpid(), queues=queues)
        w.pid, w.queues, w.device = os.getpid(), queues, _device_name()
        w.draining, w.current_job_id, w.started_at, w.last_heartbeat = False, None, utcnow(), utcnow()
        s.merge(w)
    # The process's one heartbeat (workers/heartbeat.py): the row stays fresh while idle; jobs this
    # process runs itself (solo and threads pools) have their leases renewed by the same thread.
    _main_threads.append(process_heartbeat(node, settings.heartbeat_seconds, settings.resolved_database_url))
    if settings.run_reaper:
        reaper = ReaperThread(settings)
        reaper.start()
        _main_threads.append(reaper)
    log.info("worker %s ready on queues %s", node, queues)


@signals.worker_shutting_down.connect
def _drain(sender: Any = None, **_: Any) -> None:
    """Tell running jobs (here and in pool children) to checkpoint and requeue."""
    DRAIN.set()
    node = sender if isinstance(sender, str) else _node(sender)
    try:
        with session_scope() as s:
            w = s.get(Worker, node)
            if w is not None:
                w.draining = True
    except Exception:
        log.exception("could not mark worker %s as draining", node)


@signals.worker_shutdown.connect
def _unregister(sender: Any = None, **_: Any) -> None:
    for t in _main_threads:
        t.stopped.set()
    try:
        with session_scope() as s:
            s.execute(delete(Worker).where(Worker.id == _node(sender)))
    except Exception:
        log.exception("could not remove the worker row")
