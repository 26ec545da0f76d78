"""Inputs: the datasets and models a job's params name, fetched from the store into the worker's cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from jobs.dataset_status import is_ready
from jobs.db import session_scope
from jobs.errors import JobInputError
from jobs.models import Artifact, Dataset, Job, Model
from jobs.states import JobStatus
from jobs.store import join_key
from workers.context.base import ContextBase


class Inputs(ContextBase):
    """`open_dataset` and `open_model`: a local folder for a ref, checked against the job's owner again."""

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
            if ds is None or ds.owner_id != self.owner_id or not is_ready(ds.files):
                raise JobInputError(f"dataset {ds_id} not found")
            prefix, keys = ds.key_prefix, list(ds.files.get("keys", []))
        full = [join_key(prefix, k) for k in keys] if keys else self.store.list(prefix)
        return self._fetch_prefix(prefix, full, self._cache("datasets", ds_id))

    def dataset_objects(self, ref: str) -> tuple[str, list[str]]:
        """(store prefix, relative keys) of the caller's dataset `ref`, for readers that stream its
        objects (ranged reads, shard by shard) instead of `open_dataset`'s whole download."""
        ds_id = ref.removeprefix("dataset:")
        with session_scope(self._db) as s:
            ds = s.get(Dataset, ds_id)
            if not ref.startswith("dataset:") or ds is None or ds.owner_id != self.owner_id or not is_ready(ds.files):
                raise JobInputError(f"dataset {ds_id} not found")
            return ds.key_prefix, list(ds.files.get("keys", []))

    def add_dataset(self, name: str, files: list[Path], identities: int, meta: dict[str, Any]) -> str:
        """Store `files` as a new dataset of the job's owner (flat under datasets/<id>/); its ref.
        Nothing half-stored: a failure deletes what was put."""
        from jobs.models import new_id
        from jobs.states import utcnow

        ds_id = new_id()
        prefix, keys = f"datasets/{ds_id}", []
        try:
            for f in files:
                keys.append(join_key(prefix, f.name))
                self.store.put_file(keys[-1], f)
            with session_scope(self._db) as s:
                s.add(Dataset(
                    id=ds_id, owner_id=self.owner_id, name=name, key_prefix=prefix, num_files=len(files),
                    num_identities=identities, size_bytes=sum(f.stat().st_size for f in files), layout="identities",
                    files={"keys": [f.name for f in files], **meta}, created_at=utcnow(),
                ))  # fmt: skip
        except BaseException:
            for key in keys:
                self.store.delete(key)
            raise
        return f"dataset:{ds_id}"

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

    def model_info(self, ref: str) -> dict[str, Any]:
        """{"kind", "filename", "meta"} of the caller's uploaded model `ref` ("model:<id>"), e.g. an ONNX
        model's declared input; `JobInputError` when it is not the job owner's."""
        model_id = ref.removeprefix("model:")
        with session_scope(self._db) as s:
            model = s.get(Model, model_id)
            if not ref.startswith("model:") or model is None or model.owner_id != self.owner_id:
                raise JobInputError(f"model {model_id} not found")
            return {"kind": model.kind, "filename": model.filename, "meta": dict(model.meta or {})}
