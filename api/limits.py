"""A cap on request bodies outside the upload routes, so a huge JSON body is never read into memory.

Upload routes (`POST /datasets`, `POST /models`, `POST /verify`, `POST /search`) stream to disk and
enforce `max_upload_bytes` themselves. Every other body is small JSON: a declared Content-Length over
the cap is answered 413 before a byte is read, and a chunked body that passes the cap mid-stream is cut off (4xx).
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, error_response

STREAMED_ROUTES = frozenset({"/datasets", "/models", "/verify", "/search"})
# A part of a multipart dataset upload to the local store (api/routes/dataset_uploads.py caps each part).
STREAMED_PATTERN = re.compile(r"^/datasets/uploads/[^/]+/parts/[0-9]+$")


class BodyTooLarge(ApiError):
    """A streamed JSON body passed the cap."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413, "payload_too_large", f"request bodies are limited to {max_bytes} bytes", {"limit_bytes": max_bytes}
        )


class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` on every route except the streamed uploads."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"].rstrip("/") if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in STREAMED_ROUTES or STREAMED_PATTERN.match(path):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                exc = BodyTooLarge(self.max_bytes)
                await error_response(exc.status, exc.code, exc.message, exc.details)(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)
