"""The Celery app as both sides see it: configuration, and sending a job's message.

The API sends by task name (it never imports the workers' code or torch); workers add their tasks
and process hooks in `workers.celery_app`. Settings follow DESIGN.md for hour-long GPU jobs: late
acks, prefetch 1, reject on worker loss, and a visibility timeout above the longest job, set in
every place Celery reads it.
"""

from __future__ import annotations

import logging
import socket
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from celery import Celery

from jobs.redact import redact_url
from jobs.settings import Settings, get_settings

log = logging.getLogger(__name__)
QUEUES = ("gpu", "cpu")


def task_name(kind: str) -> str:
    return f"facejobs.{kind}"


def redis_reachable(url: str, timeout: float = 0.5) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_broker_url(settings: Settings) -> str:
    """The configured broker, or the embedded SQLite broker when Redis is down and fallback is on."""
    url = settings.broker_url
    redis = url.startswith(("redis://", "rediss://"))
    if redis and settings.broker_fallback_embedded and not redis_reachable(url):
        log.warning("Redis at %s is not reachable: using the embedded SQLite broker", redact_url(url))
        return settings.embedded_broker_url
    return url


def _use_fast_sqla_polling(settings: Settings) -> None:
    # kombu passes the `polling_interval` transport option to create_engine by mistake, so the
    # class attribute is the only way to poll faster than once a second.
    from kombu.transport import sqlalchemy as sqla_transport

    sqla_transport.Transport.polling_interval = settings.broker_poll_seconds


def celery_config(settings: Settings, broker_url: str) -> dict[str, Any]:
    transport_options: dict[str, Any] = {}
    if broker_url.startswith(("redis://", "rediss://")):
        transport_options = {
            "visibility_timeout": settings.visibility_timeout_seconds,
            "queue_order_strategy": "priority",
        }
        if settings.broker_key_prefix:
            transport_options["global_keyprefix"] = settings.broker_key_prefix
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport_options,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": "gpu",
        "task_create_missing_queues": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_max_tasks_per_child": settings.max_tasks_per_child,
        # Off unless FACEJOBS_TASK_EVENTS: Flower and `celery events` need them (see the setting for the cost).
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "enable_utc": True,
    }


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    broker_url = resolve_broker_url(settings)
    if broker_url.startswith("sqla+"):
        settings.home.mkdir(parents=True, exist_ok=True)
        _use_fast_sqla_polling(settings)
    app = Celery("facejobs")
    app.conf.update(celery_config(settings, broker_url))
    return app


@lru_cache(maxsize=1)
def get_celery() -> Celery:
    return make_celery()


def enqueue(job_id: str, kind: str, queue: str, priority: int = 0, app: Celery | None = None) -> None:
    """Send the job's message: the job id is the task id and the only (JSON) argument."""
    app = app or get_celery()
    app.send_task(task_name(kind), args=[job_id], task_id=job_id, queue=queue, priority=priority)


def queue_size(queue: str, app: Celery | None = None) -> int:
    """Messages waiting in `queue` (not counting those delivered to a worker); raises if the broker is down."""
    app = app or get_celery()
    with app.connection_for_write() as conn:
        # Not passive: kombu's passive check on Redis ignores `global_keyprefix` and reports no queue.
        # Declaring is harmless on both transports facejobs uses (Redis: nothing; SQLAlchemy: the queue row).
        return int(conn.default_channel.queue_declare(queue=queue).message_count)
