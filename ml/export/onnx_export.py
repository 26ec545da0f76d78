"""A trained backbone as `backbone.onnx`, and the parity of the ONNX model with the PyTorch one.

`export_backbone` writes the network alone, normalised (batch, C, H, W) -> unnormalised (batch, d),
with a dynamic batch axis; the input pipeline (resize, channels, warp, normalisation) stays outside,
recorded in the file's metadata (`facejobs.*` keys) and in the `onnx.json` beside it, so a loader
declares exactly what `ml.export.onnx_model.load_onnx_model` checks.

`parity_report` runs both models on the same real images: the largest absolute difference of their
raw outputs, and the verification accuracy of each (`ml.metrics.verification.evaluate_embeddings`,
same pairs, folds and seed) with the difference in points. `export_trained(folder, out, images,
labels)` is the whole `export` job for a `train_embedding` model folder; a runner only adds I/O.

The exporter is torch's TorchScript-based one (`dynamo=False`): on these plain convolutional
networks it gives the same graph numbers as the dynamo exporter (max |diff| ~1e-5 on both
backbones) in 1-5 s instead of 20-35 s on a 2-core machine. `dynamo=True` selects the other.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ml.arcface.model import Normalization, load_trained, preprocess
from ml.export.onnx_model import OnnxBackbone, check_onnx_bytes
from ml.metrics.verification import embed_images, evaluate_embeddings

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "embedding"
META_PREFIX = "facejobs."


class ExportError(RuntimeError):
    """The backbone could not be exported, or its ONNX file does not reproduce it."""


def input_spec(config: dict[str, Any]) -> dict[str, Any]:
    """What an ONNX loader must declare, from a trained model's config (`load_trained`'s)."""
    kwargs = config.get("backbone_kwargs") or {}
    return {
        "input_size": [int(v) for v in config["image_size"]],
        "in_channels": int(config["in_channels"]),
        "normalize": Normalization.from_json(config["normalize"]).to_json(),
        "warp": config.get("warp") or "none",
        "embedding_size": int(kwargs["embedding_size"]) if "embedding_size" in kwargs else None,
        "backbone": config.get("backbone"),
    }


@torch.no_grad()
def export_backbone(backbone: nn.Module, config: dict[str, Any], path: str | Path, dynamo: bool = False) -> Path:
    """Write `backbone` (eval mode, CPU copy) to `path` as ONNX with a dynamic batch axis; the path.

    Raises:
        ExportError: torch could not export it, or the written file fails `check_onnx_bytes`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = input_spec(config)
    h, w = spec["input_size"]
    was_training = backbone.training
    device = next(backbone.parameters()).device
    net = backbone.cpu().eval()
    example = torch.zeros(2, spec["in_channels"], h, w)
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter warns that it is deprecated in favour of dynamo; chosen on purpose.
            warnings.simplefilter("ignore", DeprecationWarning)
            if dynamo:
                program = torch.onnx.export(
                    net,
                    (example,),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    dynamo=True,
                    verbose=False,
                )
                if program is None:
                    raise ExportError("torch's dynamo exporter returned no program")
                program.save(str(path))
            else:
                torch.onnx.export(
                    net,
                    (example,),
                    str(path),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,
                )
    except Exception as exc:  # torch.onnx raises many types (unsupported op, tracing errors)
        raise ExportError(f"torch could not export the {spec['backbone']} backbone to ONNX: {str(exc)[:300]}") from None
    finally:
        backbone.to(device).train(was_training)
    model = onnx.load(str(path))
    for key, value in spec.items():
        model.metadata_props.add(key=META_PREFIX + key, value=json.dumps(value))
    onnx.save(model, str(path))
    check_onnx_bytes(path.read_bytes(), path.name)  # what we write must pass what we read
    return path


def parity_report(
    backbone: nn.Module,
    onnx_path: str | Path,
    images01: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    config: dict[str, Any],
    flip_tta: bool = False,
    max_pairs: int = 3000,
    folds: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """PyTorch against ONNX on the same real [0, 1] images through the model's input pipeline.

    Returns:
        {"max_abs_diff" (raw outputs), "max_abs_diff_normalized" (unit embeddings), "accuracy_torch",
        "accuracy_onnx", "accuracy_diff_points" (100 * |difference|), "threshold_torch",
        "threshold_onnx", "num_images", "num_pairs"}.
    """
    norm = Normalization.from_json(config["normalize"])
    x = preprocess(
        images01, tuple(config["image_size"]), int(config["in_channels"]), norm, config.get("warp") or "none"
    )
    onnx_net = OnnxBackbone(Path(onnx_path).read_bytes(), threads=torch.get_num_threads())
    backbone.eval()
    with torch.no_grad():
        device = next(backbone.parameters()).device
        raw_t = torch.cat([backbone(x[i : i + 256].to(device)).float().cpu() for i in range(0, x.shape[0], 256)])
        raw_o = torch.cat([onnx_net(x[i : i + 256]) for i in range(0, x.shape[0], 256)])
    emb_t = embed_images(backbone, x, flip_tta=flip_tta, device=device)
    emb_o = embed_images(onnx_net, x, flip_tta=flip_tta)
    rep_t = evaluate_embeddings(emb_t, labels, folds=folds, max_pairs=max_pairs, seed=seed)
    rep_o = evaluate_embeddings(emb_o, labels, folds=folds, max_pairs=max_pairs, seed=seed)
    acc_t, acc_o = float(rep_t.metrics["accuracy"]), float(rep_o.metrics["accuracy"])  # type: ignore[arg-type]
    return {
        "max_abs_diff": float((raw_t - raw_o).abs().max()),
        "max_abs_diff_normalized": float((emb_t - emb_o).abs().max()),
        "accuracy_torch": acc_t,
        "accuracy_onnx": acc_o,
        "accuracy_diff_points": 100.0 * abs(acc_t - acc_o),
        "threshold_torch": rep_t.metrics["threshold"],
        "threshold_onnx": rep_o.metrics["threshold"],
        "num_images": int(x.shape[0]),
        "num_pairs": int(rep_t.metrics["num_pairs"]),  # type: ignore[arg-type]
    }


def export_trained(
    folder: str | Path,
    out_folder: str | Path,
    images01: torch.Tensor,
    labels: torch.Tensor | np.ndarray,
    max_diff: float = 1e-3,
    max_accuracy_points: float = 0.1,
    flip_tta: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """The `export` job: backbone.onnx and onnx.json in `out_folder`, parity on held-out `images01`.

    Returns the result dict: the parity figures, "passed" (max_abs_diff <= max_diff and the
    accuracies within max_accuracy_points), the bounds, the input spec and the export time.

    Raises:
        TrainedModelError: `folder` is not a trained model (from `load_trained`).
        ExportError: the export failed.
    """
    backbone, _, config = load_trained(folder)
    out = Path(out_folder)
    started = time.monotonic()
    path = export_backbone(backbone, config, out / "backbone.onnx")
    seconds = time.monotonic() - started
    parity = parity_report(backbone, path, images01, labels, config, flip_tta=flip_tta, seed=seed)
    passed = parity["max_abs_diff"] <= max_diff and parity["accuracy_diff_points"] <= max_accuracy_points
    result = {
        **parity,
        "passed": bool(passed),
        "bounds": {"max_abs_diff": max_diff, "accuracy_diff_points": max_accuracy_points},
        "input": input_spec(config),
        "export_seconds": seconds,
        "onnx_bytes": path.stat().st_size,
        "opset": OPSET,
    }
    (out / "onnx.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    return result
