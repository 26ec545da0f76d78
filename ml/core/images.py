"""One image-grid helper: previews and artifacts of every trainer are tiled the same way."""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F

__all__ = ["grid_png"]


def grid_png(images01: torch.Tensor, nrow: int, upscale: int = 1) -> bytes:
    """PNG bytes of [0, 1] images (N, C, H, W) tiled `nrow` per row on a white background.

    Args:
        images01: the images (any device or dtype; clamped to [0, 1]).
        nrow: images per row (at least 1).
        upscale: nearest-neighbour magnification, so that small images (16x16 digits) stay visible.
    """
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
