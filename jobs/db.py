"""Engine and session factory: PostgreSQL in production, a SQLite file for the embedded default."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.orm import Session, sessionmaker

from jobs.settings import Settings, get_settings

_lock = threading.Lock()
# Keyed by (url, durable): bookkeeping sessions of PostgreSQL use connections of their own (see `make_engine`).
_engines: dict[tuple[str, bool], Engine] = {}
_factories: dict[tuple[str, bool], sessionmaker[Session]] = {}
# A pooled connection idle longer than this is tested with a round trip before it is handed out; one
# used more recently is not (a job's five to six transactions follow each other within milliseconds).
PING_IDLE_SECONDS = 1.0


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


def make_engine(url: str, settings: Settings | None = None, durable: bool = True) -> Engine:
    """A new engine for `url`, with the pool and SQLite pragmas facejobs relies on.

    `durable=False` (PostgreSQL): every connection commits with `synchronous_commit` off, as
    `relax_commit` explains, set once when it connects instead of by a `SET LOCAL` round trip in each
    transaction. SQLite ignores it.
    """
    settings = settings or get_settings()
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs["pool_size"] = settings.db_pool_size
        kwargs["max_overflow"] = settings.db_pool_size
        kwargs["connect_args"] = {"connect_timeout": settings.db_connect_timeout_seconds}
        if not durable:
            kwargs["connect_args"]["options"] = "-c synchronous_commit=off"
    engine = create_engine(url, json_serializer=_json_dumps, **kwargs)
    if not url.startswith("sqlite"):
        _ping_when_idle(engine)
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


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection before use only when it sat idle over `PING_IDLE_SECONDS`.

    `pool_pre_ping` pays a round trip at every checkout, six per job. A connection the database
    dropped while idle (restart, failover, a terminated backend) is still caught here and replaced
    before anyone uses it; one dropped within the last second fails its statement with
    `OperationalError`, which SQLAlchemy answers by discarding every connection of the pool, and
    the writes that must happen retry (`JobContext._write`), as they already must for a connection
    that dies between a ping and the statement.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)  # what pool_pre_ping runs (in autocommit: no transaction left open)
        except Exception as error:
            # The pool discards this connection and checks out another (a new one if need be).
            raise exc.DisconnectionError(f"pooled connection is dead: {error}") from error


def _factory(url: str | None, durable: bool) -> tuple[Engine, sessionmaker[Session]]:
    url = url or get_settings().resolved_database_url
    key = (url, durable or url.startswith("sqlite"))  # SQLite has one engine per file
    with _lock:
        if key not in _engines:
            _engines[key] = make_engine(url, durable=key[1])
            _factories[key] = sessionmaker(_engines[key], expire_on_commit=False)
        return _engines[key], _factories[key]


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for `url` (default: the settings' database)."""
    return _factory(url, True)[0]


def session_factory(url: str | None = None, durable: bool = True) -> sessionmaker[Session]:
    """The process-wide session factory for `url`; `durable=False`: bookkeeping connections (`make_engine`)."""
    return _factory(url, durable)[1]


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
    session = session_factory(url, durable)()
    try:
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
