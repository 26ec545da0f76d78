"""Liveness, readiness (database, broker and store checked separately) and Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import create_engine, text

from api.deps import CeleryDep, SettingsDep
from api.schemas import ComponentStatus, Health, Readiness
from jobs.db import get_engine
from jobs.settings import Settings
from jobs.store import get_store

router = APIRouter(tags=["health"])
CHECK_TIMEOUT_SECONDS = 3
ERROR_CHARS = 300


def check_database(settings: Settings) -> None:
    with get_engine(settings.resolved_database_url).connect() as conn:
        conn.execute(text("SELECT 1"))


def check_broker(url: str) -> None:
    """PING Redis, or open the embedded broker's database, or connect with kombu."""
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(
            url, socket_connect_timeout=CHECK_TIMEOUT_SECONDS, socket_timeout=CHECK_TIMEOUT_SECONDS
        )
        try:
            client.ping()
        finally:
            client.close()
    elif url.startswith("sqla+"):
        engine = create_engine(url.removeprefix("sqla+"))
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    else:
        from kombu import Connection

        with Connection(url, connect_timeout=CHECK_TIMEOUT_SECONDS) as conn:
            conn.ensure_connection(max_retries=1)


def check_store(settings: Settings) -> None:
    get_store(settings).ping()


def _timed(check: Callable[[], None]) -> ComponentStatus:
    start = time.perf_counter()
    try:
        check()
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
        return ComponentStatus(ok=False, error=message, seconds=round(time.perf_counter() - start, 4))
    return ComponentStatus(ok=True, seconds=round(time.perf_counter() - start, 4))


@router.get("/healthz", response_model=Health)
def read_health() -> Health:
    """Liveness: the process answers (no dependency is checked)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def read_readiness(settings: SettingsDep, celery: CeleryDep) -> JSONResponse:
    """Readiness: database, broker and store, each checked on its own; 503 if any is down."""
    checks: dict[str, Callable[[], None]] = {
        "database": lambda: check_database(settings),
        "broker": lambda: check_broker(str(celery.conf.broker_url)),
        "store": lambda: check_store(settings),
    }
    # Concurrently: a dead component that times out must not delay the others' answers.
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        futures = {name: pool.submit(_timed, check) for name, check in checks.items()}
        components = {name: f.result() for name, f in futures.items()}
    ready = all(c.ok for c in components.values())
    body = Readiness(status="ok" if ready else "unavailable", components=components)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def read_metrics(request: Request) -> Response:
    """Prometheus metrics, computed from the database and the broker at scrape time."""
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
