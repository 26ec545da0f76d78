"""Real services for the platform tests: PostgreSQL, Redis and an S3 server, plus the embedded stack.

Loaded as a pytest plugin from tests/conftest.py. Every resource is created by this test session
and removed by it: its own PostgreSQL database, its own Redis key prefix (in db 11), its own S3
server and bucket. Nothing here drops what the session did not create.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from tests.support.s3server import S3Server, start_s3

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/11"
REPO = Path(__file__).resolve().parents[2]
TABLES = ("job_events", "job_deps", "artifacts", "jobs", "datasets", "models", "workers", "api_keys")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session."""
    from jobs.migrate import upgrade

    name = f"facejobs_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    upgrade(url)
    yield url
    from jobs.db import dispose_engines

    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this session's own; its keys are deleted at the end."""
    import redis

    prefix = f"facejobs-test-{os.getpid()}-{secrets.token_hex(3)}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


def reset_process_state() -> None:
    """Forget every cached setting, engine, store and Celery app (after changing the environment)."""
    from jobs.broker import get_celery
    from jobs.db import dispose_engines
    from jobs.settings import get_settings
    from jobs.store import reset_stores

    dispose_engines()
    reset_stores()
    get_settings.cache_clear()
    get_celery.cache_clear()


@dataclass
class Stack:
    """One configuration of facejobs with its own database, broker and store."""

    name: str
    env: dict[str, str]
    home: Path
    settings: Any = None
    key: str = ""
    other_key: str = ""
    client: Any = None
    other: Any = None
    app: Any = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def store(self) -> Any:
        from jobs.store import get_store

        return get_store(self.settings)

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        from jobs.db import session_scope

        with session_scope(self.settings.resolved_database_url) as s:
            yield s

    def start_worker(self, queues: str = "gpu,cpu", name: str | None = None, extra_env: dict[str, str] | None = None,
                     log_path: Path | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
        """A real Celery worker process (prefork, one child) for this stack."""
        name = name or f"w{len(self.workers)}-{secrets.token_hex(2)}"
        log_path = log_path or self.home / f"worker-{name}.log"
        # Several workers share two cores here: one torch thread each, or their OpenMP threads spin
        # against each other (a 30x slowdown measured with three invert workers).
        env = {**os.environ, "FACEJOBS_TORCH_THREADS": "1", "FACEJOBS_DEVICE": "cpu", **self.env, **(extra_env or {}),
               "PYTHONUNBUFFERED": "1"}  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "stack.cli", "worker", "--queues", queues, "--name", name, "--concurrency", "1"],
            cwd=REPO, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.workers.clear()

    def wait_job(self, job_id: str, statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
                 timeout: float = 60.0) -> dict[str, Any]:  # fmt: skip
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.client.get(f"/jobs/{job_id}").json()
            if job.get("status") in statuses:
                return job
            time.sleep(0.2)
        logs = "\n".join(p.read_text()[-3000:] for p in self.home.glob("worker-*.log"))
        raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout}s: {job}\n{logs}")


def _services_env(pg_url: str, redis_prefix: str, s3: S3Server, home: Path) -> dict[str, str]:
    return {
        "FACEJOBS_ENV": "test",
        "FACEJOBS_HOME": str(home),
        "FACEJOBS_DATABASE_URL": pg_url,
        "FACEJOBS_BROKER_URL": REDIS_URL,
        "FACEJOBS_BROKER_KEY_PREFIX": redis_prefix + secrets.token_hex(3) + ":",
        "FACEJOBS_BROKER_FALLBACK_EMBEDDED": "false",
        "FACEJOBS_STORE_BACKEND": "s3",
        "FACEJOBS_S3_ENDPOINT": s3.endpoint,
        "FACEJOBS_S3_ACCESS_KEY": s3.access_key,
        "FACEJOBS_S3_SECRET_KEY": s3.secret_key,
        "FACEJOBS_S3_BUCKET": f"fj-{secrets.token_hex(4)}",
        "FACEJOBS_STORE_RETRIES": "2",
        "FACEJOBS_STORE_BACKOFF_SECONDS": "0.1",
    }


def _embedded_env(home: Path) -> dict[str, str]:
    return {
        "FACEJOBS_ENV": "test",
        "FACEJOBS_HOME": str(home),
        "FACEJOBS_DATABASE_URL": "",
        "FACEJOBS_BROKER_URL": f"sqla+sqlite:///{home / 'broker.db'}",
        "FACEJOBS_STORE_BACKEND": "local",
    }


def _clean_pg(url: str) -> None:
    from jobs.db import get_engine

    with get_engine(url).begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))


def build_stack(name: str, env: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch) -> Stack:
    from fastapi.testclient import TestClient

    from jobs.keys import create_key
    from jobs.migrate import upgrade
    from jobs.settings import get_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_process_state()
    stack = Stack(name=name, env=env, home=home)
    stack.settings = get_settings()
    url = stack.settings.resolved_database_url
    if url.startswith("sqlite"):
        upgrade(url)
    else:
        _clean_pg(url)
    with stack.session() as s:
        _, stack.key = create_key(s, "test")
        _, stack.other_key = create_key(s, "other")
    from api.app import create_app

    stack.app = create_app()
    stack.client = TestClient(stack.app, headers={"X-API-Key": stack.key})
    stack.other = TestClient(stack.app, headers={"X-API-Key": stack.other_key})
    return stack


def dotted_home(tmp_path: Path) -> Path:
    """A new FACEJOBS_HOME under a dotted folder, as real homes are (`~/.cache/...`, a checkout's `.facejobs/`).

    Workers cache datasets and models below the home: a dot above a dataset once hid all its images.
    """
    home = tmp_path / ".cache" / "facejobs"
    home.mkdir(parents=True)
    return home


@pytest.fixture(params=["services", "embedded"])
def stack(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """facejobs on the real services, then on the embedded default (each test runs on both)."""
    yield from _stack(request.param, request, tmp_path, monkeypatch)


@pytest.fixture
def services_stack(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """facejobs on PostgreSQL, Redis and S3 only."""
    yield from _stack("services", request, tmp_path, monkeypatch)


@pytest.fixture
def embedded_stack(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """facejobs on SQLite, a local folder and the embedded broker only."""
    yield from _stack("embedded", request, tmp_path, monkeypatch)


def _stack(
    name: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Stack]:
    home = dotted_home(tmp_path)
    if name == "services":
        env = _services_env(
            request.getfixturevalue("pg_url"), request.getfixturevalue("redis_prefix"),
            request.getfixturevalue("s3_server"), home,
        )  # fmt: skip
    else:
        env = _embedded_env(home)
    yield from serve_stack(name, env, home, monkeypatch)


def serve_stack(name: str, env: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """Build a stack, yield it, and stop its workers and clients afterwards (the body of a stack fixture)."""
    stack = build_stack(name, env, home, monkeypatch)
    try:
        yield stack
    finally:
        stack.stop_workers()
        stack.client.close()
        stack.other.close()
        reset_process_state()


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: this session's PostgreSQL database, then a SQLite file."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        _clean_pg(url)
        return url
    from jobs.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'facejobs.db'}"
    upgrade(url)
    return url
