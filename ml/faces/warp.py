"""RoI-tanh warping spaces (the ibug face-parsing project's idea), differentiable and batched.

A warp resamples an image so that a region of interest (RoI, e.g. a face box) fills most of the
output while everything outside it is squeezed, by a tanh, into a thin border: the whole image stays
visible and the face keeps its resolution. Spaces:

- `none`: identity.
- `roi_tanh`: each axis separately. Output column j has u = (2j + 1) / W - 1 in (-1, 1) and samples
  the source at x = cx + half_w * atanh(u) (rows the same with half_h).
- `roi_tanh_polar`: output column j is a radius atanh(j / W), output row i an angle 2*pi*i / H. The
  source point is (cx + a * rho * cos, cy + b * rho * sin) with radii a, b = (w, h) / sqrt(pi) (the
  ellipse of the RoI's area); with `keep_aspect_ratio` the radius is instead scaled by the ellipse's
  radius in that direction, a*b / sqrt(b^2 cos^2 + a^2 sin^2), and the direction is not stretched.
- `roi_tanh_circular`: output pixel (u, v) in (-1, 1)^2 samples at radius atanh(|(u, v)|) along its
  own direction, scaled as in the polar space; pixels with |(u, v)| >= 1 (the corners) are outside.

Coordinates are pixels with pixel k's centre at k (what `grid_sample(..., align_corners=True)`
uses), so an RoI box (x1, y1, x2, y2) is given in those units; the default RoI is the centred box of
0.8 times the image's width and height. Each warp has an inverse, `restore`, that maps a warped image
back onto an image of the original size (where the RoI box is given). Warping samples with zeros
outside the source; restoring repeats the warped image's border (its far-out pixels) and, for the
polar space, wraps the angle. With the default RoI the sampling grid depends only on the sizes,
so it is built once per (space, sizes, device, dtype) and reused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ml.core.errors import InputError

SPACES = ("none", "roi_tanh", "roi_tanh_polar", "roi_tanh_circular")
DEFAULT_ROI_RATIO = 0.8
# Normalised grid coordinate for "no source pixel": far enough outside [-1, 1] that bilinear
# sampling with zeros padding reads exactly 0.
_OUTSIDE = 4.0

RoiLike = torch.Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]] | None


class WarpError(InputError):
    """Bad input to a warp: unknown space, wrong tensor shape, or an empty RoI."""


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise WarpError(f"images must be a (N, C, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise WarpError(f"images must be floating point (grid_sample), got {images.dtype}")


def _size(out_size: int | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if out_size is None:
        return default
    if isinstance(out_size, int):
        h, w = out_size, out_size
    else:
        h, w = (int(v) for v in out_size)
    if h < 2 or w < 2:
        raise WarpError(f"out_size must be at least 2x2 (h, w), got {(h, w)}")
    return h, w


def default_roi(height: int, width: int, ratio: float = DEFAULT_ROI_RATIO) -> tuple[float, float, float, float]:
    """The centred RoI box (x1, y1, x2, y2) of `ratio` times the image's size, in pixel-centre units."""
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    hw, hh = ratio * width / 2.0, ratio * height / 2.0
    return cx - hw, cy - hh, cx + hw, cy + hh


def _rois(roi: RoiLike, n: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """(n, 4) float64 boxes on `device`: the given ones (one per image, or one for all) or the default."""
    if roi is None:
        boxes = torch.tensor([default_roi(height, width)], dtype=torch.float64).expand(n, 4)
    else:
        # Checked where the boxes are (the host, for lists and arrays) before they move: a check on
        # the device would wait for it.
        boxes = roi.detach() if isinstance(roi, torch.Tensor) else torch.as_tensor(np.asarray(roi, dtype=np.float64))
        boxes = boxes.to(dtype=torch.float64)
        if boxes.dim() == 1:
            boxes = boxes.unsqueeze(0)
        if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] not in (1, n):
            raise WarpError(f"roi must be (4,) or ({n}, 4) boxes x1, y1, x2, y2; got shape {tuple(boxes.shape)}")
        boxes = boxes.expand(n, 4)
        if not bool(torch.isfinite(boxes).all()) or bool(((boxes[:, 2:] - boxes[:, :2]) <= 0).any()):
            raise WarpError("every RoI box needs finite coordinates with x2 > x1 and y2 > y1")
    return boxes.to(device)


@lru_cache(maxsize=64)
def _default_roi_grid(
    inverse: bool,
    space: str,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    keep_aspect_ratio: bool,
    device: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The (1, H, W, 2) grid of a warp (or, `inverse`, of its restore) with the default RoI, in `dtype`.

    Every image of every batch of one size shares it, so it is built once (in float64 on `device`,
    as an uncached call would) per (space, sizes, device, dtype). Cached: never modify it.
    """
    dev = torch.device(device)
    if inverse:  # the RoI is the restored image's default box
        boxes = torch.tensor([default_roi(*out_size)], dtype=torch.float64, device=dev)
        grid = restore_grid(space, boxes, in_size, out_size, keep_aspect_ratio)
    else:
        boxes = torch.tensor([default_roi(*in_size)], dtype=torch.float64, device=dev)
        grid = warp_grid(space, boxes, in_size, out_size, keep_aspect_ratio)
    return grid.to(dtype)


def _geometry(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Centres, half sizes and ellipse radii, each (n, 1, 1) for broadcasting over (h, w) grids."""
    c = lambda t: t.view(-1, 1, 1)  # noqa: E731
    cx, cy = c((boxes[:, 0] + boxes[:, 2]) / 2), c((boxes[:, 1] + boxes[:, 3]) / 2)
    w, h = c(boxes[:, 2] - boxes[:, 0]), c(boxes[:, 3] - boxes[:, 1])
    return cx, cy, w / 2, h / 2, w / math.sqrt(math.pi), h / math.sqrt(math.pi)


def _ellipse_scale(a: torch.Tensor, b: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Radius of the ellipse with radii (a, b) in direction (cos, sin)."""
    return a * b / torch.sqrt(b**2 * cos**2 + a**2 * sin**2)


def _centres(n: int, device: torch.device) -> torch.Tensor:
    """u = (2k + 1) / n - 1 for k = 0..n-1: pixel centres spread over (-1, 1)."""
    return (2 * torch.arange(n, dtype=torch.float64, device=device) + 1) / n - 1


def _to_grid(x: torch.Tensor, y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel coordinates in a (height, width) source -> grid_sample's (n, h, w, 2) normalised grid."""
    return torch.stack((2 * x / (width - 1) - 1, 2 * y / (height - 1) - 1), dim=-1)


def warp_grid(
    space: str,
    boxes: torch.Tensor,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    keep_aspect_ratio: bool = False,
) -> torch.Tensor:
    """The (n, H_out, W_out, 2) float64 sampling grid of a warp (normalised, align_corners=True).

    Args:
        space: one of `SPACES` other than "none".
        boxes: (n, 4) float64 RoI boxes in the source's pixel units.
        in_size: (h, w) of the source image.
        out_size: (h, w) of the warped image.
        keep_aspect_ratio: polar and circular spaces only (see the module docstring).
    """
    (hi, wi), (ho, wo) = in_size, out_size
    dev = boxes.device
    cx, cy, hw, hh, a, b = _geometry(boxes)
    if space == "roi_tanh":
        u = _centres(wo, dev).view(1, 1, wo)
        v = _centres(ho, dev).view(1, ho, 1)
        x = (cx + hw * torch.atanh(u)).expand(-1, ho, wo)
        y = (cy + hh * torch.atanh(v)).expand(-1, ho, wo)
        return _to_grid(x, y, hi, wi)
    if space == "roi_tanh_polar":
        r = (torch.arange(wo, dtype=torch.float64, device=dev) / wo).view(1, 1, wo)
        theta = (2 * math.pi * torch.arange(ho, dtype=torch.float64, device=dev) / ho).view(1, ho, 1)
        rho, cos, sin = torch.atanh(r), torch.cos(theta), torch.sin(theta)
        if keep_aspect_ratio:
            s = _ellipse_scale(a, b, cos, sin)
            x, y = cx + s * rho * cos, cy + s * rho * sin
        else:
            x, y = cx + a * rho * cos, cy + b * rho * sin
        return _to_grid(x.expand(-1, ho, wo), y.expand(-1, ho, wo), hi, wi)
    if space == "roi_tanh_circular":
        u = _centres(wo, dev).view(1, 1, wo).expand(1, ho, wo)
        v = _centres(ho, dev).view(1, ho, 1).expand(1, ho, wo)
        r = torch.sqrt(u**2 + v**2)
        inside = r < 1
        # The exact centre has no direction; any unit vector works since the radius is 0 there.
        safe = torch.where(r > 0, r, torch.ones_like(r))
        cos, sin = torch.where(r > 0, u / safe, torch.ones_like(r)), v / safe
        rho = torch.atanh(torch.where(inside, r, torch.zeros_like(r)))
        if keep_aspect_ratio:
            s = _ellipse_scale(a, b, cos, sin)
            x, y = cx + s * rho * cos, cy + s * rho * sin
        else:
            x, y = cx + a * rho * cos, cy + b * rho * sin
        grid = _to_grid(x, y, hi, wi)
        return torch.where(inside.unsqueeze(-1), grid, torch.full_like(grid, _OUTSIDE))
    raise WarpError(f"unknown warp space {space!r}; choose one of {', '.join(SPACES)}")


def restore_grid(
    space: str,
    boxes: torch.Tensor,
    warped_size: tuple[int, int],
    out_size: tuple[int, int],
    keep_aspect_ratio: bool = False,
) -> torch.Tensor:
    """The (n, H_out, W_out, 2) float64 grid that samples a warped image back into the original frame.

    For "roi_tanh_polar" the grid addresses the warped image with its first row appended at the
    bottom (H + 1 rows), so angles just below 2*pi interpolate with angle 0.

    Args:
        space: one of `SPACES` other than "none".
        boxes: (n, 4) float64 RoI boxes in the restored image's pixel units.
        warped_size: (h, w) of the warped image.
        out_size: (h, w) of the restored image.
        keep_aspect_ratio: as used by the warp.
    """
    (hw_, ww), (ho, wo) = warped_size, out_size
    dev = boxes.device
    cx, cy, hw, hh, a, b = _geometry(boxes)
    xs = torch.arange(wo, dtype=torch.float64, device=dev).view(1, 1, wo)
    ys = torch.arange(ho, dtype=torch.float64, device=dev).view(1, ho, 1)
    dx, dy = (xs - cx).expand(-1, ho, wo), (ys - cy).expand(-1, ho, wo)
    if space == "roi_tanh":
        j = (torch.tanh(dx / hw) + 1) * ww / 2 - 0.5
        i = (torch.tanh(dy / hh) + 1) * hw_ / 2 - 0.5
        return _to_grid(j, i, hw_, ww)
    if space not in ("roi_tanh_polar", "roi_tanh_circular"):
        raise WarpError(f"unknown warp space {space!r}; choose one of {', '.join(SPACES)}")
    if keep_aspect_ratio:
        theta = torch.atan2(dy, dx)
        cos, sin = torch.cos(theta), torch.sin(theta)
        rho = torch.sqrt(dx**2 + dy**2) / _ellipse_scale(a, b, cos, sin)
    else:
        ex, ey = dx / a, dy / b
        theta = torch.atan2(ey, ex)
        cos, sin = torch.cos(theta), torch.sin(theta)
        rho = torch.sqrt(ex**2 + ey**2)
    r = torch.tanh(rho)
    if space == "roi_tanh_polar":
        j = r * ww
        i = torch.remainder(theta, 2 * math.pi) * hw_ / (2 * math.pi)
        return _to_grid(j, i, hw_ + 1, ww)
    j = (r * cos + 1) * ww / 2 - 0.5
    i = (r * sin + 1) * hw_ / 2 - 0.5
    return _to_grid(j, i, hw_, ww)


def _sample(images: torch.Tensor, grid: torch.Tensor, padding_mode: str) -> torch.Tensor:
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=True)


def warp(
    images: torch.Tensor,
    space: str,
    roi: RoiLike = None,
    keep_aspect_ratio: bool = False,
    out_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Warp a batch (N, C, H, W) into `space` (one of `SPACES`), on the images' device.

    Args:
        images: floating-point images, any value range.
        space: "none" (identity, returned as is), "roi_tanh", "roi_tanh_polar" or "roi_tanh_circular".
        roi: (4,) or (N, 4) boxes x1, y1, x2, y2 in pixel-centre units; None: centred 0.8 box.
        keep_aspect_ratio: polar/circular: radius follows the RoI ellipse in every direction.
        out_size: (h, w) or side of the warped image; None keeps (H, W).

    Raises:
        WarpError: unknown space, a non-(N, C, H, W) or integer tensor, or an empty RoI box.
    """
    if space not in SPACES:
        raise WarpError(f"unknown warp space {space!r}; choose one of {', '.join(SPACES)}")
    _check_images(images)
    if space == "none":
        return images
    n, _, h, w = images.shape
    size = _size(out_size, (h, w))
    if roi is None:
        cached = _default_roi_grid(
            False, space, (h, w), size, bool(keep_aspect_ratio), str(images.device), images.dtype
        )
        return _sample(images, cached.expand(n, -1, -1, -1), "zeros")
    boxes = _rois(roi, n, h, w, images.device)
    grid = warp_grid(space, boxes, (h, w), size, keep_aspect_ratio)
    return _sample(images, grid, "zeros")


def restore(
    warped: torch.Tensor,
    space: str,
    roi: RoiLike = None,
    keep_aspect_ratio: bool = False,
    out_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Map warped images (N, C, h, w) back to the original frame: the inverse of `warp`.

    Args:
        warped: the output of `warp` (or a network's prediction in the warped space).
        space: the space it was warped into.
        roi: the RoI used by the warp, in the original image's pixel units; None: the centred 0.8
            box of the restored image (`out_size`).
        keep_aspect_ratio: as given to `warp`.
        out_size: (h, w) or side of the original image; None: the warped image's size.
    """
    if space not in SPACES:
        raise WarpError(f"unknown warp space {space!r}; choose one of {', '.join(SPACES)}")
    _check_images(warped)
    if space == "none":
        return warped
    n, _, h, w = warped.shape
    ho, wo = _size(out_size, (h, w))
    if roi is None:
        key = (True, space, (h, w), (ho, wo), bool(keep_aspect_ratio), str(warped.device), warped.dtype)
        grid = _default_roi_grid(*key).expand(n, -1, -1, -1)
    else:
        grid = restore_grid(space, _rois(roi, n, ho, wo, warped.device), (h, w), (ho, wo), keep_aspect_ratio)
    source = torch.cat((warped, warped[:, :, :1]), dim=2) if space == "roi_tanh_polar" else warped
    return _sample(source, grid, "border")


def roi_tanh(images: torch.Tensor, roi: RoiLike = None, out_size: int | Sequence[int] | None = None) -> torch.Tensor:
    """`warp(images, "roi_tanh", ...)`."""
    return warp(images, "roi_tanh", roi, out_size=out_size)


def roi_tanh_restore(
    warped: torch.Tensor, roi: RoiLike = None, out_size: int | Sequence[int] | None = None
) -> torch.Tensor:
    """`restore(warped, "roi_tanh", ...)`."""
    return restore(warped, "roi_tanh", roi, out_size=out_size)


def roi_tanh_polar(
    images: torch.Tensor,
    roi: RoiLike = None,
    keep_aspect_ratio: bool = False,
    out_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """`warp(images, "roi_tanh_polar", ...)`."""
    return warp(images, "roi_tanh_polar", roi, keep_aspect_ratio, out_size)


def roi_tanh_polar_restore(
    warped: torch.Tensor,
    roi: RoiLike = None,
    keep_aspect_ratio: bool = False,
    out_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """`restore(warped, "roi_tanh_polar", ...)`."""
    return restore(warped, "roi_tanh_polar", roi, keep_aspect_ratio, out_size)


def roi_tanh_circular(
    images: torch.Tensor,
    roi: RoiLike = None,
    keep_aspect_ratio: bool = False,
    out_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """`warp(images, "roi_tanh_circular", ...)`."""
    return warp(images, "roi_tanh_circular", roi, keep_aspect_ratio, out_size)


def roi_tanh_circular_restore(
    warped: torch.Tensor,
    roi: RoiLike = None,
    keep_aspect_ratio: bool = False,
    out_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """`restore(warped, "roi_tanh_circular", ...)`."""
    return restore(warped, "roi_tanh_circular", roi, keep_aspect_ratio, out_size)
