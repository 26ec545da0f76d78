"""The artifact store: one interface over S3 (minio SDK; MinIO, SeaweedFS, AWS) and a local folder.

Keys are relative POSIX paths (`jobs/{id}/{name}`, `datasets/{id}/...`); `check_key` refuses any
key that could escape its prefix. Every write is one complete object (a PUT or an atomic rename),
so a reader never sees half a checkpoint. S3 calls retry named transient errors with backoff and
then raise `TransientError`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Protocol, TypeVar
from urllib.parse import urlsplit

from jobs.errors import TransientError
from jobs.settings import Settings, get_settings

T = TypeVar("T")
CHUNK = 1024 * 1024


class InvalidKey(ValueError):
    """A store key that is empty, absolute, or climbs out of its folder."""


class ObjectMissing(KeyError):
    """No object under that key."""


def check_key(key: str) -> str:
    """The key itself if it is a safe relative path, else `InvalidKey`."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidKey(f"invalid store key {key!r}: must be a relative path")
    if any(p in ("..", ".", "") for p in key.split("/")):
        raise InvalidKey(f"invalid store key {key!r}: '.' and '..' segments are not allowed")
    return key


def join_key(prefix: str, name: str) -> str:
    """`prefix/name`, refusing a name that escapes the prefix."""
    return check_key(f"{check_key(prefix)}/{check_key(name)}")


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


class Store(Protocol):
    """What facejobs needs from an object store."""

    def put_bytes(self, key: str, data: bytes, content_type: str = ...) -> StoredObject: ...
    def put_file(self, key: str, path: Path, content_type: str = ...) -> StoredObject: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_range(self, key: str, offset: int, length: int) -> bytes: ...
    def download(self, key: str, path: Path) -> Path: ...
    def open_stream(self, key: str) -> Iterator[bytes]: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def presigned_get(self, key: str, seconds: int, filename: str | None = None) -> str | None: ...
    def ping(self) -> None: ...


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class LocalStore:
    """Objects as files under one folder; writes are atomic renames."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidKey(f"invalid store key {key!r}: escapes the store")
        return path

    def _write(self, key: str, writer: Callable[[IO[bytes]], object]) -> Path:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
        try:
            with tmp.open("wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> StoredObject:
        self._write(key, lambda f: f.write(data))
        return StoredObject(key, len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> StoredObject:
        def copy(f: IO[bytes]) -> None:
            with path.open("rb") as src:
                shutil.copyfileobj(src, f, CHUNK)

        dest = self._write(key, copy)
        return StoredObject(key, dest.stat().st_size, _sha256_file(dest))

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise ObjectMissing(key)
        return path.read_bytes()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (fewer at the end of the object)."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectMissing(key)
        if length <= 0:
            return b""
        with path.open("rb") as f:
            f.seek(offset)
            return f.read(length)

    def download(self, key: str, path: Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise ObjectMissing(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
        return path

    def open_stream(self, key: str) -> Iterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise ObjectMissing(key)

        def gen() -> Iterator[bytes]:
            with path.open("rb") as f:
                yield from iter(lambda: f.read(CHUNK), b"")

        return gen()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ObjectMissing(key)
        return path.stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.endswith(".part")
        )

    def presigned_get(self, key: str, seconds: int, filename: str | None = None) -> str | None:
        return None  # the API streams local objects itself

    def ping(self) -> None:
        if not self.root.is_dir():
            raise TransientError(f"artifact folder {self.root} is missing")


class S3Store:
    """Objects in an S3 bucket through the minio SDK, with retries on transient errors."""

    def __init__(self, settings: Settings) -> None:
        import urllib3
        from minio import Minio

        # One retry policy, ours (named transient errors, with backoff): urllib3's own is off.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=300), retries=urllib3.Retry(total=0), maxsize=16
        )
        self.settings = settings
        self.bucket = settings.s3_bucket
        secret = settings.s3_secret_key.get_secret_value()
        self.client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=secret,
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )
        public = settings.s3_public_endpoint
        if public:
            parts = urlsplit(public if "://" in public else f"http://{public}")
            self.public_client = Minio(
                parts.netloc,
                access_key=settings.s3_access_key,
                secret_key=secret,
                secure=parts.scheme == "https",
                region=settings.s3_region,
            )
        else:
            self.public_client = self.client
        self._bucket_ready = False

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        delay = self.settings.store_backoff_seconds
        last: Exception | None = None
        for attempt in range(self.settings.store_retries + 1):
            try:
                return fn()
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    raise ObjectMissing(what) from exc
                if exc.code not in ("SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"):
                    raise
                last = exc
            except (HTTPError, OSError) as exc:
                last = exc
            if attempt < self.settings.store_retries:
                time.sleep(delay)
                delay *= 2
        raise TransientError(f"object store unavailable during {what}: {last}") from last

    def ensure_bucket(self) -> None:
        if self._bucket_ready:
            return

        def make() -> None:
            from minio.error import S3Error

            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket)
                except S3Error as exc:
                    # Another thread (parallel uploads) or process created it between check and create.
                    if exc.code != "BucketAlreadyOwnedByYou":
                        raise

        self._retry(f"create bucket {self.bucket}", make)
        self._bucket_ready = True

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> StoredObject:
        import io

        check_key(key)
        self.ensure_bucket()
        self._retry(
            f"upload {key}",
            lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type),
        )
        return StoredObject(key, len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> StoredObject:
        check_key(key)
        self.ensure_bucket()
        size = path.stat().st_size
        digest = _sha256_file(path)
        # fput_object sends one PUT (or a multipart upload that completes atomically).
        self._retry(
            f"upload {key}",
            lambda: self.client.fput_object(self.bucket, key, str(path), content_type=content_type),
        )
        return StoredObject(key, size, digest)

    def get_bytes(self, key: str) -> bytes:
        check_key(key)

        def get() -> bytes:
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._retry(f"download {key}", get)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` by one ranged GET (fewer at the end of the object)."""
        check_key(key)
        if length <= 0:
            return b""

        def get() -> bytes:
            resp = self.client.get_object(self.bucket, key, offset=offset, length=length)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._retry(f"download {key} [{offset}:{offset + length}]", get)

    def download(self, key: str, path: Path) -> Path:
        check_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._retry(f"download {key}", lambda: self.client.fget_object(self.bucket, key, str(path)))
        return path

    def open_stream(self, key: str) -> Iterator[bytes]:
        check_key(key)
        resp = self._retry(f"download {key}", lambda: self.client.get_object(self.bucket, key))

        def gen() -> Iterator[bytes]:
            try:
                yield from resp.stream(CHUNK)
            finally:
                resp.close()
                resp.release_conn()

        return gen()

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectMissing:
            return False
        return True

    def size(self, key: str) -> int:
        check_key(key)
        stat = self._retry(f"stat {key}", lambda: self.client.stat_object(self.bucket, key))
        return int(stat.size or 0)

    def delete(self, key: str) -> None:
        check_key(key)
        self._retry(f"delete {key}", lambda: self.client.remove_object(self.bucket, key))

    def list(self, prefix: str) -> list[str]:
        check_key(prefix)
        self.ensure_bucket()
        return sorted(
            self._retry(
                f"list {prefix}",
                lambda: [
                    o.object_name
                    for o in self.client.list_objects(self.bucket, prefix=prefix + "/", recursive=True)
                    if o.object_name
                ],
            )
        )

    def presigned_get(self, key: str, seconds: int, filename: str | None = None) -> str:
        check_key(key)
        headers: dict[str, str | list[str] | tuple[str]] | None = (
            {"response-content-disposition": f'attachment; filename="{filename}"'} if filename else None
        )
        return self.public_client.presigned_get_object(
            self.bucket, key, expires=timedelta(seconds=seconds), response_headers=headers
        )

    def ping(self) -> None:
        self.ensure_bucket()
        self._retry("ping", lambda: self.client.bucket_exists(self.bucket))


_stores: dict[tuple[str, str], Store] = {}


def get_store(settings: Settings | None = None) -> Store:
    """The configured store (cached per backend and location)."""
    settings = settings or get_settings()
    ident = (
        (settings.store_backend, f"{settings.s3_endpoint}/{settings.s3_bucket}")
        if settings.store_backend == "s3"
        else ("local", str(settings.resolved_store_dir))
    )
    if ident not in _stores:
        _stores[ident] = (
            S3Store(settings) if settings.store_backend == "s3" else LocalStore(settings.resolved_store_dir)
        )
    return _stores[ident]


def reset_stores() -> None:
    _stores.clear()
