"""Where a job attempt's log lives in the store, and how it is read back from any byte offset.

The worker writes each attempt's captured output (stdout, stderr, Python logging, the traceback of a
failure) as numbered chunks, `jobs/{id}/logs/attempt-{n}/000001.txt`, `000002.txt` ..., and after
each chunk an index, `jobs/{id}/logs/attempt-{n}/index.json`: `{"chunks": [[offset, size], ...],
"size": total bytes, "done": bool}`. A chunk is written once and never changed, so a reader that
has the index can fetch exactly the chunks that hold the bytes it has not seen. Both sides (the
worker's `workers.logcapture`, the API's `api.routes.logs`) use this module, so the layout is
written down once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from jobs.store import ObjectMissing, Store

INDEX_NAME = "index.json"


def attempt_prefix(job_id: str, attempt: int) -> str:
    return f"jobs/{job_id}/logs/attempt-{attempt}"


def chunk_key(job_id: str, attempt: int, number: int) -> str:
    """The key of chunk `number` (counted from 1) of an attempt's log."""
    return f"{attempt_prefix(job_id, attempt)}/{number:06d}.txt"


def index_key(job_id: str, attempt: int) -> str:
    return f"{attempt_prefix(job_id, attempt)}/{INDEX_NAME}"


@dataclass
class LogIndex:
    """The chunks of one attempt's log so far: `chunks[i]` is (byte offset, size) of chunk i + 1."""

    chunks: list[tuple[int, int]] = field(default_factory=list)
    done: bool = False

    @property
    def size(self) -> int:
        return self.chunks[-1][0] + self.chunks[-1][1] if self.chunks else 0

    def to_json(self) -> bytes:
        return json.dumps({"chunks": [list(c) for c in self.chunks], "size": self.size, "done": self.done}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LogIndex:
        raw: Any = json.loads(data)
        chunks = [(int(o), int(n)) for o, n in raw.get("chunks", [])]
        return cls(chunks=chunks, done=bool(raw.get("done", False)))


def read_index(store: Store, job_id: str, attempt: int) -> LogIndex | None:
    """The attempt's index, or None when it printed nothing (no index was ever written)."""
    try:
        return LogIndex.from_json(store.get_bytes(index_key(job_id, attempt)))
    except ObjectMissing:
        return None
    except Exception as exc:
        # Nothing stored at all yet: on S3 the bucket comes with the first write.
        if getattr(exc, "code", None) == "NoSuchBucket":
            return None
        raise


def read_from(store: Store, job_id: str, attempt: int, index: LogIndex, offset: int, limit: int) -> bytes:
    """Up to about `limit` bytes of the attempt's log from byte `offset` (whole chunks, cut to `limit`)."""
    out = bytearray()
    for number, (start, size) in enumerate(index.chunks, start=1):
        if start + size <= offset:
            continue
        data = store.get_bytes(chunk_key(job_id, attempt, number))
        out += data[max(0, offset - start) :]
        if len(out) >= limit:
            break
    if len(out) <= limit:
        return bytes(out)
    return utf8_prefix(bytes(out[:limit]))


def utf8_prefix(data: bytes) -> bytes:
    """`data` without a UTF-8 sequence cut at its end (chunks hold whole characters; a `limit` may not)."""
    end = len(data)
    back = 0
    while back < 3 and end - back > 0 and (data[end - back - 1] & 0xC0) == 0x80:
        back += 1
    if end - back > 0 and data[end - back - 1] >= 0xC0:
        lead = data[end - back - 1]
        need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if back + 1 < need:
            return data[: end - back - 1]
    return data
