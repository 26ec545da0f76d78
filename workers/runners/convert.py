"""The `convert_dataset` kind: a folder dataset re-packed as tar shards or RecordIO, stored as a new
dataset of the job's owner (`result.dataset`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.db import session_scope
from jobs.models import Dataset, new_id
from jobs.params.convert import ConvertDatasetParams
from jobs.states import utcnow
from jobs.store import join_key
from workers.runners import params_as

if TYPE_CHECKING:
    from workers.context import JobContext


def run_convert_dataset(ctx: JobContext) -> dict[str, Any]:
    from jobs.errors import JobInputError
    from ml.data import DatasetError
    from ml.data.convert import convert_folder

    p = params_as(ctx, ConvertDatasetParams)
    if not p.dataset.startswith("dataset:"):
        raise JobInputError(f"convert_dataset converts an uploaded dataset:<id>, not {p.dataset}")
    folder = Path(ctx.open_dataset(p.dataset))
    out = Path(ctx.workdir) / "converted"
    try:
        files, images, identities = convert_folder(
            folder, out, p.to, p.samples_per_shard, p.name, progress=lambda n, total: ctx.progress(n, total)
        )
    except DatasetError as exc:
        raise JobInputError(f"dataset {p.dataset}: {exc}") from exc
    ds_id = new_id()
    prefix = f"datasets/{ds_id}"
    keys = []
    try:
        for f in files:
            keys.append(join_key(prefix, f.name))
            ctx.store.put_file(keys[-1], f)
        with session_scope(ctx.settings.resolved_database_url) as s:
            s.add(Dataset(
                id=ds_id, owner_id=ctx.owner_id, name=f"{p.dataset.removeprefix('dataset:')}-{p.to}",
                key_prefix=prefix, num_files=len(files), num_identities=identities,
                size_bytes=sum(f.stat().st_size for f in files), layout="identities",
                files={"keys": [f.name for f in files], "format": p.to, "images": images}, created_at=utcnow(),
            ))  # fmt: skip
    except BaseException:
        for key in keys:  # nothing half-stored
            ctx.store.delete(key)
        raise
    ctx.log(f"{p.dataset}: {images} images of {identities} identities -> {len(files)} {p.to} file(s)")
    return {"dataset": f"dataset:{ds_id}", "format": p.to, "files": len(files), "images": images,
            "identities": identities}  # fmt: skip
