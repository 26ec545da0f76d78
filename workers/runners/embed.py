"""The `embed` and `verify` kinds: bulk face embedding and two-image verification (`ml.faces.embed`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.errors import JobInputError
from jobs.params.embed import (
    DETECTOR_NAMES,
    EMBED_NAMES,
    LIMITS_NAMES,
    MAX_VERIFY_IMAGE_BYTES,
    EmbedParams,
    VerifyParams,
    parse_image_ref,
)
from workers.runners import Preempted, ml_config, params_as

if TYPE_CHECKING:
    from workers.context import JobContext


def _load_model(ctx: JobContext, model: str, weights: str | None) -> Any:
    """The `FaceModel` named by the params, or `JobInputError` saying what to upload."""
    from ml.faces.models import ModelLoadError, load_facenet, load_trained_model

    try:
        if model.startswith("facenet:"):
            path = Path(ctx.open_model(weights)) if weights else None
            return load_facenet(model.split(":", 1)[1], path, device=ctx.device)
        if model.startswith("model:") and ctx.model_info(model)["kind"] == "onnx":
            return load_onnx(ctx, model)
        return load_trained_model(Path(ctx.open_model(model)), model, device=ctx.device)
    except ModelLoadError as exc:
        raise JobInputError(f"model {model}: {exc}") from exc


def load_onnx(ctx: JobContext, model: str) -> Any:
    """An uploaded ONNX model (`POST /models` kind onnx) as a `FaceModel`, with its declared input.

    The file is checked again here (`ml.export.onnx_model.load_onnx_model`: standard operators only,
    no external data, the declared size, a probe batch) before onnxruntime runs it.
    """
    from ml.arcface.model import Normalization
    from ml.export.onnx_model import OnnxModelError, load_onnx_model

    info = ctx.model_info(model)
    if info["kind"] != "onnx":
        raise JobInputError(f"model {model} is an upload of kind {info['kind']}, not an onnx embedding model")
    meta = info["meta"]
    path = Path(ctx.open_model(model)) / info["filename"]
    try:
        norm = Normalization.from_json(meta["normalize"])
        return load_onnx_model(
            path,
            model,
            tuple(meta["input_size"]),
            int(meta["in_channels"]),
            norm,
            embedding_size=meta.get("embedding_size"),
            align_size=int(meta.get("align_size", 112)),
            warp=str(meta.get("warp", "none")),
            threshold=meta.get("threshold"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, OnnxModelError):
            raise JobInputError(f"model {model}: {exc}") from exc
        raise JobInputError(f"model {model}: its declared input is incomplete ({exc}); upload it again") from exc


def _detector_settings(p: EmbedParams | VerifyParams, faces: str) -> Any:
    from ml.faces.detect import DetectorSettings

    return ml_config(DetectorSettings, p, DETECTOR_NAMES, faces=faces)


def run_embed(ctx: JobContext) -> dict[str, Any]:
    """Embed every face of the dataset: embeddings.npy, index.csv, failures.csv, config.json."""
    from ml.core.errors import Stopped
    from ml.faces.decode import DecodeLimits, list_files
    from ml.faces.embed import EmbedSettings, EmbedSettingsError, embed_dataset

    p = params_as(ctx, EmbedParams)
    limits = ml_config(DecodeLimits, p, LIMITS_NAMES)
    settings = ml_config(EmbedSettings, p, EMBED_NAMES, detector=_detector_settings(p, p.faces), limits=limits)
    try:
        settings.validate()  # before anything is fetched: bad params fail in a second
    except EmbedSettingsError as exc:
        raise JobInputError(str(exc)) from exc
    if p.dataset.startswith("builtin:"):
        from ml.faces.decode import write_builtin_images

        folder = Path(ctx.open_dataset(p.dataset)) if p.dataset == "builtin:mnist" else None
        files = list_files(write_builtin_images(p.dataset, Path(ctx.workdir) / "builtin", folder))
    else:
        files = list_files(Path(ctx.open_dataset(p.dataset)))
    if not files:
        raise JobInputError(f"{p.dataset} holds no files")
    model = _load_model(ctx, p.model, p.weights)
    ctx.log(f"{p.dataset}: {len(files)} files; model {model.model_id} ({model.embedding_size}-d) on {ctx.device}")
    try:
        result = embed_dataset(files, model, settings, callbacks=ctx, device=ctx.device)
    except Stopped as exc:
        raise Preempted(str(exc)) from exc
    except EmbedSettingsError as exc:
        raise JobInputError(str(exc)) from exc
    result.config.update(dataset=p.dataset, params=p.model_dump(), job_id=ctx.job_id)
    paths = result.write(Path(ctx.workdir) / "embed")
    ctx.put_artifact("embeddings.npy", paths["embeddings.npy"], "application/octet-stream")
    ctx.put_artifact("index.csv", paths["index.csv"], "text/csv")
    ctx.put_artifact("failures.csv", paths["failures.csv"], "text/csv")
    ctx.put_artifact("config.json", paths["config.json"], "application/json")
    cfg = result.config
    return {
        "files": cfg["files"],
        "faces": cfg["faces"],
        "images_with_faces": cfg["images_with_faces"],
        "failures": cfg["failures"],
        "failure_reasons": cfg["failure_reasons"],
        "embedding_size": cfg["embedding_size"],
        "model": cfg["model"],
    }


def _image_bytes(ctx: JobContext, ref: str, name: str) -> bytes:
    parsed = parse_image_ref(ref)
    if isinstance(parsed, bytes):
        return parsed
    dataset, key = parsed
    if dataset == "input":
        from jobs.store import ObjectMissing

        try:
            data: bytes = ctx.store.get_bytes(f"jobs/{ctx.job_id}/inputs/{key}")
        except ObjectMissing:
            raise JobInputError(f"{name}: this job has no stored input {key!r} (POST /verify stores them)") from None
        if len(data) > MAX_VERIFY_IMAGE_BYTES:
            raise JobInputError(f"{name}: the stored image is over {MAX_VERIFY_IMAGE_BYTES} bytes")
        return data
    root = Path(ctx.open_dataset(dataset)).resolve()
    path = (root / key).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise JobInputError(f"{name}: no file {key!r} in {dataset}")
    if path.stat().st_size > MAX_VERIFY_IMAGE_BYTES:
        raise JobInputError(f"{name}: {key} is over {MAX_VERIFY_IMAGE_BYTES} bytes")
    return path.read_bytes()


def _evaluation(ctx: JobContext, model: str) -> dict[str, Any] | None:
    """What the model's metrics.json says about its threshold: the k-fold verification accuracy on
    its held-out pairs there (with its spread, the AUC and the number of pairs); None without one."""
    import json

    if not model.startswith("job:"):
        return None
    path = Path(ctx.open_model(model)) / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.is_file() and path.stat().st_size < 16 << 20 else {}
    except ValueError:
        return None
    keys = ("accuracy", "accuracy_std", "auc", "num_pairs")
    out = {k: metrics[k] for k in keys if isinstance(metrics.get(k), int | float)}
    return out if "accuracy" in out else None


VIEW_SIDE = 640  # the longest side of the image a page draws the face on


def _png(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _face_summary(ctx: JobContext, name: str, face: Any) -> dict[str, Any]:
    """Box, landmarks and image size of the face found in one image; as PNG artifacts its aligned
    crop (the pixels the model embedded, `crops/<name>.png`) and the image as decoded, at most
    VIEW_SIDE a side (`views/<name>.png`: what a page draws the box on, whatever the upload's format)."""
    from PIL import Image

    row = face.row
    out = {k: row[k] for k in ("x1", "y1", "x2", "y2", "prob", "image_width", "image_height")}
    landmarks = [[float(row[f"lm{i}_x"]), float(row[f"lm{i}_y"])] for i in range(5)]
    # `detector=none` finds no landmarks (NaN): none to draw, rather than NaNs that JSON cannot carry
    out["landmarks"] = landmarks if all(math.isfinite(v) for point in landmarks for v in point) else None
    pixels = face.crop.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy().copy()
    out["crop"], out["view"] = f"crops/{name}.png", f"views/{name}.png"
    ctx.put_artifact(
        out["crop"], _png(Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)), "image/png"
    )
    view = Image.fromarray(face.image)
    view.thumbnail((VIEW_SIDE, VIEW_SIDE))
    ctx.put_artifact(out["view"], _png(view), "image/png")
    return out


def run_verify(ctx: JobContext) -> dict[str, Any]:
    """Embed the largest face of each image; cosine distance against the threshold -> same or not."""
    import numpy as np

    from ml.faces.decode import DecodeLimits, Failure
    from ml.faces.detect import make_detector
    from ml.faces.embed import EmbedSettings, embed_image_face

    p = params_as(ctx, VerifyParams)
    model = _load_model(ctx, p.model, p.weights)
    if p.threshold is not None:
        threshold, source = float(p.threshold), "params"
    elif model.threshold is not None:
        threshold, source = 1.0 - float(model.threshold), "model metrics"
    else:
        raise JobInputError(
            f"model {p.model} has no recorded threshold (no metrics.json with best_threshold/threshold): "
            "pass threshold (a cosine distance), or run an evaluate job first"
        )
    settings = ml_config(
        EmbedSettings,
        p,
        EMBED_NAMES,
        detector=_detector_settings(p, "largest"),
        limits=DecodeLimits(max_file_bytes=MAX_VERIFY_IMAGE_BYTES),
    )
    detector = make_detector(settings.detector, ctx.device)
    embeddings, faces = [], {}
    for name in ("image_a", "image_b"):
        data = _image_bytes(ctx, getattr(p, name), name)
        out = embed_image_face(data, model, settings, ctx.device, detector, key=name)
        if isinstance(out, Failure):
            raise JobInputError(f"{name}: {out.reason}: {out.detail}")
        embeddings.append(out.embedding)
        faces[name] = _face_summary(ctx, name, out)
    similarity = float(np.dot(embeddings[0].astype(np.float64), embeddings[1].astype(np.float64)))
    distance = 1.0 - similarity
    return {
        "distance": distance,
        "similarity": similarity,
        "threshold": threshold,
        "threshold_source": source,
        "same": distance <= threshold,
        "model": model.model_id,
        "faces": faces,
        "evaluation": _evaluation(ctx, p.model) if source == "model metrics" else None,
    }
