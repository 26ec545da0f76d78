"""Builders for tests: rows written straight to the database, archives, hostile images, tiny job params.

`job_row` is the one job factory: `add_job` (through a stack), `make_job` (in a session the test
holds) and the browser seed's `add_job` all build their rows with it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import secrets
import struct
import tarfile
import zipfile
import zlib
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from jobs.keys import lookup_key
from jobs.models import ApiKey, Artifact, Job, JobEvent, new_id
from jobs.states import JobStatus, utcnow

ORL_IDS = ("s1", "s2", "s3")


def key_id(stack: Any, key: str | None = None) -> str:
    """The id of the stack's key (or of `key`)."""
    with stack.session() as s:
        row = lookup_key(s, key or stack.key, stack.settings)
        assert row is not None
        return row.id


# Params of a `train_embedding` job that makes a tiny ArcFace model in seconds on a CPU worker
# (se_resnet18 at base width 4, sklearn's digits at 16x16, one epoch): what the end-to-end tests
# of `invert` (platform, fault and browser) invert as `job:<id>`.
TINY_ARCFACE: dict[str, Any] = {
    "dataset": "builtin:digits",
    "backbone": "se_resnet18",
    "base_width": 4,
    "embedding_size": 32,
    "image_size": 16,
    "epochs": 1,
    "batch_size": 64,
    "split_by": "sample",
    "max_pairs": 100,
    "folds": 2,
    "seed": 0,
}


def job_row(
    owner: str,
    kind: str = "probe",
    status: JobStatus = JobStatus.QUEUED,
    created_at: datetime | None = None,
    **values: Any,
) -> Job:
    """A job row of `owner` in queue gpu with no params and three attempts (not yet in a session)."""
    now = created_at or utcnow()
    row: dict[str, Any] = {
        "id": new_id(), "kind": kind, "params": {}, "status": status, "queue": "gpu", "owner_id": owner,
        "created_at": now, "updated_at": now, "max_attempts": 3,
    }  # fmt: skip
    row.update(values)
    return Job(**row)


def add_job(
    stack: Any,
    owner: str,
    created_at: datetime | None = None,
    status: JobStatus = JobStatus.QUEUED,
    kind: str = "probe",
    **values: Any,
) -> str:
    """Insert a job row directly (no broker message); its id."""
    job = job_row(owner, kind, status, created_at, **values)
    with stack.session() as s:
        s.add(job)
    return job.id


def add_progress(stack: Any, job_id: str, points: list[dict[str, Any]], attempt: int = 1) -> None:
    """Progress events of `job_id` as a worker writes them: each point is `{"step": s, "total": t, metric: v}`."""
    with stack.session() as s:
        for data in points:
            s.add(JobEvent(job_id=job_id, attempt=attempt, type="progress", data=data))


def make_key(s: Session, name: str = "k") -> ApiKey:
    """A key row in the test's session (its secret is never needed: the test holds the session)."""
    key = ApiKey(name=name, prefix=secrets.token_hex(4), key_hash=secrets.token_hex(32))
    s.add(key)
    s.flush()
    return key


def make_job(s: Session, owner: ApiKey, kind: str = "probe", **values: Any) -> Job:
    """A job row of `owner` in the test's session, flushed; params default to a 64x64 probe."""
    job = job_row(owner.id, kind, params=values.pop("params", {"matmul_size": 64}), **values)
    s.add(job)
    s.flush()
    return job


def add_artifact(stack: Any, job_id: str, name: str, data: bytes, content_type: str, store: bool = True) -> None:
    """Store `data` as the job's artifact `name` (object + row), as a worker would."""
    key = f"jobs/{job_id}/{name}"
    if store:
        stack.store.put_bytes(key, data, content_type)
    with stack.session() as s:
        s.add(
            Artifact(
                id=new_id(),
                job_id=job_id,
                name=name,
                key=key,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                content_type=content_type,
            )
        )


def client_for(stack: Any, **overrides: Any) -> TestClient:
    """A TestClient of a new app whose settings differ from the stack's by `overrides`."""
    from api.app import create_app

    app = create_app(stack.settings.model_copy(update=overrides))
    return TestClient(app, headers={"X-API-Key": stack.key})


def orl_files(orl_dir: Path, ids: tuple[str, ...] = ORL_IDS, per_id: int = 3) -> dict[str, bytes]:
    """{"s1/1.pgm": bytes, ...}: a few real ORL faces."""
    return {f"{i}/{n}.pgm": (orl_dir / i / f"{n}.pgm").read_bytes() for i in ids for n in range(1, per_id + 1)}


def make_zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: dict[str, bytes], symlinks: dict[str, str] | None = None, mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit greyscale PNG of side x side pixels that compresses to a few tens of kB."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@functools.cache
def tiny_weights() -> bytes:
    """A real `torch.save` state dict (a 2x2 Linear's): the smallest file a `facenet` upload accepts."""
    import torch

    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, buf)
    return buf.getvalue()


def upload(client: TestClient, route: str, filename: str, data: bytes, **fields: str) -> Any:
    return client.post(route, files={"file": (filename, data, "application/octet-stream")}, data=fields)


def old(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)
