"""API-key authentication: the `X-API-Key` header, checked against the stored HMAC of each key.

A key found live is remembered by this process for `KEY_CACHE_SECONDS`, keyed by its HMAC (never
the key itself) and the database: every request carries a key, and its lookup was a query of its
own. The price: a key revoked elsewhere (`facejobs keys revoke`) still works in this process for
at most that long. Unknown and revoked keys are never remembered: they are looked up every time.
"""

from __future__ import annotations

import threading
import time

from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from api.errors import ApiError
from jobs.keys import KEY_RE, hash_key, lookup_key
from jobs.models import ApiKey
from jobs.settings import Settings

API_KEY_HEADER = "X-API-Key"
# auto_error=False: a missing key must answer our own 401 JSON, not FastAPI's 403.
api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="An API key (`fj_...`).")
KEY_CACHE_SECONDS = 2.0  # how long a live key is taken as live without asking the database again
KEY_CACHE_MAX = 1024  # keys remembered at most (the oldest go first)

_lock = threading.Lock()
# (database url, HMAC of the key) -> (monotonic expiry, the key row's columns)
_live: dict[tuple[str, str], tuple[float, dict[str, object]]] = {}
_COLUMNS = ("id", "name", "prefix", "key_hash", "created_at", "revoked_at")


class Unauthorized(ApiError):
    """No key, a malformed key, an unknown key or a revoked key: all read the same."""

    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message)


def _remembered(cache_key: tuple[str, str]) -> ApiKey | None:
    with _lock:
        hit = _live.get(cache_key)
        if hit is not None and hit[0] < time.monotonic():
            del _live[cache_key]
            hit = None
    # A fresh object per request, in no session: no request can change what another one reads.
    return ApiKey(**hit[1]) if hit is not None else None


def _remember(cache_key: tuple[str, str], row: ApiKey) -> None:
    with _lock:
        if len(_live) >= KEY_CACHE_MAX:
            _live.pop(next(iter(_live)))
        _live[cache_key] = (time.monotonic() + KEY_CACHE_SECONDS, {c: getattr(row, c) for c in _COLUMNS})


def forget_cached_keys() -> None:
    """Drop every remembered key: the next request of each asks the database again."""
    with _lock:
        _live.clear()


def authenticate(session: Session, settings: Settings, key: str | None) -> ApiKey:
    """The live key row for `key`, or `Unauthorized`."""
    if not key:
        raise Unauthorized(f"missing API key: send it in the {API_KEY_HEADER} header")
    key = key.strip()
    cache_key = (settings.resolved_database_url, hash_key(key, settings)) if KEY_RE.match(key) else None
    if cache_key is not None and (cached := _remembered(cache_key)) is not None:
        return cached
    row = lookup_key(session, key, settings)
    if row is None:
        raise Unauthorized("invalid or revoked API key")
    if cache_key is not None:
        _remember(cache_key, row)
    return row
