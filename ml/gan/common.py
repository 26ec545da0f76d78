"""Small pieces shared by the GAN trainers and recovery: errors, seeding, image grids."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import torch
import torch.nn.functional as F


class GANConfigError(ValueError):
    """Bad hyperparameters or inputs for a GAN job, raised before any training."""


class TrainingStopped(Exception):
    """Raised after a checkpoint was saved because `callbacks.should_stop()` answered True."""

    def __init__(self, what: str, step: int) -> None:
        super().__init__(f"{what} stopped at {step} (checkpoint saved); resume with a new attempt")
        self.step = step


def derived_seed(seed: int, *parts: int) -> int:
    """A seed that depends on (seed, parts) only, so a resumed run redraws exactly what it would have."""
    value = int(seed) * 1_000_003 + 17
    for p in parts:
        value = value * 7_919 + int(p) + 1
    return value % (2**62)


def fingerprint(*items: Any) -> str:
    """Short hash of JSON-able items: a checkpoint resumes only the run that wrote it."""
    blob = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] generator images -> [0, 1] pixels (clamped)."""
    return ((images + 1) / 2).clamp(0, 1)


def to_signed(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> the generator's [-1, 1] range."""
    return images01 * 2 - 1


def fit_images(images01: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """[0, 1] images (N, C, H, W) in `channels` (luma or replication), centre-cropped to the aspect of `size`
    and resized to it."""
    x = images01.float()
    if x.shape[1] != channels:
        if channels == 1 and x.shape[1] == 3:
            luma = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
            x = (x * luma).sum(1, keepdim=True)
        elif channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise GANConfigError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    h, w = int(x.shape[2]), int(x.shape[3])
    th, tw = int(size[0]), int(size[1])
    if h * tw != w * th:  # other aspect ratio: centre-crop to the target's before resizing, never squash
        ch, cw = min(h, w * th // tw), min(w, h * tw // th)
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[:, :, top : top + ch, left : left + cw]
    if tuple(x.shape[2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return x.contiguous()


def grid_png(images01: torch.Tensor, nrow: int, upscale: int = 1) -> bytes:
    """PNG bytes of [0, 1] images (N, C, H, W) tiled `nrow` per row on a white background."""
    from PIL import Image
    from torchvision.utils import make_grid

    imgs = images01.detach().float().cpu().clamp(0, 1)
    if upscale > 1:
        imgs = F.interpolate(imgs, scale_factor=upscale, mode="nearest")
    grid = make_grid(imgs, nrow=max(1, nrow), padding=2, pad_value=1.0)
    array = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if imgs.shape[1] == 1 else array).save(buf, format="PNG")
    return buf.getvalue()
