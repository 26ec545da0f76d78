"""Params of the `embed` (bulk face embedding) and `verify` (two images) kinds; no torch, no ml import."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.kindspec import KindSpec, ml_defaults
from jobs.refs import DATASET_FILE, DATASET_REF_PATTERN, WEIGHTS_REF_PATTERN, ref_pattern

# Settings shared with ml.faces (DetectorSettings, EmbedSettings, DecodeLimits): one default each, in
# ml/faces/defaults.json; some carry another name here (detector is DetectorSettings.method).
DETECTOR = ml_defaults("faces", "DetectorSettings")
EMBED = ml_defaults("faces", "EmbedSettings")
LIMITS = ml_defaults("faces", "DecodeLimits")
# Params fields that ml.faces names otherwise; None: the runner builds that setting from the field
# (EmbedSettings.detector is the DetectorSettings made from these params, not the "mtcnn" choice).
DETECTOR_NAMES: dict[str, str | None] = {"detector": "method", "detect_batch_size": "batch_size"}
EMBED_NAMES: dict[str, str | None] = {"detector": None}
LIMITS_NAMES: dict[str, str | None] = {"max_image_pixels": "max_pixels", "min_image_size": "min_size"}

# "facenet:<weights>" (InceptionResnetV1) or "job:<id>" (a train_embedding job's backbone).
# "model:<id>": an uploaded ONNX embedding model (POST /models kind onnx, its input declared there).
EMBED_MODEL_PATTERN = ref_pattern("job", "model", also=("facenet:vggface2", "facenet:casia-webface"))
WARP_SPACES = Literal["none", "roi_tanh", "roi_tanh_polar", "roi_tanh_circular"]
MAX_VERIFY_IMAGE_BYTES = 8 * 1024 * 1024
# An image POST /verify received and stored under the job's prefix (jobs/<id>/inputs/<name>).
INPUT_NAMES = ("image_a", "image_b")
_INPUT_REF = re.compile(r"^input:(image_a|image_b)$")


class _ModelChoice(BaseModel):
    """Which network embeds the faces."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "facenet:vggface2",
        pattern=EMBED_MODEL_PATTERN,
        description='"facenet:vggface2" / "facenet:casia-webface" (InceptionResnetV1, 160x160, 512-d) or '
        '"job:<id>" (a backbone trained by a train_embedding job) or "model:<id>" (an uploaded ONNX '
        "embedding model).",
    )
    weights: str | None = Field(
        None,
        pattern=WEIGHTS_REF_PATTERN,
        description='FaceNet only: "model:<id>" of the uploaded InceptionResnetV1 weights '
        "(facenet-pytorch's 20180402-114759-vggface2.pt or 20180408-102900-casia-webface.pt). None "
        "downloads them, which fails on a worker without internet.",
    )
    detector: Literal["mtcnn", "none"] = Field(
        DETECTOR["method"],
        description='"mtcnn": detect and align faces; "none": the images are already cropped or aligned '
        "(digits, aligned face crops): each is used whole, resized to the model's input.",
    )
    min_face_size: int = Field(
        DETECTOR["min_face_size"], ge=12, le=2000, description="MTCNN: smallest face looked for, in pixels."
    )
    upscale_below: int = Field(
        DETECTOR["upscale_below"],
        ge=0,
        le=2048,
        description="Upscale images whose shorter side is under this before detection (0: never).",
    )
    align_size: Literal[112, 160] | None = Field(
        EMBED["align_size"],
        description="Aligned crop side: 112 (ArcFace 5-point template) or 160 (the template scaled, "
        "FaceNet's crop size); None: the model's own (160 FaceNet, 112 trained backbones).",
    )
    flip_tta: bool = Field(EMBED["flip_tta"], description="Embedding = normalise(f(face) + f(mirrored face)).")

    @model_validator(mode="after")
    def _weights_only_for_facenet(self) -> Self:
        if self.weights is not None and not self.model.startswith("facenet:"):
            raise ValueError("weights apply to facenet models only; a job:<id> or model:<id> model brings its own")
        return self


class _Dataset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        ...,
        pattern=DATASET_REF_PATTERN,
        description='"dataset:<id>": images in nested folders, any sizes; or "builtin:digits" / '
        '"builtin:mnist" (with detector "none": not photos of faces).',
    )


# The right-most base's fields come first in the schema (and the dashboard's form): what, then how.
class EmbedParams(_ModelChoice, _Dataset):
    """Detect, align and embed every face of an image dataset, resumably, chunk by chunk."""

    faces: Literal["largest", "all"] = Field(
        DETECTOR["faces"], description="Embed the largest face of each image, or all."
    )
    thresholds: list[float] = Field(
        list(DETECTOR["thresholds"]),
        min_length=3,
        max_length=3,
        description="MTCNN P-, R-, O-net score thresholds, each in (0, 1).",
    )
    factor: float = Field(DETECTOR["factor"], ge=0.1, lt=1.0, description="MTCNN image-pyramid scale step.")
    detect_size: int | None = Field(
        DETECTOR["detect_size"],
        ge=32,
        le=4096,
        description="Letterbox every image into this square for detection, so images of any size share MTCNN "
        "batches (None: detect at each image's own size, batching images of equal size).",
    )
    warp: WARP_SPACES | None = Field(
        EMBED["warp"],
        description="RoI-tanh warp of the aligned face, sampling its real surroundings (None: the "
        "model's own training warp; none for FaceNet).",
    )
    keep_aspect_ratio: bool = Field(
        EMBED["keep_aspect_ratio"], description="Polar/circular warps: follow the RoI ellipse."
    )
    detect_batch_size: int = Field(DETECTOR["batch_size"], ge=1, le=1024, description="Images per MTCNN call.")
    embed_batch_size: int = Field(EMBED["embed_batch_size"], ge=1, le=8192, description="Faces per network call.")
    chunk_size: int = Field(
        EMBED["chunk_size"], ge=1, le=1_000_000, description="Files per checkpoint (a resumed job redoes at most one)."
    )
    num_workers: int = Field(
        EMBED["num_workers"], ge=1, le=64, description="Threads decoding images ahead of detection."
    )
    max_image_pixels: int = Field(
        LIMITS["max_pixels"],
        ge=1,
        le=1_000_000_000,
        description="Images with more pixels fail as too_large (decompression bombs).",
    )
    max_file_bytes: int = Field(LIMITS["max_file_bytes"], ge=1, le=2**34, description="Larger files fail as too_large.")
    min_image_size: int = Field(
        LIMITS["min_size"], ge=1, le=4096, description="Images with a shorter side fail as too_small."
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, v: list[float]) -> list[float]:
        if not all(0.0 < t < 1.0 for t in v):
            raise ValueError("each MTCNN threshold must be in (0, 1)")
        return v

    @model_validator(mode="after")
    def _builtins_are_not_photos(self) -> Self:
        if self.dataset.startswith("builtin:") and self.detector != "none":
            raise ValueError(f'{self.dataset} holds no photos of faces: use detector "none" (images used whole)')
        return self


def parse_image_ref(value: str) -> tuple[str, str] | bytes:
    """("dataset:<id>", relative key) for a dataset image, ("input", name) for an image `POST /verify`
    stored with the job, or the decoded bytes of base64 / a data URL.

    Raises:
        ValueError: a key that leaves its dataset, bad base64, or more than `MAX_VERIFY_IMAGE_BYTES`.
    """
    inp = _INPUT_REF.match(value)
    if inp is not None:
        return "input", inp.group(1)
    m = DATASET_FILE.match(value)
    if m is not None:
        key = m.group(2)
        parts = key.split("/")
        if key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
            raise ValueError("a dataset image key is a relative path inside the dataset, without '.', '..' or '\\'")
        return m.group(1), key
    payload = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError('an image is "dataset:<id>/<key>" or base64 PNG/JPEG bytes (a data URL is fine)') from None
    if not data:
        raise ValueError("the image is empty")
    if len(data) > MAX_VERIFY_IMAGE_BYTES:
        raise ValueError(f"the image is {len(data)} bytes; at most {MAX_VERIFY_IMAGE_BYTES}")
    return data


class _ImagePair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_a: str = Field(
        ...,
        min_length=1,
        max_length=MAX_VERIFY_IMAGE_BYTES * 4 // 3 + 64,
        description='Base64 PNG/JPEG bytes (or a data URL), "dataset:<id>/<path in the dataset>", or '
        '"input:image_a" (an image POST /verify stored with the job).',
    )
    image_b: str = Field(
        ...,
        min_length=1,
        max_length=MAX_VERIFY_IMAGE_BYTES * 4 // 3 + 64,
        description="The second image, as image_a.",
    )

    @field_validator("image_a", "image_b")
    @classmethod
    def _image_ref(cls, v: str) -> str:
        parse_image_ref(v)
        return v


class VerifyParams(_ModelChoice, _ImagePair):
    """Are two face images the same person? Cosine distance against the model's threshold."""

    threshold: float | None = Field(
        None,
        ge=0.0,
        le=2.0,
        description="Cosine distance at or under which the faces are the same person; None: 1 - the model's "
        "best similarity threshold from its train/evaluate metrics.json (required for FaceNet).",
    )


KINDS = [
    KindSpec(
        name="embed",
        params=EmbedParams,
        queue="gpu",
        runner="workers.runners.embed:run_embed",
        description="Bulk face embedding: MTCNN detection, 5-point alignment, batched FaceNet or trained "
        "backbone, flip TTA: embeddings.npy, index.csv, failures.csv, config.json.",
        oom_hints=("detect_batch_size", "embed_batch_size", "detect_size", "upscale_below"),
        ml_configs={
            "ml.faces.detect:DetectorSettings": DETECTOR_NAMES,
            "ml.faces.embed:EmbedSettings": EMBED_NAMES,
            "ml.faces.decode:DecodeLimits": LIMITS_NAMES,
        },
    ),
    KindSpec(
        name="verify",
        params=VerifyParams,
        queue="cpu",
        runner="workers.runners.embed:run_verify",
        description="Two face images -> cosine distance, the model's threshold, same or different person.",
        oom_hints=("upscale_below",),
        ml_configs={"ml.faces.detect:DetectorSettings": DETECTOR_NAMES, "ml.faces.embed:EmbedSettings": EMBED_NAMES},
    ),
]
