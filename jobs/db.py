"""Engine and session factory: PostgreSQL in production, a SQLite file for the embedded default."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import Settings, get_settings

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (a PSNR of identical images, a NaN loss) turned into None.

    JSON has no NaN or Infinity: PostgreSQL refuses them, and a browser's JSON.parse would too.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _json_dumps(obj: Any) -> str:
    return json.dumps(json_safe(obj), allow_nan=False)


def make_engine(url: str, settings: Settings | None = None) -> Engine:
    """A new engine for `url`, with the pool and SQLite pragmas facejobs relies on."""
    settings = settings or get_settings()
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_size"] = settings.db_pool_size
        kwargs["max_overflow"] = settings.db_pool_size
        kwargs["connect_args"] = {"connect_timeout": settings.db_connect_timeout_seconds}
    engine = create_engine(url, json_serializer=_json_dumps, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets the API read while a worker writes; foreign keys are off by default in SQLite.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: the settings' database)."""
    url = url or get_settings().resolved_database_url
    with _lock:
        if url not in _engines:
            _engines[url] = make_engine(url)
            _factories[url] = sessionmaker(_engines[url], expire_on_commit=False)
        return _engines[url]


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    url = url or get_settings().resolved_database_url
    get_engine(url)
    return _factories[url]


def relax_commit(session: Session) -> None:
    """Let this transaction's commit return before its WAL record is on disk (PostgreSQL only).

    For bookkeeping (events, progress, leases, worker rows, the sent stamp): a commit that waits for
    the flush costs milliseconds, several per job. Nothing is lost when a process dies, and the next
    ordinary commit on the server flushes these too (the WAL is one sequence); only a crash of the
    database server itself can lose the last fraction of a second of them, which the next heartbeat,
    progress write or the reaper's re-send puts right.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))


@contextmanager
def session_scope(url: str | None = None, durable: bool = True) -> Iterator[Session]:
    """A session that commits on success and rolls back on error; the caller owns the transaction.

    `durable=False` commits as `relax_commit` says: for bookkeeping only, never a claim or a result.
    """
    session = session_factory(url)()
    try:
        if not durable:
            relax_commit(session)
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Drop every pooled connection (after a fork, or between tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _factories.clear()
