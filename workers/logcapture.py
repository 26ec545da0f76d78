"""A job attempt's log: its stdout, stderr and Python logging, captured while the runner runs.

`AttemptLog(store, job_id, attempt)` collects text; `capturing()` routes `sys.stdout`, `sys.stderr`
and a root logging handler into it for the block (and restores them after); a writer thread, started
by the first write, stores what accumulated as a new chunk every `CHUNK_SECONDS` (sooner at
`CHUNK_BYTES`), then the attempt's index (layout: `jobs.logstore`). `close()` stores the rest and
marks the index done. An attempt that prints nothing costs nothing: no thread, no store write.

What is captured: everything written to `sys.stdout`/`sys.stderr` (print, warnings, tqdm) and every
log record that reaches the root logger at the worker's log level, from any thread of the process
while one job runs in it (prefork, solo: its data loader and heartbeat threads too). Where several
jobs share a process (the threads pool), each job gets what its own thread writes. Not captured:
bytes written straight to file descriptors 1 and 2 (C extensions, subprocesses); they stay in the
worker's own log. Each line still reaches the worker's log as before (the streams are teed).
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from jobs.logstore import LogIndex, chunk_key, index_key
from jobs.redact import scrub_paths
from jobs.store import Store

log = logging.getLogger(__name__)
CHUNK_SECONDS = 1.0  # how stale the stored log may be while the job prints
CHUNK_BYTES = 64 * 1024  # a chunk is stored at once when this much waits
MAX_ATTEMPT_BYTES = 64 * 1024**2  # past this an attempt's log is cut (one note says so)
# Records these loggers emit are not the job's own output: Celery's echo of the teed stdout (already
# captured), this module's complaints (which would feed back into the log they are about), the
# JobContext's lines (`ctx.log`: already the job's `log` events) and the heartbeat's (the worker's health).
# So a job that prints nothing itself stores no log: no store write on the per-job path.
SKIP_LOGGERS = ("celery.redirected", __name__, "workers.context", "workers.heartbeat")
FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class AttemptLog:
    """The captured text of one attempt, stored in chunks as it grows."""

    def __init__(self, store: Store, job_id: str, attempt: int) -> None:
        self.store, self.job_id, self.attempt = store, job_id, attempt
        self.index = LogIndex()
        self._parts: list[bytes] = []
        self._pending = 0  # bytes in `_parts`
        self._written = 0  # bytes accepted in all (stored or pending)
        self._cut = False
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()  # one chunk write at a time, in order
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def offset(self) -> int:
        """The byte offset the next text will have in the attempt's log."""
        return self._written

    def write(self, text: str) -> None:
        """Add `text`; never raises into the job."""
        if not text or self._closed.is_set():
            return
        data = text.encode("utf-8", "replace")
        with self._lock:
            if self._written + len(data) > MAX_ATTEMPT_BYTES:
                if self._cut:
                    return
                self._cut = True
                data = f"\n[log cut at {MAX_ATTEMPT_BYTES} bytes; the rest of this attempt is not kept]\n".encode()
            self._parts.append(data)
            self._pending += len(data)
            self._written += len(data)
            full = self._pending >= CHUNK_BYTES
            start = self._thread is None
            if start:
                self._thread = threading.Thread(target=self._run, name=f"log-{self.job_id[:8]}", daemon=True)
        if start and self._thread is not None:
            self._thread.start()
        if full:
            self._wake.set()

    def write_exception(self, exc: BaseException, step: int | None = None) -> int:
        """The traceback of the exception that ended the attempt (server paths cut); its byte offset."""
        offset = self.offset
        where = f" at step {step}" if step is not None else ""
        text = "".join(traceback.format_exception(exc))
        self.write(f"\n[attempt {self.attempt} failed{where}]\n{scrub_paths(text)}")
        return offset

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(CHUNK_SECONDS)
            self._wake.clear()
            if not self._closed.is_set():
                self.flush()

    def flush(self, done: bool = False) -> None:
        """Store what waits as the next chunk, then the index; a store failure keeps it for the next try."""
        with self._store_lock:
            with self._lock:
                data, self._parts, self._pending = b"".join(self._parts), [], 0
            if not data and not done:
                return
            stored = False
            try:
                if data:
                    key = chunk_key(self.job_id, self.attempt, len(self.index.chunks) + 1)
                    self.store.put_bytes(key, data, "text/plain; charset=utf-8")
                    self.index.chunks.append((self.index.size, len(data)))
                stored = True
                self.index.done = done
                self.store.put_bytes(index_key(self.job_id, self.attempt), self.index.to_json(), "application/json")
            except Exception:
                log.exception("log chunk of job %s could not be stored (kept for the next try)", self.job_id)
                if data and not stored:
                    with self._lock:
                        self._parts.insert(0, data)
                        self._pending += len(data)

    def close(self) -> None:
        """Store the rest and mark the log done (when anything was written); idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
            self.flush(done=True)


class _Tee:
    """A text stream that copies every write to the running job's log, then to the stream it replaced."""

    def __init__(self, original: TextIO) -> None:
        self.original = original

    def write(self, text: str) -> int:
        target = _target()
        if target is not None:
            target.write(text)
        return self.original.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, encoding, isatty ... of the original
        return getattr(self.original, name)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(SKIP_LOGGERS):
            return
        target = _target()
        if target is None:
            return
        try:
            target.write(FORMAT.format(record) + "\n")
        except Exception:
            self.handleError(record)


_lock = threading.Lock()
_active: dict[int, AttemptLog] = {}  # thread id -> the log of the job that thread runs
_saved: tuple[Any, Any] | None = None
_handler = _Handler()


def _target() -> AttemptLog | None:
    """The log a write of this thread belongs to: its own job's, else the one job of this process."""
    active = _active
    own = active.get(threading.get_ident())
    if own is not None:
        return own
    if len(active) == 1:
        return next(iter(active.values()), None)
    return None


@contextmanager
def capturing(attempt_log: AttemptLog) -> Iterator[AttemptLog]:
    """Route this process's stdout, stderr and logging into `attempt_log` while the block runs."""
    global _saved
    me = threading.get_ident()
    with _lock:
        if not _active:
            _saved = (sys.stdout, sys.stderr)
            sys.stdout, sys.stderr = _Tee(sys.stdout), _Tee(sys.stderr)
            logging.getLogger().addHandler(_handler)
        _active[me] = attempt_log
    try:
        yield attempt_log
    finally:
        with _lock:
            _active.pop(me, None)
            if not _active and _saved is not None:
                logging.getLogger().removeHandler(_handler)
                sys.stdout, sys.stderr = _saved
                _saved = None
