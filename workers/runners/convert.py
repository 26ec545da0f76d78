"""The `convert_dataset` kind: a folder dataset re-packed as tar shards or RecordIO, stored as a new
dataset of the job's owner (`result.dataset`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.params.convert import ConvertDatasetParams
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
    made = ctx.add_dataset(
        f"{p.dataset.removeprefix('dataset:')}-{p.to}", files, identities, {"format": p.to, "images": images}
    )
    ctx.log(f"{p.dataset}: {images} images of {identities} identities -> {len(files)} {p.to} file(s)")
    return {"dataset": made, "format": p.to, "files": len(files), "images": images,
            "identities": identities}  # fmt: skip
