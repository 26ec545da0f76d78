"""Five-point similarity alignment of faces, batched in torch (no OpenCV).

The landmarks (left eye, right eye, nose, left and right mouth corner, as MTCNN gives them) are
kept as floats: rounding them (as the ibug test script did) moves the crop by up to half a pixel.
A least-squares similarity (Umeyama 1991: rotation, uniform scale, translation, no reflection)
maps them onto the ArcFace 112x112 template, or the same template scaled to facenet's 160x160.
The crop is then sampled from the source image with one `grid_sample` call per source image
(bilinear, align_corners=True: pixel k's centre is at coordinate k, the template's convention).

With a RoI-tanh warp (`ml.faces.warp`) the warp's grid is composed with the similarity, so pixels outside
the face RoI come from the real surroundings in the source image rather than from zero padding.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from ml.core.device_state import to_device
from ml.core.errors import InputError
from ml.faces import warp as warp_module

# insightface's arcface_dst: where the 5 points land in a 112x112 ArcFace crop.
ARCFACE_TEMPLATE = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
ALIGN_SIZES = (112, 160)


class AlignError(InputError):
    """Bad landmarks or alignment settings."""


def template(size: int) -> torch.Tensor:
    """The (5, 2) float64 template for a `size` x `size` crop (ArcFace's, scaled by size / 112)."""
    if size < 8:
        raise AlignError(f"align size must be at least 8 pixels, got {size}")
    return torch.tensor(ARCFACE_TEMPLATE, dtype=torch.float64) * (size / 112.0)


def umeyama(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity dst ~ scale * R @ src + t for every set of points.

    Args:
        src: (K, P, 2) points (landmarks in the source image).
        dst: (P, 2) or (K, P, 2) target points (the template).

    Returns:
        scale (K,), rotation R (K, 2, 2) with det +1, translation t (K, 2); float64. A degenerate
        set of points (all equal) gets scale 0.
    """
    src = src.to(torch.float64)
    dst = dst.to(device=src.device, dtype=torch.float64).expand_as(src)
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    sc, dc = src - mu_s, dst - mu_d
    var_s = (sc**2).sum((1, 2)) / src.shape[1]
    cov = dc.transpose(1, 2) @ sc / src.shape[1]
    u, s, vh = torch.linalg.svd(cov)
    # A reflection would fit mirrored points better; a face crop must never be mirrored.
    d = torch.ones_like(s)
    d[:, 1] = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    d[:, 1] = torch.where(d[:, 1] == 0, torch.ones_like(d[:, 1]), d[:, 1])
    rot = u @ torch.diag_embed(d) @ vh
    scale = torch.where(var_s > 0, (s * d).sum(1) / var_s.clamp_min(1e-300), torch.zeros_like(var_s))
    t = mu_d.squeeze(1) - scale.unsqueeze(1) * (rot @ mu_s.transpose(1, 2)).squeeze(2)
    return scale, rot, t


def transform_points(points: torch.Tensor, scale: torch.Tensor, rot: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Apply the similarities to (K, P, 2) points."""
    p = points.to(torch.float64)
    return scale.view(-1, 1, 1) * (p @ rot.transpose(1, 2)) + t.unsqueeze(1)


@lru_cache(maxsize=32)
def _crop_coordinates(
    size: int, warp: str, keep_aspect_ratio: bool, device: str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    dev = torch.device(device)
    if warp == "none":
        r = torch.arange(size, dtype=torch.float64, device=dev)
        ys, xs = torch.meshgrid(r, r, indexing="ij")
        coords, empty = torch.stack((xs, ys), -1), None
    else:
        box = torch.tensor([warp_module.default_roi(size, size)], dtype=torch.float64, device=dev)
        try:
            grid = warp_module.warp_grid(warp, box, (size, size), (size, size), keep_aspect_ratio)[0]
        except warp_module.WarpError as exc:
            raise AlignError(str(exc)) from None
        mask = grid[..., 0] >= 2
        coords, empty = (grid + 1) * (size - 1) / 2, (mask if bool(mask.any()) else None)
    homogeneous = torch.cat((coords, torch.ones_like(coords[..., :1])), -1).reshape(-1, 3)
    return homogeneous.to(dtype), empty


def crop_coordinates(
    size: int,
    warp: str = "none",
    keep_aspect_ratio: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Where each output pixel of a crop reads, in the aligned frame's pixel units.

    Returns:
        (size * size, 3) homogeneous (x, y, 1) coordinates, row-major over the crop, and a
        (size, size) bool mask of pixels that read nothing (the circular warp's corners), or None.
        Cached: do not modify them.
    """
    return _crop_coordinates(int(size), warp, bool(keep_aspect_ratio), str(torch.device(device)), dtype)


def source_affine(
    scale: torch.Tensor, rot: torch.Tensor, t: torch.Tensor, source_hw: tuple[int, int], pool: int = 1
) -> torch.Tensor:
    """(K, 3, 2) float64 matrices taking aligned-frame (x, y, 1) rows to normalised source coordinates.

    The inverse similarity R^T (x - t) / s, then, when the source was average-pooled by `pool`
    (pooled pixel p is the mean of pixels p*pool .. p*pool + pool - 1), onto the pooled image,
    then onto grid_sample's [-1, 1] (align_corners=True).
    """
    k = scale.shape[0]
    h, w = source_hw
    lin = rot / scale.view(k, 1, 1)  # rows of R^T/s as columns: x_src = (R^T/s) x - (R^T/s) t
    lin_t = lin.transpose(1, 2)  # R^T / s
    off = -(lin_t @ t.unsqueeze(2)).squeeze(2)
    norm = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=torch.float64, device=scale.device)
    lin_n = lin_t / pool * norm.view(1, 2, 1)
    off_n = ((off - (pool - 1) / 2) / pool) * norm.view(1, 2) - 1
    return torch.cat((lin_n, off_n.unsqueeze(2)), 2).transpose(1, 2)


def align_faces(
    image: torch.Tensor,
    landmarks: torch.Tensor,
    size: int = 112,
    warp: str = "none",
    keep_aspect_ratio: bool = False,
    antialias: bool = True,
) -> torch.Tensor:
    """Aligned crops (K, C, size, size) of the K faces of one image.

    Args:
        image: (C, H, W) float image (any range) on the device to work on.
        landmarks: (K, 5, 2) float landmarks in the image's pixel units.
        size: crop side; the template is ArcFace's scaled by size / 112.
        warp: a `ml.faces.warp` space applied in the aligned frame ("none": plain crop).
        keep_aspect_ratio: the warp's option.
        antialias: average-pool the source first when a face is shrunk more than 2x, so the
            bilinear sampling does not alias.

    Raises:
        AlignError: landmarks of the wrong shape, or degenerate (all points equal, not finite).
    """
    if landmarks.dim() != 3 or landmarks.shape[1:] != (5, 2):
        raise AlignError(f"landmarks must be (K, 5, 2), got {tuple(landmarks.shape)}")
    if image.dim() != 3:
        raise AlignError(f"image must be (C, H, W), got {tuple(image.shape)}")
    k = landmarks.shape[0]
    if k == 0:
        return image.new_zeros(0, image.shape[0], size, size)
    # The similarities are 5-point fits: solved on the host in float64 (one read of the landmarks if
    # they are on the device, none when they come from the detector as arrays), so neither the
    # degenerate check nor the choice of pooling waits on the device; only the (K, 3, 2) source
    # matrices travel, once per pooling factor, without blocking.
    lm = landmarks.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(lm).all()):
        raise AlignError("degenerate landmarks: not finite, or all five points at one place")
    scale, rot, t = umeyama(lm, template(size))
    if not bool((scale > 0).all()):
        raise AlignError("degenerate landmarks: not finite, or all five points at one place")
    coords, empty = crop_coordinates(size, warp, keep_aspect_ratio, image.device, image.dtype)
    out = image.new_empty(k, image.shape[0], size, size)
    pools = [max(1, math.floor(1.0 / s)) if antialias and s < 0.5 else 1 for s in scale.tolist()]
    for pool in sorted(set(pools)):
        idx = [i for i, p in enumerate(pools) if p == pool]
        src = image if pool == 1 else F.avg_pool2d(image.unsqueeze(0), pool, pool, ceil_mode=True)[0]
        mats = source_affine(scale[idx], rot[idx], t[idx], (int(src.shape[-2]), int(src.shape[-1])), pool)
        grid = coords @ to_device(mats.to(image.dtype), image.device)  # (len(idx), size * size, 2)
        if empty is not None:  # nothing to read there: far outside, so zeros padding gives 0
            grid = grid.masked_fill(empty.reshape(1, -1, 1), 4.0)
        # All faces of the image in one call: their grids stacked as rows of one tall grid.
        tall = grid.reshape(1, len(idx) * size, size, 2)
        crops = F.grid_sample(src.unsqueeze(0), tall, mode="bilinear", padding_mode="zeros", align_corners=True)
        crops = crops.view(image.shape[0], len(idx), size, size).transpose(0, 1)
        if len(idx) == k:
            out.copy_(crops)
        else:
            out[to_device(torch.tensor(idx), image.device)] = crops
    return out
