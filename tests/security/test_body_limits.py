"""Oversized request bodies are refused before the server reads them, over a real socket to uvicorn.

A TestClient hands the app the whole body at once, so only a real server and a raw socket can show
*when* the refusal comes: for a declared Content-Length, before one byte of the body is sent; for a
chunked upload, as soon as the limit is passed, long before the client would have finished.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.served import ServedApp
from tests.support.services import Stack

HUGE = 10 * 1024**3  # 10 GiB, declared and never sent
BOUNDARY = "fjboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def send_head(port: int, path: str, headers: dict[str, str]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    sock.sendall("\r\n".join(lines).encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of the one response on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    fields = dict(h.split(b":", 1) for h in head.split(b"\r\n")[1:])
    length = int({k.lower(): v for k, v in fields.items()}[b"content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return status, json.loads(body[:length])


def uploads_left(stack: Stack) -> list[str]:
    root = stack.settings.home / "uploads"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.security
def test_a_declared_oversized_body_is_refused_before_any_of_it_is_sent(
    serve: Callable[..., ServedApp], services_stack: Stack
) -> None:
    served = serve()
    key = services_stack.key
    cases = [
        ("/datasets", MULTIPART, key, 413, "payload_too_large"),
        ("/models", MULTIPART, key, 413, "payload_too_large"),
        ("/jobs", "application/json", key, 413, "payload_too_large"),
        ("/datasets", MULTIPART, None, 401, "unauthorized"),  # no key: refused before the size even matters
        ("/datasets", MULTIPART, "fj_00000000_" + "0" * 32, 401, "unauthorized"),
    ]
    for path, ctype, api_key, status, code in cases:
        headers = {"Content-Type": ctype, "Content-Length": str(HUGE)} | ({"X-API-Key": api_key} if api_key else {})
        t0 = time.monotonic()
        with send_head(served.port, path, headers) as sock:
            got, body = read_response(sock)  # no body byte was ever sent
        assert (got, body["error"]["code"]) == (status, code), (path, api_key, body)
        assert time.monotonic() - t0 < 5
    assert uploads_left(services_stack) == []


@pytest.mark.security
def test_a_chunked_upload_is_cut_off_as_soon_as_it_passes_the_limit(
    serve: Callable[..., ServedApp], services_stack: Stack
) -> None:
    limit = 1024 * 1024
    served = serve(max_upload_bytes=limit)
    intended = 64 * 1024 * 1024  # what the client would send if nobody stopped it
    headers = {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked", "X-API-Key": services_stack.key}
    part_head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f.zip"\r\n\r\n'.encode()
    block = b"\x00" * 65536
    sent = 0
    with send_head(served.port, "/datasets", headers) as sock:
        sock.sendall(b"%x\r\n%s\r\n" % (len(part_head), part_head))
        while sent < intended:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered while the body was still coming
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            sent += len(block)
            time.sleep(0.002)
        status, body = read_response(sock)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert body["error"]["details"] == {"limit_bytes": limit}
    # Refused at the limit, plus what sat in the sockets' buffers: a small fraction of the intended body.
    assert limit < sent < 4 * limit, sent  # about 1.1 MiB in practice
    assert uploads_left(services_stack) == []  # the partial file was removed
