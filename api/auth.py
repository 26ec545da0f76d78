"""API-key authentication: the `X-API-Key` header, checked against the stored HMAC of each key."""

from __future__ import annotations

from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session

from api.errors import ApiError
from jobs.keys import lookup_key
from jobs.models import ApiKey
from jobs.settings import Settings

API_KEY_HEADER = "X-API-Key"
# auto_error=False: a missing key must answer our own 401 JSON, not FastAPI's 403.
api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="An API key (`fj_...`).")


class Unauthorized(ApiError):
    """No key, a malformed key, an unknown key or a revoked key: all read the same."""

    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message)


def authenticate(session: Session, settings: Settings, key: str | None) -> ApiKey:
    """The live key row for `key`, or `Unauthorized`."""
    if not key:
        raise Unauthorized(f"missing API key: send it in the {API_KEY_HEADER} header")
    row = lookup_key(session, key.strip(), settings)
    if row is None:
        raise Unauthorized("invalid or revoked API key")
    return row
