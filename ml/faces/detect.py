"""Batched MTCNN face detection (facenet-pytorch) on images of any size.

facenet-pytorch's MTCNN batches only images of one size. `FaceDetector.prepare` gives every image
its detection size: its own (images of a size are then grouped by the caller), upscaled when its
shorter side is under `upscale_below` (small images such as ORL's 92x112 crops), or letterboxed
into `detect_size` x `detect_size` so images of any size share batches, and shrunk to fit
`max_detect_pixels` whatever asked for more (a 1,000,000 x 16 strip upscaled to a 2048 shorter
side would be 3 TB as floats). Images longer than `max_aspect_ratio` times their width (or the other
way round) are refused with a reason, as a per-file failure. Boxes and landmarks are
mapped back to the original image's pixel units (pixel k's centre at k) with the exact per-axis
scale, so they stay floats; `detect` returns the faces of each image, largest first.

A prepared image keeps its detection input as the decoded uint8 array on the host: it is resized
and padded on the device only when its batch is detected, so the images waiting for a same-size
batch cost a quarter of float32 and no device memory.

`method="none"` (`WholeImageDetector`) skips detection for pre-cropped or pre-aligned images
(digits, aligned face crops): each image is one "face" covering it whole, resized to the model's
input instead of aligned, with NaN landmarks and probability 1. `make_detector` picks the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ml.core.defaults import shared_defaults
from ml.core.errors import InputError


class DetectorSettingsError(InputError):
    """A detector setting is out of range."""


# The settings a job's params also expose take their one default from ml/faces/defaults.json.
_SHARED = shared_defaults("faces", "DetectorSettings")


@dataclass(frozen=True)
class DetectorSettings:
    """MTCNN and batching settings.

    Attributes:
        min_face_size: smallest face searched for, in detection-image pixels.
        thresholds: P-, R- and O-net score thresholds.
        factor: scale step of the image pyramid.
        method: "mtcnn" detects faces; "none" takes every image whole (see `WholeImageDetector`).
        faces: "largest" keeps one face per image (the largest box), "all" keeps every face.
        upscale_below: images whose shorter side is under this are upscaled to it before detection
            (0: never).
        detect_size: letterbox every image into this square before detection, so images of any
            size batch together (None: detect at the image's own size, grouped by size).
        batch_size: images per MTCNN call.
        max_detect_pixels: the largest detection image (h * w) ever built; larger requests shrink to it.
        max_aspect_ratio: longer side over shorter side beyond which an image is refused (a strip,
            not a photo: no face detector looks for faces in it).
    """

    min_face_size: int = _SHARED["min_face_size"]
    thresholds: tuple[float, float, float] = tuple(_SHARED["thresholds"])
    factor: float = _SHARED["factor"]
    faces: Literal["largest", "all"] = _SHARED["faces"]
    upscale_below: int = _SHARED["upscale_below"]
    detect_size: int | None = _SHARED["detect_size"]
    batch_size: int = _SHARED["batch_size"]
    method: Literal["mtcnn", "none"] = _SHARED["method"]
    max_detect_pixels: int = 4096 * 4096
    max_aspect_ratio: float = 20.0

    def validate(self) -> None:
        problems = []
        if self.min_face_size < 12:
            problems.append(f"min_face_size must be >= 12 (MTCNN's cell), got {self.min_face_size}")
        if len(self.thresholds) != 3 or not all(0.0 < t < 1.0 for t in self.thresholds):
            problems.append(f"thresholds must be three numbers in (0, 1), got {self.thresholds}")
        if not 0.1 <= self.factor < 1.0:
            problems.append(f"factor must be in [0.1, 1), got {self.factor}")
        if self.faces not in ("largest", "all"):
            problems.append(f"faces must be 'largest' or 'all', got {self.faces!r}")
        if self.detect_size is not None and self.detect_size < self.min_face_size:
            problems.append(f"detect_size {self.detect_size} is under min_face_size {self.min_face_size}")
        if self.method not in ("mtcnn", "none"):
            problems.append(f"method must be 'mtcnn' or 'none', got {self.method!r}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_detect_pixels < self.min_face_size**2:
            problems.append(f"max_detect_pixels {self.max_detect_pixels} is under min_face_size squared")
        if self.detect_size is not None and self.detect_size**2 > self.max_detect_pixels:
            problems.append(
                f"detect_size {self.detect_size} squared is over max_detect_pixels {self.max_detect_pixels}"
            )
        if not self.max_aspect_ratio >= 1.0:
            problems.append(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")
        if problems:
            raise DetectorSettingsError("; ".join(problems))


@dataclass(frozen=True)
class Detection:
    """One face in original-image pixel units: box (x1, y1, x2, y2), score, 5 landmarks (5, 2)."""

    box: np.ndarray
    prob: float
    landmarks: np.ndarray


class Unusable(str):
    """Why an image cannot be detected (a `str`, the message), with the failure `reason` to record."""

    reason: str

    def __new__(cls, message: str, reason: str) -> Unusable:
        out = super().__new__(cls, message)
        out.reason = reason
        return out


@dataclass
class Prepared:
    """An image ready for detection: its pixels, its detection size and how to map results back."""

    image: torch.Tensor  # (3, H, W) float in [0, 1] at the original size, on the device (for alignment)
    source: torch.Tensor  # (H, W, 3) uint8 on the host: resized and padded on the device at detect time
    resized: tuple[int, int]  # (h, w) the image is resized to
    padded: tuple[int, int]  # (H, W) of MTCNN's input (the letterbox pads the resized image)
    scale: tuple[float, float]  # (sx, sy): detection pixels per original pixel

    @property
    def size(self) -> tuple[int, int]:
        return self.padded

    def detect_input(self, device: torch.device) -> torch.Tensor:
        """(H, W, 3) float in [0, 255] at detection size on `device`: MTCNN's input."""
        hwc = self.source.to(device).float()
        height, width = hwc.shape[:2]
        (h, w), (ph, pw) = self.resized, self.padded
        det = hwc
        if (h, w) != (height, width):
            chw = hwc.permute(2, 0, 1).unsqueeze(0)
            det = F.interpolate(chw, size=(h, w), mode="bilinear", align_corners=False, antialias=h < height)
            det = det[0].permute(1, 2, 0).clamp(0, 255)
        if (ph, pw) != (h, w):
            det = F.pad(det.permute(2, 0, 1), (0, pw - w, 0, ph - h)).permute(1, 2, 0)
        return det.contiguous()


class FaceDetector:
    """facenet-pytorch's MTCNN (weights ship in its wheel) with size handling and batching."""

    whole_image = False  # True: faces are whole images, resized rather than aligned

    def __init__(self, settings: DetectorSettings, device: torch.device | str = "cpu") -> None:
        from facenet_pytorch import MTCNN

        settings.validate()
        self.settings = settings
        self.device = torch.device(device)
        self.mtcnn = MTCNN(
            min_face_size=settings.min_face_size,
            thresholds=list(settings.thresholds),
            factor=settings.factor,
            select_largest=True,
            keep_all=True,
            device=self.device,
        ).eval()

    def detection_size(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(h, w) the image is resized to and (H, W) of the tensor MTCNN sees (letterbox pads)."""
        s = self.settings
        if s.detect_size is not None:
            k = s.detect_size / max(height, width)
            h, w = max(1, round(height * k)), max(1, round(width * k))
            return h, w, s.detect_size, s.detect_size
        h, w = height, width
        if s.upscale_below and min(height, width) < s.upscale_below:
            k = s.upscale_below / min(height, width)
            h, w = round(height * k), round(width * k)
        if h * w > s.max_detect_pixels:
            # Shrink (or upscale less) to the cap, keeping the aspect ratio; floor keeps it under.
            k = (s.max_detect_pixels / (height * width)) ** 0.5
            h, w = max(1, int(height * k)), max(1, int(width * k))
        return h, w, h, w

    def prepare(self, rgb: np.ndarray) -> Prepared | Unusable:
        """An (H, W, 3) uint8 image ready for detection, or why it cannot be (too small, or a strip)."""
        height, width = rgb.shape[:2]
        s = self.settings
        if max(height, width) > s.max_aspect_ratio * min(height, width):
            return Unusable(
                f"{width}x{height} is {max(height, width) / min(height, width):.0f} times longer than wide, "
                f"over max_aspect_ratio {s.max_aspect_ratio:g}: not a photo to look for faces in",
                "too_large",
            )
        h, w, ph, pw = self.detection_size(height, width)
        if min(h, w) < s.min_face_size:
            return Unusable(
                f"{width}x{height} is detected at {w}x{h}, under min_face_size {s.min_face_size} "
                "(set upscale_below to look for faces in small images)",
                "too_small",
            )
        source = torch.from_numpy(np.ascontiguousarray(rgb))
        image = source.to(self.device).permute(2, 0, 1).float().div(255.0).contiguous()
        return Prepared(image, source, (h, w), (ph, pw), (w / width, h / height))

    @torch.no_grad()
    def detect(self, batch: list[Prepared]) -> list[list[Detection]]:
        """Faces of every image of a batch of one detection size, largest first (or only the largest)."""
        if not batch:
            return []
        sizes = {p.size for p in batch}
        if len(sizes) != 1:
            raise ValueError(f"one detection batch must hold one image size, got {sorted(sizes)}")
        stacked = torch.stack([p.detect_input(self.device) for p in batch])
        boxes, probs, points = self.mtcnn.detect(stacked, landmarks=True)
        out = []
        for p, b, pr, pt in zip(batch, boxes, probs, points, strict=True):
            faces: list[Detection] = []
            if b is not None:
                sx, sy = p.scale
                scale = np.array([sx, sy])
                for box, prob, lm in zip(np.asarray(b, np.float64), pr, np.asarray(pt, np.float64), strict=True):
                    # Resizing maps original x to (x + 0.5) * s - 0.5 (align_corners=False): invert it.
                    back_box = (box.reshape(2, 2) + 0.5) / scale - 0.5
                    back_lm = (lm + 0.5) / scale - 0.5
                    faces.append(Detection(back_box.reshape(4), float(prob), back_lm))
                if self.settings.faces == "largest":
                    faces = faces[:1]  # MTCNN(select_largest=True) sorts by box area, largest first
            out.append(faces)
        return out


class WholeImageDetector(FaceDetector):
    """No detection: every image is one face covering all of it (`DetectorSettings.method == "none"`).

    The pipeline resizes such a "face" to the model's input instead of aligning it; the landmarks
    are NaN (there are none) and the probability is 1.
    """

    whole_image = True

    def __init__(self, settings: DetectorSettings, device: torch.device | str = "cpu") -> None:
        settings.validate()
        self.settings = settings
        self.device = torch.device(device)

    def prepare(self, rgb: np.ndarray) -> Prepared | Unusable:
        # Every image shares one (dummy) detection size, so the caller batches them all together.
        image = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).float().div(255.0).contiguous()
        return Prepared(image, torch.zeros(1, 1, 3, dtype=torch.uint8), (1, 1), (1, 1), (1.0, 1.0))

    def detect(self, batch: list[Prepared]) -> list[list[Detection]]:
        out = []
        for p in batch:
            h, w = p.image.shape[1:]
            box = np.array([0.0, 0.0, w - 1.0, h - 1.0])
            out.append([Detection(box, 1.0, np.full((5, 2), np.nan))])
        return out


def make_detector(settings: DetectorSettings, device: torch.device | str = "cpu") -> FaceDetector:
    """The detector `settings.method` names: MTCNN, or the whole image for "none"."""
    if settings.method == "none":
        return WholeImageDetector(settings, device)
    return FaceDetector(settings, device)
