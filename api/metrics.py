"""Prometheus metrics computed at scrape time from the database and the broker.

The database is the source of truth, so nothing is counted in the API process: each scrape asks it
(a few GROUP BY queries) and the broker (queue lengths). Every app gets its own registry, so two
apps in one process (tests) never share or double-register metrics. A source that is down is
reported as `facejobs_scrape_ok{source=...} 0` instead of failing the whole scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from celery import Celery
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select, text

from jobs.broker import QUEUES
from jobs.db import get_engine
from jobs.models import Job, Worker
from jobs.settings import Settings
from jobs.states import TERMINAL, JobStatus, utcnow

log = logging.getLogger(__name__)
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 24 * 3600.0)
REDIS_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: one list per priority step
REDIS_PRIORITY_STEPS = (0, 3, 6, 9)


def redis_queue_keys(queue: str, prefix: str) -> list[str]:
    """The Redis lists kombu keeps for `queue` (one per priority step), with the global key prefix."""
    return [prefix + (queue if p == 0 else f"{queue}{REDIS_PRIORITY_SEP}{p}") for p in REDIS_PRIORITY_STEPS]


class FacejobsCollector(Collector):
    """Jobs by status and kind, queue depth, job durations, worker heartbeat age, requeues."""

    def __init__(self, settings: Settings, broker_url: str) -> None:
        self.settings = settings
        self.broker_url = broker_url

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily("facejobs_scrape_ok", "1 when the source answered this scrape", labels=["source"])
        for source, part in (("database", self._database), ("broker", self._broker)):
            try:
                families = part()
            except Exception as exc:
                log.warning("metrics: %s unavailable: %s", source, exc)
                ok.add_metric([source], 0.0)
                continue
            ok.add_metric([source], 1.0)
            yield from families
        yield ok

    # ---- database ---------------------------------------------------------------------------
    def _duration(self, dialect: str) -> Any:
        if dialect == "postgresql":
            return func.extract("epoch", Job.finished_at - Job.started_at)
        return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0

    def _database(self) -> list[Metric]:
        engine = get_engine(self.settings.resolved_database_url)
        families: list[Metric] = []
        with engine.connect() as conn:
            jobs = GaugeMetricFamily("facejobs_jobs", "Jobs by status and kind", labels=["status", "kind"])
            for status, kind, n in conn.execute(
                select(Job.status, Job.kind, func.count()).group_by(Job.status, Job.kind)
            ):
                jobs.add_metric([str(getattr(status, "value", status)), kind], float(n))
            families.append(jobs)

            queued = GaugeMetricFamily("facejobs_jobs_queued", "Queued jobs per queue (database)", labels=["queue"])
            counts = dict(
                conn.execute(
                    select(Job.queue, func.count()).where(Job.status == JobStatus.QUEUED).group_by(Job.queue)
                ).all()
            )
            for queue in sorted(set(QUEUES) | set(counts)):
                queued.add_metric([queue], float(counts.get(queue, 0)))
            families.append(queued)

            families.append(self._durations(conn, engine.dialect.name))

            totals = conn.execute(
                select(
                    func.coalesce(func.sum(Job.reaped), 0),
                    func.coalesce(func.sum(Job.preemptions), 0),
                    func.coalesce(func.sum(Job.attempt), 0),
                )
            ).one()
            for name, doc, value in (
                ("facejobs_job_requeues", "Requeues by the reaper (expired leases), all jobs", totals[0]),
                ("facejobs_job_preemptions", "Preemptions (worker shutdowns), all jobs", totals[1]),
                ("facejobs_job_attempts", "Attempts started, all jobs", totals[2]),
            ):
                families.append(GaugeMetricFamily(name, doc, value=float(value)))

            age = GaugeMetricFamily(
                "facejobs_worker_heartbeat_age_seconds",
                "Seconds since each worker's last heartbeat",
                labels=["worker", "queues"],
            )
            now = utcnow()
            for wid, queues, beat in conn.execute(select(Worker.id, Worker.queues, Worker.last_heartbeat)):
                age.add_metric([wid, queues], max(0.0, (now - beat).total_seconds()))
            families.append(age)
        return families

    def _durations(self, conn: Any, dialect: str) -> Metric:
        d = self._duration(dialect)
        finished = (Job.status.in_(sorted(TERMINAL)), Job.started_at.is_not(None), Job.finished_at.is_not(None))
        buckets = [func.sum(case((d <= b, 1), else_=0)) for b in DURATION_BUCKETS]
        hist = HistogramMetricFamily(
            "facejobs_job_duration_seconds", "Run time of the last attempt of finished jobs", labels=["kind"]
        )
        for kind, count, total, *cum in conn.execute(
            select(Job.kind, func.count(), func.coalesce(func.sum(d), 0.0), *buckets)
            .where(*finished)
            .group_by(Job.kind)
        ):
            points = [(str(b), float(c or 0)) for b, c in zip(DURATION_BUCKETS, cum, strict=True)]
            points.append(("+Inf", float(count)))
            hist.add_metric([kind], points, float(total))
        return hist

    # ---- broker -----------------------------------------------------------------------------
    def _broker(self) -> list[Metric]:
        url = self.broker_url
        depth = GaugeMetricFamily("facejobs_queue_depth", "Messages waiting in each broker queue", labels=["queue"])
        lengths: dict[str, int] = {}
        if url.startswith(("redis://", "rediss://")):
            lengths = self._redis_lengths(url)
        elif url.startswith("sqla+"):
            lengths = self._sqla_lengths(url.removeprefix("sqla+"))
        for queue in sorted(set(QUEUES) | set(lengths)):
            depth.add_metric([queue], float(lengths.get(queue, 0)))
        return [depth]

    def _redis_lengths(self, url: str) -> dict[str, int]:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        try:
            pipe = client.pipeline(transaction=False)
            for queue in QUEUES:
                for key in redis_queue_keys(queue, self.settings.broker_key_prefix):
                    pipe.llen(key)
            values = iter(pipe.execute())
            return {q: sum(int(next(values)) for _ in REDIS_PRIORITY_STEPS) for q in QUEUES}
        finally:
            client.close()

    def _sqla_lengths(self, url: str) -> dict[str, int]:
        from sqlalchemy import create_engine, inspect

        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                if not inspect(conn).has_table("kombu_queue"):
                    return {}  # nothing was ever sent
                rows = conn.execute(
                    text(
                        "SELECT q.name, COUNT(m.id) FROM kombu_queue q LEFT JOIN kombu_message m "
                        "ON m.queue_id = q.id AND m.visible GROUP BY q.name"
                    )
                )
                return {str(name): int(n) for name, n in rows}
        finally:
            engine.dispose()


def build_registry(settings: Settings, celery: Celery) -> CollectorRegistry:
    """A fresh registry holding the facejobs collector (one per app)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FacejobsCollector(settings, str(celery.conf.broker_url)))
    return registry
