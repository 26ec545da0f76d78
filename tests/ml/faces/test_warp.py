"""RoI-tanh warps: grids against a slow per-pixel reference of the formulas, round trips on a real face."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ml.faces import warp as W

WARPED = ("roi_tanh", "roi_tanh_polar", "roi_tanh_circular")
BOX = (3.5, 2.0, 13.0, 9.5)  # an off-centre, non-square RoI in a 12 x 16 source


def _ref_warp_xy(space: str, box, out_hw, i: int, j: int, keep: bool) -> tuple[float, float] | None:
    """Source pixel (x, y) sampled by output pixel (i, j), straight from the formulas (None: nothing)."""
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    a, b = w / math.sqrt(math.pi), h / math.sqrt(math.pi)
    ho, wo = out_hw
    if space == "roi_tanh":
        u, v = (2 * j + 1) / wo - 1, (2 * i + 1) / ho - 1
        return cx + w / 2 * math.atanh(u), cy + h / 2 * math.atanh(v)
    if space == "roi_tanh_polar":
        rho, theta = math.atanh(j / wo), 2 * math.pi * i / ho
    else:
        u, v = (2 * j + 1) / wo - 1, (2 * i + 1) / ho - 1
        r = math.hypot(u, v)
        if r >= 1:
            return None
        rho, theta = math.atanh(r), math.atan2(v, u)
    c, s = math.cos(theta), math.sin(theta)
    if keep:
        scale = a * b / math.sqrt(b * b * c * c + a * a * s * s)
        return cx + scale * rho * c, cy + scale * rho * s
    return cx + a * rho * c, cy + b * rho * s


def _ref_restore_ij(space: str, box, warped_hw, x: float, y: float, keep: bool) -> tuple[float, float]:
    """Warped-image (column, row) that original pixel (x, y) came from: the formulas inverted by hand."""
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    a, b = w / math.sqrt(math.pi), h / math.sqrt(math.pi)
    hw, ww = warped_hw
    if space == "roi_tanh":
        u, v = math.tanh((x - cx) / (w / 2)), math.tanh((y - cy) / (h / 2))
        return (u + 1) * ww / 2 - 0.5, (v + 1) * hw / 2 - 0.5
    if keep:
        theta = math.atan2(y - cy, x - cx)
        c, s = math.cos(theta), math.sin(theta)
        rho = math.hypot(x - cx, y - cy) / (a * b / math.sqrt(b * b * c * c + a * a * s * s))
    else:
        theta = math.atan2((y - cy) / b, (x - cx) / a)
        rho = math.hypot((x - cx) / a, (y - cy) / b)
    r = math.tanh(rho)
    if space == "roi_tanh_polar":
        return r * ww, (theta % (2 * math.pi)) * hw / (2 * math.pi)
    return (r * math.cos(theta) + 1) * ww / 2 - 0.5, (r * math.sin(theta) + 1) * hw / 2 - 0.5


def _load_face(orl_dir: Path, person: int = 1, shot: int = 1) -> torch.Tensor:
    img = np.asarray(Image.open(orl_dir / f"s{person}" / f"{shot}.pgm"), dtype=np.float32) / 255.0
    return torch.from_numpy(img)[None, None]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("space", WARPED)
def test_warp_grid_matches_per_pixel_reference(space: str, keep: bool) -> None:
    in_hw, out_hw = (12, 16), (10, 14)
    grid = W.warp_grid(space, torch.tensor([BOX], dtype=torch.float64), in_hw, out_hw, keep)
    assert grid.shape == (1, *out_hw, 2)
    outside = 0
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            ref = _ref_warp_xy(space, BOX, out_hw, i, j, keep)
            gx, gy = float(grid[0, i, j, 0]), float(grid[0, i, j, 1])
            if ref is None:
                outside += 1
                assert gx >= 2 and gy >= 2  # far enough out that bilinear zeros padding reads 0
                continue
            assert gx == pytest.approx(2 * ref[0] / (in_hw[1] - 1) - 1, abs=1e-5)
            assert gy == pytest.approx(2 * ref[1] / (in_hw[0] - 1) - 1, abs=1e-5)
    # Only the circular space leaves its corners (|(u, v)| >= 1) empty: 4 * 7 pixels on a 10 x 14 grid.
    assert outside == (28 if space == "roi_tanh_circular" else 0)


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("space", WARPED)
def test_restore_grid_matches_per_pixel_reference(space: str, keep: bool) -> None:
    warped_hw, out_hw = (10, 14), (12, 16)
    grid = W.restore_grid(space, torch.tensor([BOX], dtype=torch.float64), warped_hw, out_hw, keep)
    rows = warped_hw[0] + (1 if space == "roi_tanh_polar" else 0)  # polar wraps its first row
    for y in range(out_hw[0]):
        for x in range(out_hw[1]):
            col, row = _ref_restore_ij(space, BOX, warped_hw, x, y, keep)
            assert float(grid[0, y, x, 0]) == pytest.approx(2 * col / (warped_hw[1] - 1) - 1, abs=1e-5)
            assert float(grid[0, y, x, 1]) == pytest.approx(2 * row / (rows - 1) - 1, abs=1e-5)


@pytest.mark.parametrize("space", WARPED)
def test_warp_samples_its_grid_bilinearly(space: str) -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 12, 16, generator=gen)
    out = W.warp(images, space, roi=BOX, keep_aspect_ratio=True, out_size=(10, 14))
    grid = W.warp_grid(space, torch.tensor([BOX, BOX], dtype=torch.float64), (12, 16), (10, 14), True)
    ref = F.grid_sample(images, grid.float(), mode="bilinear", padding_mode="zeros", align_corners=True)
    assert out.shape == (2, 3, 10, 14)
    assert torch.allclose(out, ref, atol=1e-6)


def test_none_is_identity() -> None:
    images = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1))
    assert W.warp(images, "none") is images
    assert W.restore(images, "none") is images
    assert W.SPACES == ("none", "roi_tanh", "roi_tanh_polar", "roi_tanh_circular")


def test_default_roi_is_the_centred_box_of_ratio_0_8() -> None:
    assert W.default_roi(112, 92) == pytest.approx((45.5 - 36.8, 55.5 - 44.8, 45.5 + 36.8, 55.5 + 44.8))
    images = torch.rand(1, 1, 112, 92, generator=torch.Generator().manual_seed(2))
    for space in WARPED:
        assert torch.equal(W.warp(images, space), W.warp(images, space, roi=W.default_roi(112, 92)))


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("space", WARPED)
def test_round_trip_on_a_real_face_is_identity_inside_the_roi(orl_dir: Path, space: str, keep: bool) -> None:
    face = _load_face(orl_dir)  # 1 x 1 x 112 x 92, grey
    h, w = face.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dx, dy = (xs - (w - 1) / 2).abs(), (ys - (h - 1) / 2).abs()
    roi_mask, central = (dx <= 0.4 * w) & (dy <= 0.4 * h), (dx <= 0.2 * w) & (dy <= 0.2 * h)
    same = W.restore(W.warp(face, space, keep_aspect_ratio=keep), space, keep_aspect_ratio=keep)
    big = W.restore(
        W.warp(face, space, keep_aspect_ratio=keep, out_size=448),
        space,
        keep_aspect_ratio=keep,
        out_size=(h, w),
    )
    # Measured: same size 36.1-38.6 dB central, 33.3-34.7 dB over the whole RoI (its rim is
    # undersampled by the tanh); a 448 x 448 warp 48.7-50.7 dB central, 45.0-47.3 dB in the RoI.
    assert _psnr(same[0, 0][central], face[0, 0][central]) > 35
    assert _psnr(same[0, 0][roi_mask], face[0, 0][roi_mask]) > 32
    assert _psnr(big[0, 0][central], face[0, 0][central]) > 47
    assert _psnr(big[0, 0][roi_mask], face[0, 0][roi_mask]) > 44
    # The bound means something: restoring through another space's inverse is far off.
    other = "roi_tanh_polar" if space != "roi_tanh_polar" else "roi_tanh"
    wrong = W.restore(W.warp(face, space, keep_aspect_ratio=keep), other, keep_aspect_ratio=keep)
    assert _psnr(wrong[0, 0][central], face[0, 0][central]) < 20


def test_per_image_rois_equal_one_image_at_a_time(orl_dir: Path) -> None:
    faces = torch.cat([_load_face(orl_dir, p) for p in (1, 2, 3)])
    boxes = torch.tensor([[10.0, 12.0, 80.0, 100.0], [5.5, 20.0, 70.25, 90.0], [20.0, 5.0, 88.0, 60.0]])
    for space in WARPED:
        batched = W.warp(faces, space, roi=boxes, keep_aspect_ratio=True, out_size=(64, 48))
        for k in range(3):
            one = W.warp(faces[k : k + 1], space, roi=boxes[k], keep_aspect_ratio=True, out_size=(64, 48))
            assert torch.allclose(batched[k : k + 1], one, atol=1e-6)
        back = W.restore(batched, space, roi=boxes, keep_aspect_ratio=True, out_size=(112, 92))
        assert back.shape == (3, 1, 112, 92)


def test_roi_tanh_puts_the_roi_edge_at_tanh_1(orl_dir: Path) -> None:
    """The RoI's border lands where u = +-tanh(1) (~76% of the way out), whatever the box."""
    face = _load_face(orl_dir)
    grid = W.warp_grid(
        "roi_tanh", torch.tensor([[10.0, 20.0, 70.0, 100.0]], dtype=torch.float64), (112, 92), (200, 200)
    )
    xs = (grid[0, 0, :, 0] + 1) * (92 - 1) / 2
    inside = ((xs >= 10.0) & (xs <= 70.0)).sum().item()
    assert inside == pytest.approx(200 * math.tanh(1.0), abs=1)
    assert W.roi_tanh(face, out_size=(200, 200)).shape == (1, 1, 200, 200)


def test_convenience_functions_match_warp_and_restore() -> None:
    images = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    assert torch.equal(W.roi_tanh(images), W.warp(images, "roi_tanh"))
    assert torch.equal(W.roi_tanh_polar(images, None, True), W.warp(images, "roi_tanh_polar", None, True))
    assert torch.equal(W.roi_tanh_circular(images), W.warp(images, "roi_tanh_circular"))
    warped = W.roi_tanh_polar(images)
    assert torch.equal(W.roi_tanh_polar_restore(warped), W.restore(warped, "roi_tanh_polar"))
    assert torch.equal(W.roi_tanh_restore(warped), W.restore(warped, "roi_tanh"))
    assert torch.equal(W.roi_tanh_circular_restore(warped), W.restore(warped, "roi_tanh_circular"))


def test_bad_input_raises_warp_error() -> None:
    images = torch.rand(1, 1, 8, 8)
    with pytest.raises(W.WarpError, match="unknown warp space"):
        W.warp(images, "polar")
    with pytest.raises(W.WarpError, match=r"\(N, C, H, W\)"):
        W.warp(images[0], "roi_tanh")
    with pytest.raises(W.WarpError, match="floating point"):
        W.warp(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "roi_tanh")
    with pytest.raises(W.WarpError, match="x2 > x1"):
        W.warp(images, "roi_tanh", roi=(4, 4, 4, 6))
    with pytest.raises(W.WarpError, match="boxes"):
        W.warp(images, "roi_tanh", roi=[[0, 0, 4, 4], [0, 0, 5, 5]])


@pytest.mark.gpu  # need_gpu() runs first (tests/conftest.py): skips, or fails under FACEJOBS_REQUIRE_GPU=1
def test_cuda_matches_cpu() -> None:
    images = torch.rand(3, 3, 40, 32, generator=torch.Generator().manual_seed(4))
    for space in WARPED:
        cpu = W.restore(W.warp(images, space, keep_aspect_ratio=True), space, keep_aspect_ratio=True)
        gpu = W.restore(W.warp(images.cuda(), space, keep_aspect_ratio=True), space, keep_aspect_ratio=True)
        assert gpu.device.type == "cuda"
        assert torch.allclose(cpu, gpu.cpu(), atol=1e-4)


def test_the_default_roi_grid_is_built_once_per_size_and_gives_what_an_explicit_box_gives() -> None:
    images = torch.rand(4, 2, 12, 16, generator=torch.Generator().manual_seed(5))
    W._default_roi_grid.cache_clear()
    for space in WARPED:
        box = W.default_roi(12, 16)
        first = W.warp(images, space, keep_aspect_ratio=True)
        again = W.warp(images[:2], space, keep_aspect_ratio=True)  # another batch size: the same grid
        assert torch.equal(first, W.warp(images, space, roi=box, keep_aspect_ratio=True))
        assert torch.equal(again, first[:2])
        back = W.restore(first, space, keep_aspect_ratio=True)
        assert torch.equal(back, W.restore(first, space, roi=box, keep_aspect_ratio=True))
        assert torch.equal(W.restore(first, space, keep_aspect_ratio=True), back)
    info = W._default_roi_grid.cache_info()
    assert (info.misses, info.hits) == (6, 6)  # per space: a warp and a restore grid, each then reused once
    W.warp(images.double(), "roi_tanh")  # another dtype is another grid
    assert W._default_roi_grid.cache_info().misses == 7
