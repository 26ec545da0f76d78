"""One router per resource; every router but health is built by `keyed_router` (key required)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from api.deps import get_current_key
from api.schemas import COMMON_ERRORS


def keyed_router(prefix: str, tag: str) -> APIRouter:
    """A router whose every route needs a valid API key (even one that forgets to ask for `CurrentKey`)."""
    return APIRouter(prefix=prefix, tags=[tag], dependencies=[Depends(get_current_key)], responses=COMMON_ERRORS)
