"""The JobContext: what a kind's runner sees of the platform while it runs.

Every write is fenced by (job id, attempt, lease owner): a worker that lost its lease cannot touch
the new attempt's state. Bookkeeping failures (a progress write, a log line) are logged and never
raised into the job; losing the lease turns `should_stop()` on.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from jobs.db import session_scope
from jobs.errors import JobInputError
from jobs.models import Artifact, Dataset, Job, JobEvent, Model
from jobs.settings import Settings
from jobs.states import JobStatus, fenced_update, renew_lease
from jobs.store import Store, join_key

log = logging.getLogger(__name__)
T = TypeVar("T")
# A write the job cannot do without (a checkpoint's record, an artifact's row) is tried again on a fresh
# connection when the database dropped the pooled one (restart, failover, terminated backend): for about
# 2 s in all (0.2 + 0.4 + 0.6 + 0.8), then the job is requeued as after any transient error.
DB_WRITE_TRIES = 5
DB_RETRY_SECONDS = 0.2


class JobContext:
    """The runner's handle on its job: progress, logs, cancel, checkpoints, artifacts, inputs."""

    def __init__(
        self,
        job: Job,
        attempt: int,
        worker_id: str,
        params: BaseModel,
        settings: Settings,
        store: Store,
        device: Any,
        workdir: Path,
        drain_event: threading.Event | None = None,
    ) -> None:
        self.job_id = job.id
        self.kind = job.kind
        self.owner_id = job.owner_id
        self.attempt = attempt
        self.worker_id = worker_id
        self.params = params
        self.settings = settings
        self.store = store
        self.device = device
        self.workdir = workdir
        self.checkpoint_key: str | None = job.checkpoint_key
        self._db = settings.resolved_database_url
        self._cancel = threading.Event()
        self._lost = threading.Event()
        self._drain = drain_event or threading.Event()
        self._last_progress_write = 0.0
        self._pending: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # ---- state -------------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def lease_lost(self) -> bool:
        return self._lost.is_set()

    @property
    def draining(self) -> bool:
        return self._drain.is_set()

    def should_stop(self) -> bool:
        """True when the job was cancelled, the lease was lost, or the worker is shutting down."""
        return self._cancel.is_set() or self._lost.is_set() or self._drain.is_set()

    def _write(self, write: Callable[[Session], T]) -> T:
        """`write` in one transaction; again (it must be idempotent) if the connection was lost under it."""
        for n in range(1, DB_WRITE_TRIES + 1):
            try:
                with session_scope(self._db) as s:
                    return write(s)
            except OperationalError as exc:
                if n == DB_WRITE_TRIES:
                    raise
                log.warning("job %s: database write failed (%s); trying again", self.job_id, str(exc)[:200])
                time.sleep(DB_RETRY_SECONDS * n)
        raise AssertionError("unreachable")

    def _fenced(self, **values: Any) -> bool:
        ok = self._write(lambda s: fenced_update(s, self.job_id, self.attempt, self.worker_id, **values))
        if not ok:
            self._lost.set()
        return ok

    # ---- heartbeat (called from the heartbeat thread) ---------------------------------------
    def heartbeat(self) -> None:
        """Renew the lease, flush throttled progress, and read the cancel flag."""
        with self._lock:
            pending, self._pending = self._pending, None
        values = pending or {}
        try:
            with session_scope(self._db, durable=False) as s:
                ours, cancel = renew_lease(
                    s, self.job_id, self.attempt, self.worker_id, self.settings.lease_seconds, **values
                )
        except Exception:
            log.exception("heartbeat of job %s failed; will retry", self.job_id)
            if pending:
                with self._lock:
                    self._pending = self._pending or pending
            return
        if not ours:
            log.warning("job %s: lease lost (attempt %s)", self.job_id, self.attempt)
            self._lost.set()
        if cancel:
            self._cancel.set()

    # ---- what runners call --------------------------------------------------------------------
    def progress(self, step: int, total: int, **metrics: float) -> None:
        """Record progress; at most one database write per `progress_min_interval_seconds`."""
        clean = {k: float(v) for k, v in metrics.items()}
        now = time.monotonic()
        values = {"progress_step": int(step), "progress_total": int(total), "metrics": clean}
        if now - self._last_progress_write < self.settings.progress_min_interval_seconds and step < total:
            with self._lock:
                self._pending = values
            return
        self._last_progress_write = now
        with self._lock:
            self._pending = None
        try:
            with session_scope(self._db, durable=False) as s:
                ok = fenced_update(s, self.job_id, self.attempt, self.worker_id, **values)
                if ok:
                    s.add(
                        JobEvent(
                            job_id=self.job_id,
                            attempt=self.attempt,
                            type="progress",
                            data={"step": int(step), "total": int(total), **clean},
                        )
                    )
            if not ok:
                self._lost.set()
        except Exception:
            log.exception("progress write of job %s failed (the job goes on)", self.job_id)

    def log(self, message: str) -> None:
        """A line in the job's event log."""
        log.info("job %s: %s", self.job_id, message)
        self.event("log", message)

    def event(self, type_: str, message: str, data: dict[str, Any] | None = None) -> None:
        try:
            with session_scope(self._db, durable=False) as s:
                s.add(JobEvent(job_id=self.job_id, attempt=self.attempt, type=type_, message=message, data=data))
        except Exception:
            log.exception("event write of job %s failed (the job goes on)", self.job_id)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write `checkpoint.pt` as one complete object, then record its key and step in the job row."""
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        key = join_key(f"jobs/{self.job_id}", "checkpoint.pt")
        self.store.put_bytes(key, buf.getvalue(), "application/octet-stream")
        step = state.get("step", state.get("epoch"))
        self.checkpoint_key = key
        self._fenced(checkpoint_key=key, checkpoint_step=int(step) if step is not None else None)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state of the last checkpoint of this job (from any earlier attempt), or None.

        Raises:
            JobInputError: the stored checkpoint holds code or is not a checkpoint (the job fails).
        """
        if not self.checkpoint_key:
            return None
        from ml.core.safe_load import UnsafeFileError, load_checkpoint_bytes

        data = self.store.get_bytes(self.checkpoint_key)
        try:
            # Read as data only: an object in the store is not proof that this platform wrote it.
            state = load_checkpoint_bytes(data, self.checkpoint_key)
        except UnsafeFileError as exc:
            raise JobInputError(f"cannot resume from the checkpoint: {exc}") from None
        self.log(f"resumed from checkpoint at step {state.get('step', state.get('epoch'))}")
        return state

    def put_artifact(self, name: str, data: bytes | Path, content_type: str = "application/octet-stream") -> Artifact:
        """Store an artifact under `jobs/{id}/{name}` and record it (replacing one of the same name)."""
        key = join_key(f"jobs/{self.job_id}", name)
        if isinstance(data, Path):
            obj = self.store.put_file(key, data, content_type)
        else:
            obj = self.store.put_bytes(key, data, content_type)

        def record(s: Session) -> Artifact:
            s.execute(delete(Artifact).where(Artifact.job_id == self.job_id, Artifact.name == name))
            art = Artifact(
                job_id=self.job_id, name=name, key=key, size=obj.size, sha256=obj.sha256, content_type=content_type
            )
            s.add(art)
            return art

        return self._write(record)

    def preview(self, name: str, png: bytes) -> None:
        """Replace the live preview `previews/{name}.png`; the dashboard shows the newest."""
        try:
            self.put_artifact(f"previews/{name}.png", png, "image/png")
        except Exception:
            log.exception("preview of job %s failed (the job goes on)", self.job_id)

    # ---- inputs ---------------------------------------------------------------------------------
    def _cache(self, *parts: str) -> Path:
        path = self.settings.home.resolve().joinpath("cache", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _fetch_prefix(self, prefix: str, keys: list[str], dest: Path) -> Path:
        done = dest / ".complete"
        if done.exists():
            return dest
        for key in keys:
            rel = key[len(prefix) + 1 :]
            self.store.download(key, dest / rel)
        done.write_text("ok")
        return dest

    def open_dataset(self, ref: str) -> Path:
        """A local folder holding the dataset `ref` (builtin:mnist, builtin:digits or dataset:<id>)."""
        if ref == "builtin:mnist":
            return self.settings.mnist_dir
        if ref.startswith("builtin:"):
            return Path(ref)
        if not ref.startswith("dataset:"):
            raise JobInputError(f"unknown dataset reference {ref!r}: use builtin:<name> or dataset:<id>")
        ds_id = ref.removeprefix("dataset:")
        with session_scope(self._db) as s:
            ds = s.get(Dataset, ds_id)
            if ds is None or ds.owner_id != self.owner_id:
                raise JobInputError(f"dataset {ds_id} not found")
            prefix, keys = ds.key_prefix, list(ds.files.get("keys", []))
        full = [join_key(prefix, k) for k in keys] if keys else self.store.list(prefix)
        return self._fetch_prefix(prefix, full, self._cache("datasets", ds_id))

    def open_model(self, ref: str) -> Path:
        """A local folder holding model `ref`: a job's artifacts (job:<id>) or an upload (model:<id>)."""
        if ref.startswith("job:"):
            src_id = ref.removeprefix("job:").split("/", 1)[0]
            with session_scope(self._db) as s:
                job = s.get(Job, src_id)
                if job is None or job.owner_id != self.owner_id:
                    raise JobInputError(f"model job {src_id} not found")
                if job.status != JobStatus.SUCCEEDED:
                    raise JobInputError(f"model job {src_id} has not succeeded (status {job.status.value})")
                keys = list(
                    s.execute(
                        select(Artifact.key).where(Artifact.job_id == src_id, ~Artifact.name.startswith("previews/"))
                    ).scalars()
                )
            return self._fetch_prefix(f"jobs/{src_id}", keys, self._cache("jobs", src_id))
        if ref.startswith("model:"):
            model_id = ref.removeprefix("model:")
            with session_scope(self._db) as s:
                model = s.get(Model, model_id)
                if model is None or model.owner_id != self.owner_id:
                    raise JobInputError(f"model {model_id} not found")
                key = model.key
            prefix = key.rsplit("/", 1)[0]
            return self._fetch_prefix(prefix, [key], self._cache("models", model_id))
        raise JobInputError(f"unknown model reference {ref!r}: use job:<id> or model:<id>")
