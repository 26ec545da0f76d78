"""Streaming multipart uploads: the file goes to disk chunk by chunk, the size limit is enforced as it arrives.

Starlette's own form parser spools the whole file before the handler runs, so an oversized upload
would be read to the end before it could be refused. `receive_multipart` parses the request stream
itself (python-multipart's push parser) and raises `PayloadTooLarge` the moment a file part passes
the limit; a declared Content-Length over the limit is refused before a byte is read.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from api.errors import ApiError, PayloadTooLarge

FIELD_MAX_BYTES = 64 * 1024
MAX_PARTS = 16
# What multipart framing (boundaries, part headers, small fields) may add on top of the file.
FRAMING_ALLOWANCE_BYTES = MAX_PARTS * FIELD_MAX_BYTES
SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


class InvalidUpload(ApiError):
    """The request is not a well-formed multipart form with the fields the route needs."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(400, code, message, details)


@dataclass
class ReceivedFile:
    """One file part written to disk, with its size and sha256 computed on the way."""

    field: str
    filename: str
    path: Path
    size: int = 0
    sha256: str = ""
    content_type: str = "application/octet-stream"


@dataclass
class ReceivedForm:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, ReceivedFile] = field(default_factory=dict)


def safe_filename(name: str, default: str = "upload", max_length: int = 120) -> str:
    """`name`'s last path segment reduced to [A-Za-z0-9._-], never hidden, empty, '.' or '..'."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = SAFE_NAME_RE.sub("_", base).lstrip(".")[-max_length:]
    return cleaned if cleaned.strip("._") else default


class _Parser:
    """Callbacks for python-multipart's push parser; writes file parts straight to `dest`."""

    def __init__(self, dest: Path, max_file_bytes: int, file_fields: set[str]) -> None:
        self.dest, self.max_file_bytes, self.file_fields = dest, max_file_bytes, file_fields
        self.form = ReceivedForm()
        self.parts = 0
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._file: ReceivedFile | None = None
        self._handle: IO[bytes] | None = None
        self._hash: Any = None
        self._data = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidUpload("too_many_parts", f"a form may have at most {MAX_PARTS} parts")
        self._headers, self._file, self._handle, self._data = {}, None, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > FIELD_MAX_BYTES:
            raise InvalidUpload("invalid_multipart", "a part header is too long")

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise InvalidUpload("invalid_multipart", "each form part needs a Content-Disposition name")
        self._name = options[b"name"].decode("utf-8", "replace")
        if b"filename" not in options:
            return
        if self._name not in self.file_fields or self._name in self.form.files:
            raise InvalidUpload(
                "unexpected_file", f"unexpected file field {self._name!r}", {"expected": sorted(self.file_fields)}
            )
        filename = options[b"filename"].decode("utf-8", "replace")
        path = self.dest / f"upload-{self.parts}"
        content_type = self._headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
        self._file = ReceivedFile(self._name, filename, path, content_type=content_type)
        self._handle = path.open("wb")
        self._hash = hashlib.sha256()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is None:
            if len(self._data) + len(chunk) > FIELD_MAX_BYTES:
                raise PayloadTooLarge(f"form field {self._name!r} is over {FIELD_MAX_BYTES} bytes", FIELD_MAX_BYTES)
            self._data.extend(chunk)
            return
        self._file.size += len(chunk)
        if self._file.size > self.max_file_bytes:
            raise PayloadTooLarge(f"the upload is over the limit of {self.max_file_bytes} bytes", self.max_file_bytes)
        if self._handle is not None:  # always, once a file part began
            self._handle.write(chunk)
            self._hash.update(chunk)

    def on_part_end(self) -> None:
        if self._file is None:
            self.form.fields[self._name] = self._data.decode("utf-8", "replace")
            return
        self.close()
        self._file.sha256 = self._hash.hexdigest()
        self.form.files[self._file.field] = self._file
        self._file = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


async def receive_multipart(request: Request, dest: Path, max_file_bytes: int, file_fields: set[str]) -> ReceivedForm:
    """Parse a multipart/form-data request into `dest`, refusing it as soon as a file passes `max_file_bytes`."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not options.get(b"boundary"):
        raise ApiError(415, "multipart_required", "send the upload as multipart/form-data")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidUpload("invalid_multipart", "invalid Content-Length")
        if int(declared) > max_file_bytes + FRAMING_ALLOWANCE_BYTES:
            raise PayloadTooLarge(
                f"the upload ({declared} bytes) is over the limit of {max_file_bytes} bytes", max_file_bytes
            )
    handler = _Parser(dest, max_file_bytes, file_fields)
    parser = MultipartParser(options[b"boundary"], handler.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidUpload("invalid_multipart", f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        raise InvalidUpload("client_disconnected", "the client went away during the upload") from None
    finally:
        handler.close()
    return handler.form
