"""Fixtures of the fault tests: stacks wired to a Redis or an S3 server that the test may break."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3server import S3Server
from tests.support.servers import RedisServer, RedisStack, RestartableS3, S3Stack
from tests.support.services import REDIS_URL, Stack, build_stack, reset_process_state


def services_env(
    pg_url: str, home: Path, broker: tuple[str, str], s3_endpoint: str, s3_keys: tuple[str, str]
) -> dict[str, str]:
    """The environment of a stack on PostgreSQL, a Redis (url, key prefix) and an S3 server (short store retries)."""
    return {
        "FACEJOBS_ENV": "test",
        "FACEJOBS_HOME": str(home),
        "FACEJOBS_DATABASE_URL": pg_url,
        "FACEJOBS_BROKER_URL": broker[0],
        "FACEJOBS_BROKER_KEY_PREFIX": broker[1],
        "FACEJOBS_BROKER_FALLBACK_EMBEDDED": "false",
        "FACEJOBS_STORE_BACKEND": "s3",
        "FACEJOBS_S3_ENDPOINT": s3_endpoint,
        "FACEJOBS_S3_ACCESS_KEY": s3_keys[0],
        "FACEJOBS_S3_SECRET_KEY": s3_keys[1],
        "FACEJOBS_S3_BUCKET": f"fj-{secrets.token_hex(4)}",
        "FACEJOBS_STORE_RETRIES": "2",
        "FACEJOBS_STORE_BACKOFF_SECONDS": "0.1",
    }


def _close(stack: Stack) -> None:
    stack.stop_workers()
    stack.client.close()
    stack.other.close()
    reset_process_state()


@pytest.fixture
def redis_stack(
    pg_url: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RedisStack]:
    """facejobs on PostgreSQL and S3 with a Redis of its own, which the test may crash and restart."""
    redis = RedisServer(tmp_path)
    redis.start()
    home = tmp_path / "home"
    home.mkdir()
    s3 = s3_server
    env = services_env(pg_url, home, (redis.url, ""), s3.endpoint, (s3.access_key, s3.secret_key))
    stack = build_stack("services", env, home, monkeypatch)
    try:
        yield RedisStack(stack, redis)
    finally:
        _close(stack)
        redis.crash()


@pytest.fixture(scope="module")
def restartable_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableS3]:
    """An S3 server of this module's own, stopped and started again by its tests on the same ports."""
    server = RestartableS3(tmp_path_factory.mktemp("s3-restartable"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_stack(
    pg_url: str, redis_prefix: str, restartable_s3: RestartableS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Stack]:
    """facejobs on PostgreSQL, the shared Redis, and an S3 server the test may stop."""
    if restartable_s3.proc is None or restartable_s3.proc.poll() is not None:
        restartable_s3.start()
    home = tmp_path / "home"
    home.mkdir()
    s3 = restartable_s3
    broker = (REDIS_URL, f"{redis_prefix}{secrets.token_hex(3)}:")  # removed with the session's prefix
    env = services_env(pg_url, home, broker, s3.endpoint, (s3.access_key, s3.secret_key))
    stack = build_stack("services", env, home, monkeypatch)
    try:
        yield S3Stack(stack, s3)
    finally:
        _close(stack)
