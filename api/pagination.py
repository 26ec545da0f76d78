"""Keyset pagination by (created_at desc, id desc) with an opaque cursor.

A cursor is the (created_at, id) of the last row of a page, base64url-encoded JSON; the next page
is one indexed query `WHERE (created_at, id) < cursor ORDER BY created_at DESC, id DESC LIMIT n+1`
(the extra row only says whether there is a next page). Unlike OFFSET, rows inserted meanwhile
never shift or repeat a page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from api.errors import ApiError
from api.ids import ID_RE

T = TypeVar("T")


class InvalidCursor(ApiError):
    """A cursor this API did not hand out."""

    def __init__(self) -> None:
        super().__init__(400, "invalid_cursor", "invalid cursor: pass back a next_cursor from a previous page")


class LimitTooLarge(ApiError):
    def __init__(self, limit: int, maximum: int) -> None:
        super().__init__(
            422, "limit_too_large", f"limit {limit} is over the maximum page size {maximum}", {"maximum": maximum}
        )


def encode_cursor(created_at: datetime, ident: str) -> str:
    raw = json.dumps([created_at.isoformat(), ident], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of a cursor, or `InvalidCursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, ident = json.loads(raw)
        if not isinstance(created, str) or not isinstance(ident, str) or ID_RE.match(ident) is None:
            raise InvalidCursor
        return datetime.fromisoformat(created), ident
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursor from None


def check_limit(limit: int, maximum: int) -> int:
    if limit > maximum:
        raise LimitTooLarge(limit, maximum)
    return limit


def keyset(
    stmt: Select[Any],
    created: InstrumentedAttribute[datetime] | ColumnElement[datetime],
    ident: InstrumentedAttribute[str],
    cursor: str | None,
    limit: int,
) -> Select[Any]:
    """`stmt` restricted to the rows after `cursor`, newest first, with one row more than `limit`.

    `created` may be an expression of the created_at column (the same values), to steer the plan.
    """
    if cursor:
        c_created, c_id = decode_cursor(cursor)
        # A plain tuple on the right takes its types from the columns (SQLite compares datetimes as text).
        stmt = stmt.where(tuple_(created, ident) < (c_created, c_id))
    return stmt.order_by(created.desc(), ident.desc()).limit(limit + 1)


def page(rows: Sequence[T], limit: int) -> tuple[list[T], str | None]:
    """The page's rows and the cursor of the next page (None on the last page)."""
    data = list(rows[:limit])
    if len(rows) <= limit or not data:
        return data, None
    last: Any = data[-1]
    return data, encode_cursor(last.created_at, last.id)
