"""The `invert` kind: class representations from a trained ArcFace model (`ml.invert.inversion`)."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

from jobs.errors import JobInputError
from jobs.params.invert import InvertParams
from workers.runners import Preempted, ml_config, params_as

if TYPE_CHECKING:
    from workers.context import JobContext


def _png(image: Any) -> bytes:
    """PNG bytes of one (C, H, W) image in [0, 1]."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buf, format="PNG")
    return buf.getvalue()


def run_invert(ctx: JobContext) -> dict[str, Any]:
    """Invert the model named by `ctx.params.model`; artifacts: images/*.png, grid.png, tensors.pt, metrics.json."""
    import torch

    from ml.arcface.model import TrainedModelError
    from ml.arcface.train import load_trained
    from ml.core.errors import Stopped
    from ml.core.images import grid_png
    from ml.invert.inversion import InversionConfig, InversionError, invert

    p = params_as(ctx, InvertParams)
    try:
        backbone, weight, model_config = load_trained(ctx.open_model(p.model), device="cpu")
    except TrainedModelError as exc:
        raise JobInputError(f"model {p.model}: {exc}") from exc
    warp = model_config.get("warp") or "none"
    if warp != "none":
        ctx.log(f"invert: the model was trained in the {warp} space; the images are in that space")
    config = ml_config(
        InversionConfig,
        p,
        margin_degrees=float(model_config.get("margin") or 28.6),
        scale=float(model_config.get("scale") or 64.0),
        # Faster on CUDA; a checkpoint of either layout resumes in the other (ml.invert.inversion refits it).
        channels_last=ctx.device.type == "cuda",
    )
    image_size = model_config.get("image_size")
    try:
        result = invert(
            backbone,
            weight,
            config,
            normalize=model_config.get("normalize"),
            image_size=list(image_size) if image_size is not None else None,
            in_channels=model_config.get("in_channels"),
            device=ctx.device,
            callbacks=ctx,
        )
    except InversionError as exc:
        raise JobInputError(f"invert: {exc}") from exc
    except Stopped as exc:
        raise Preempted(f"inversion stopped at step {exc.step} (checkpoint saved)") from exc

    ipc = config.images_per_class
    for i, (image, label) in enumerate(zip(result.images, result.labels.tolist(), strict=True)):
        ctx.put_artifact(f"images/{label}_{i % ipc}.png", _png(image), "image/png")
    upscale = max(1, 64 // min(result.images.shape[2:]))
    ctx.put_artifact("grid.png", grid_png(result.images, ipc, upscale=upscale), "image/png")
    buf = io.BytesIO()
    torch.save({"images": result.images, "labels": result.labels, "classes": result.classes}, buf)
    ctx.put_artifact("tensors.pt", buf.getvalue(), "application/octet-stream")
    class_names = model_config.get("class_names") or []
    metrics = dict(result.metrics, model=p.model, warp=warp)
    for c, per in metrics["per_class"].items():
        if int(c) < len(class_names):
            per["name"] = class_names[int(c)]
    ctx.put_artifact("metrics.json", json.dumps(metrics, indent=2).encode(), "application/json")
    return {
        "target_prob": metrics["target_prob"],
        "accuracy": metrics["accuracy"],
        "bn_loss": metrics["bn_loss"],
        "iterations": metrics["iterations"],
        "seconds": metrics["seconds"],
        "classes": result.classes,
        "images": len(result.labels),
    }
