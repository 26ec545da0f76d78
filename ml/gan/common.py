"""Small pieces shared by the GAN trainers and recovery: the config error and the pixel ranges.

Seeds, fingerprints, image grids and the stop signal are `ml.core`'s (seeding, fingerprint, images, errors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ml.core.errors import InputError


class GANConfigError(InputError):
    """Bad hyperparameters or inputs for a GAN job, raised before any training."""


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
