"""The API's error shape and the handlers that map every exception onto it.

Every error is `{"error": {"code", "message", "details"}}`. Whatever the caller got wrong answers
4xx; a broken dependency (database, store) answers 503; anything else is a bug, logged and 500.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.errors import JobInputError, TransientError
from jobs.kinds import UnknownKind, registry
from jobs.redact import new_error_id
from jobs.refs import RefNotFound
from jobs.store import InvalidKey, ObjectMissing

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error answered as JSON with an HTTP status, a stable code and optional details."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class NotFound(ApiError):
    """No such resource for this key (another key's resource reads the same)."""

    def __init__(self, what: str, ident: str) -> None:
        super().__init__(404, "not_found", f"{what} {ident!r} not found")


class Conflict(ApiError):
    """The resource is in a state that does not allow the request."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(409, "conflict", message, details)


class PayloadTooLarge(ApiError):
    """The request body (or one part of it) is over the configured limit."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(413, "payload_too_large", message, {"limit_bytes": limit})


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


def _pydantic_details(errors: Any) -> list[dict[str, Any]]:
    # loc, msg and type are enough to fix a request; echoing the input could leak or balloon.
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errors
    ]


async def handle_api_error(_request: Request, exc: Exception) -> JSONResponse:
    exc = cast(ApiError, exc)
    headers = {"WWW-Authenticate": "ApiKey"} if exc.status == 401 else None
    return error_response(exc.status, exc.code, exc.message, exc.details, headers)


async def handle_http_exception(_request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    if isinstance(exc.__cause__, ApiError):
        # FastAPI wraps errors raised while it reads the body (e.g. the body-size cap) in a 400.
        return await handle_api_error(_request, exc.__cause__)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, None, getattr(exc, "headers", None))


async def handle_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    exc = cast(RequestValidationError, exc)
    details = _pydantic_details(exc.errors())
    return error_response(422, "invalid_request", f"the request is invalid: {len(details)} error(s)", details)


async def handle_job_input_error(_request: Request, exc: Exception) -> JSONResponse:
    cause = exc.__cause__
    details = _pydantic_details(cause.errors()) if isinstance(cause, ValidationError) else None
    return error_response(422, "invalid_params", str(exc), details)


async def handle_unknown_kind(_request: Request, exc: Exception) -> JSONResponse:
    return error_response(422, "unknown_kind", str(exc), {"known": sorted(registry())})


async def handle_ref_not_found(_request: Request, exc: Exception) -> JSONResponse:
    exc = cast(RefNotFound, exc)
    return error_response(404, "not_found", str(exc), {"ref": str(exc.ref)})


async def handle_invalid_key(_request: Request, exc: Exception) -> JSONResponse:
    return error_response(400, "invalid_key", str(exc))


async def handle_object_missing(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("object missing from the store: %s", exc)
    return error_response(404, "object_missing", "the stored object is missing", {"key": str(exc).strip("'")})


async def handle_transient(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("store unavailable: %s", exc)
    return error_response(503, "store_unavailable", "the object store is unavailable; try again", None)


async def handle_integrity_error(_request: Request, exc: Exception) -> JSONResponse:
    log.info("integrity error answered 409: %s", exc)
    return error_response(409, "conflict", "the request conflicts with the stored state; try again")


async def handle_data_error(_request: Request, exc: Exception) -> JSONResponse:
    return error_response(400, "invalid_input", "a value could not be stored (bad characters or out of range)")


async def handle_database_error(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return error_response(503, "database_unavailable", "the database is unavailable; try again shortly")


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The traceback stays in the log; the caller gets the id that finds it there, nothing more.
    error_id = new_error_id()
    log.error("unhandled error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
    message = f"internal error; it has been logged as error {error_id}"
    return error_response(500, "internal_error", message, {"error_id": error_id})


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler; Starlette picks the most specific class along the MRO."""
    app.add_exception_handler(ApiError, handle_api_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(JobInputError, handle_job_input_error)
    app.add_exception_handler(UnknownKind, handle_unknown_kind)
    app.add_exception_handler(RefNotFound, handle_ref_not_found)
    app.add_exception_handler(InvalidKey, handle_invalid_key)
    app.add_exception_handler(ObjectMissing, handle_object_missing)
    app.add_exception_handler(TransientError, handle_transient)
    app.add_exception_handler(IntegrityError, handle_integrity_error)
    app.add_exception_handler(DataError, handle_data_error)
    app.add_exception_handler(DBAPIError, handle_database_error)
    app.add_exception_handler(Exception, handle_unexpected)
