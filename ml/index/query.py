"""One image -> every face in it: box, landmarks, score, aligned crop (PNG) and unit embedding.

What `POST /search` runs on the worker (the `search_one` kind): unlike `ml.faces.embed.embed_image`
(the largest face, for verification), every face found is embedded, biggest first, up to `max_faces`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ml.faces.align import AlignError
from ml.faces.decode import Failure, decode_bytes
from ml.faces.detect import FaceDetector
from ml.faces.embed import EmbedSettings
from ml.faces.models import FaceModel
from ml.faces.pipeline import face_crops

MAX_FACES = 20


@dataclass(frozen=True)
class ImageFace:
    """One face of the image, in original-image pixels."""

    box: list[float]
    landmarks: list[list[float]] | None
    score: float
    crop_png: bytes
    embedding: np.ndarray

    def to_json(self) -> dict[str, Any]:
        return {"box": self.box, "landmarks": self.landmarks, "score": self.score}


def _png(crop01: torch.Tensor) -> bytes:
    arr = crop01.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def image_faces(
    data: bytes,
    model: FaceModel,
    detector: FaceDetector,
    settings: EmbedSettings | None = None,
    max_faces: int = MAX_FACES,
    key: str = "image",
) -> list[ImageFace] | Failure:
    """Every face of an encoded image (largest first, at most `max_faces`), or the `Failure` of the image.

    An image without a face gives an empty list (not a failure): the caller decides what that means.
    """
    settings = settings or EmbedSettings()
    cfg = settings.pipeline_config(model)
    decoded = decode_bytes(key, data, None, settings.limits)
    if isinstance(decoded, Failure):
        return decoded
    prep = detector.prepare(decoded)
    if isinstance(prep, str):
        return Failure(key, prep.reason, prep)
    found = detector.detect([prep])[0]
    found = sorted(found, key=lambda d: -float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))[:max_faces]
    out: list[ImageFace] = []
    for det in found:
        try:
            crop = face_crops(detector, model, prep, [det], cfg)
        except AlignError:
            continue  # landmarks without a usable transform: not a face we can embed
        emb = model.embed(crop, cfg.flip_tta)[0].cpu().numpy().astype(np.float32)
        lm = det.landmarks
        landmarks = None if not np.isfinite(lm).all() else [[round(float(x), 2), round(float(y), 2)] for x, y in lm]
        box = [round(float(v), 2) for v in det.box]
        score = float(det.prob) if math.isfinite(float(det.prob)) else 0.0
        out.append(ImageFace(box, landmarks, round(score, 6), _png(crop[0]), emb))
    return out
