"""The `export` kind: a train_embedding backbone as backbone.onnx, parity checked in onnxruntime (`ml.export`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.errors import JobInputError
from jobs.params.export import ExportParams
from workers.runners import params_as
from workers.runners.embedding import _load

if TYPE_CHECKING:
    from workers.context import JobContext


def _parity_images(ctx: JobContext, p: ExportParams, config: dict[str, Any]) -> tuple[Any, Any, str]:
    """(images01, labels, what they are): the model's held-out split of its dataset, or all of `p.dataset`."""
    import numpy as np

    from ml.data import DatasetError, make_split

    ref = p.dataset or config.get("dataset")
    if not isinstance(ref, str) or not ref.startswith(("dataset:", "builtin:")):
        raise JobInputError(
            f"the model was trained on {str(ref)[:100]!r}, not a dataset of this platform: give dataset for the parity"
        )
    channels = "grey" if int(config["in_channels"]) == 1 else "rgb"
    data = _load(ctx, ref, tuple(config["image_size"]), channels)
    note = f"all {len(data)} images of {ref}"
    if p.use_split == "held_out" and ref == config.get("dataset"):
        split_cfg = config.get("split") or {}
        if config.get("dataset_size") != len(data):
            raise JobInputError(
                f"{ref} has {len(data)} images but the model was trained on {config.get('dataset_size')}: its "
                "held-out split cannot be rebuilt; use use_split='all'"
            )
        try:
            split = make_split(data.labels, split_cfg["by"], split_cfg["test_fraction"], split_cfg["seed"])
        except (DatasetError, KeyError) as exc:
            raise JobInputError(f"the model's split cannot be rebuilt: {exc}") from exc
        data = data.subset(split.test)
        note = f"the model's held-out split of {ref} (by {split.by}, {len(data)} images)"
    if len(data) > p.max_images:
        keep = np.sort(np.random.default_rng(p.seed).choice(len(data), p.max_images, replace=False))
        data = data.subset(keep.tolist())
        note += f", {p.max_images} of them"
    return data.images, data.labels, note


def run_export(ctx: JobContext) -> dict[str, Any]:
    """backbone.onnx and onnx.json; the result holds the parity figures and whether they are in bounds."""
    from ml.arcface.model import TrainedModelError, load_trained
    from ml.export.onnx_export import ExportError, export_trained
    from ml.metrics.verification import VerificationError

    p = params_as(ctx, ExportParams)
    folder = Path(ctx.open_model(p.model))
    try:
        _, _, config = load_trained(folder)
    except TrainedModelError as exc:
        raise JobInputError(f"model {p.model}: {exc}") from exc
    images, labels, note = _parity_images(ctx, p, config)
    ctx.log(f"exporting {p.model} ({config.get('backbone')}); parity on {note}")
    ctx.progress(0, 1)
    out = Path(ctx.workdir) / "export"
    try:
        result = export_trained(
            folder, out, images, labels, p.max_abs_diff, p.max_accuracy_points, flip_tta=p.flip_tta, seed=p.seed
        )
    except (ExportError, VerificationError) as exc:
        raise JobInputError(f"export: {exc}") from exc
    result.update(model=p.model, parity_images=note)
    ctx.put_artifact("backbone.onnx", out / "backbone.onnx", "application/octet-stream")
    ctx.put_artifact("onnx.json", json.dumps(result, indent=2, sort_keys=True).encode(), "application/json")
    ctx.progress(1, 1)
    return result
