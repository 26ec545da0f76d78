"""Multipart uploads into the store: S3's own (presigned part URLs, completed by the API), or, for the
local folder store, parts the API receives itself and streams to files beside the object.

The parts of a local upload live under `{key}.parts/` (never listed as objects of a dataset, which
live under `datasets/`); `complete` checks each part's ETag (the MD5 of its bytes, as S3 computes
it), then joins them into `key` with one atomic rename. `abort` removes every part.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import IO

from jobs.store import CHUNK, LocalStore, S3Store, Store, check_key

MAX_PARTS = 10_000  # S3's limit
MIN_PART_BYTES = 5 * 1024**2  # S3's least size of a part but the last
OCTETS = "application/octet-stream"


class PartRefused(ValueError):
    """A part that is missing, too large, or whose ETag does not match what was received."""


@dataclass(frozen=True)
class Part:
    number: int
    etag: str


def clean_etag(etag: str) -> str:
    return etag.strip().strip('"').lower()


def start(store: Store, key: str) -> str:
    """Begin a multipart upload of `key`; its upload id (S3's, or a fresh one for the local store)."""
    check_key(key)
    if isinstance(store, S3Store):
        store.ensure_bucket()
        return store._retry(
            f"start upload {key}",
            lambda: store.client._create_multipart_upload(store.bucket, key, {"Content-Type": OCTETS}),
        )
    if isinstance(store, LocalStore):
        return uuid.uuid4().hex
    raise TypeError(f"no multipart uploads for {type(store).__name__}")


def part_url(store: Store, key: str, upload_id: str, number: int, seconds: int) -> str | None:
    """A presigned PUT URL for part `number` (S3); None where the API receives the parts itself."""
    if not isinstance(store, S3Store):
        return None
    return store.public_client.get_presigned_url(
        "PUT",
        store.bucket,
        check_key(key),
        expires=timedelta(seconds=seconds),
        extra_query_params={"partNumber": str(number), "uploadId": upload_id},
    )


def _parts_dir(store: LocalStore, key: str) -> str:
    return check_key(f"{key}.parts")


async def receive_part(store: LocalStore, key: str, number: int, chunks: AsyncIterator[bytes], max_bytes: int) -> str:
    """Stream one part of a local upload to its file (never held in memory); its ETag (MD5 hex).

    A part over `max_bytes` is refused (`PartRefused`) and nothing of it is kept."""
    dest = store._path(f"{_parts_dir(store, key)}/{number}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{number}.{uuid.uuid4().hex}.part"
    md5, size = hashlib.md5(usedforsecurity=False), 0
    try:
        with tmp.open("wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PartRefused(f"part {number} is over its {max_bytes} bytes")
                md5.update(chunk)
                out.write(chunk)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return md5.hexdigest()


def complete(store: Store, key: str, upload_id: str, parts: list[Part]) -> None:
    """Join the parts into the object `key`; `PartRefused` when a part is missing or its ETag differs."""
    check_key(key)
    if isinstance(store, S3Store):
        from minio.datatypes import Part as S3Part
        from minio.error import S3Error

        s3_parts = [S3Part(p.number, p.etag) for p in parts]
        try:
            store._retry(
                f"complete upload {key}",
                lambda: store.client._complete_multipart_upload(store.bucket, key, upload_id, s3_parts),
            )
        except S3Error as exc:
            if exc.code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "NoSuchUpload"):
                raise PartRefused(f"the store refused the parts: {exc.code}") from None
            raise
        return
    assert isinstance(store, LocalStore)
    folder = store._path(_parts_dir(store, key))
    for p in parts:
        path = folder / str(p.number)
        if not path.is_file():
            raise PartRefused(f"part {p.number} was never received")
        md5 = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                md5.update(chunk)
        if md5.hexdigest() != clean_etag(p.etag):
            raise PartRefused(f"part {p.number}: its ETag {p.etag!r} is not that of the bytes received")

    def join(out: IO[bytes]) -> None:
        for p in parts:
            with (folder / str(p.number)).open("rb") as src:
                shutil.copyfileobj(src, out, CHUNK)

    store._write(key, join)
    shutil.rmtree(folder, ignore_errors=True)


def abort(store: Store, key: str, upload_id: str) -> None:
    """Drop an unfinished upload: S3 discards its parts; the local store removes their files."""
    check_key(key)
    if isinstance(store, S3Store):
        from minio.error import S3Error

        try:
            store._retry(
                f"abort upload {key}", lambda: store.client._abort_multipart_upload(store.bucket, key, upload_id)
            )
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise
    elif isinstance(store, LocalStore):
        shutil.rmtree(store._path(_parts_dir(store, key)), ignore_errors=True)


def pending_parts(store: Store, key: str, upload_id: str) -> int:
    """How many parts the store holds for an unfinished upload (0 once completed or aborted)."""
    if isinstance(store, S3Store):
        from minio.error import S3Error

        try:
            result = store.client._list_parts(store.bucket, key, upload_id)
        except S3Error as exc:
            if exc.code == "NoSuchUpload":
                return 0
            raise
        return len(result.parts)
    if isinstance(store, LocalStore):
        folder = store._path(_parts_dir(store, key))
        return len([p for p in folder.iterdir() if not p.name.startswith(".")]) if folder.is_dir() else 0
    return 0
