"""PSNR and SSIM against known values; stochastic clipping; batched recovery = one image at a time."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ml.gan.dcgan import DCGANGenerator
from ml.gan.metrics import psnr, ssim
from ml.gan.recover import gradient_recover, recover_latent, stochastic_clip_


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small convolutions: one thread is about as fast, and far faster when the 2 cores are busy."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM the way skimage computes it with gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1 (Wang et al. 2004), written with scipy: gaussian
    filtering truncated at 3.5 sigma (11 taps), statistics kept where the window fits."""
    c1, c2 = 0.01**2, 0.03**2

    def blur(a: np.ndarray) -> np.ndarray:
        return gaussian_filter(a, sigma=1.5, truncate=3.5)[5:-5, 5:-5]

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def test_psnr_of_a_known_error() -> None:
    x = torch.full((2, 1, 8, 8), 0.5)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1] += 0.01  # MSE 1e-4 -> 40 dB
    torch.testing.assert_close(psnr(y, x), torch.tensor([20.0, 40.0]), rtol=0, atol=1e-4)
    assert torch.isinf(psnr(x, x)).all()


def test_ssim_identical_images_is_one_and_constants_follow_the_closed_form() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 20, 24, generator=gen)
    torch.testing.assert_close(ssim(x, x), torch.ones(3), rtol=0, atol=1e-6)
    # Two flat images a and b: the variances vanish and SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.2, 0.6, 1e-4
    value = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b))
    assert float(value) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-7)  # 0.6000999...


def test_ssim_matches_the_reference_formula_on_a_real_example() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 24, 28, generator=gen)
    y = (x + 0.15 * torch.randn(1, 1, 24, 28, generator=gen)).clamp(0, 1)
    expected = _ssim_reference(x[0, 0].double().numpy(), y[0, 0].double().numpy())
    assert 0.3 < expected < 0.9  # a genuinely partial similarity, not a degenerate case
    assert float(ssim(y, x)) == pytest.approx(expected, abs=1e-6)


def test_stochastic_clip_redraws_in_place_and_does_not_clamp() -> None:
    z = torch.tensor([[0.5, -3.0, 2.5, 1.0], [-1.2, 0.0, 4.0, -1.0]], requires_grad=True)
    before = z.detach().clone()
    mask = stochastic_clip_(z, 1.0, torch.Generator().manual_seed(7))
    expected_mask = before.abs() > 1.0
    assert torch.equal(mask, expected_mask)
    after = z.detach()
    assert torch.equal(after[~mask], before[~mask])  # |z| <= c untouched (1.0 and -1.0 included)
    # The redrawn coordinates are the independent U(-1, 1) draws of a generator seeded the same way
    draws = torch.rand(before.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1
    torch.testing.assert_close(after[mask], draws[mask], rtol=0, atol=0)
    # ... strictly inside, never at the bound, and unlike plain clamping.
    assert (after[mask].abs() < 1.0).all()
    assert not torch.allclose(after[mask], before.clamp(-1, 1)[mask])


def test_stochastic_clipping_keeps_z_inside_after_every_step() -> None:
    torch.manual_seed(0)
    gen = DCGANGenerator(latent_dim=8, channels=1, image_size=16, width=4).eval()
    targets = gen(torch.rand(6, 8) * 4 - 2).detach()  # images of latents far outside [-1, 1]
    z0 = torch.rand(6, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    seen: list[torch.Tensor] = []

    def record(step: int, z: torch.Tensor) -> None:
        seen.append(z.clone())

    gradient_recover(gen, targets, z0, iterations=40, lr=0.2, clip=1.0, seed=3, step_hook=record)
    free: list[torch.Tensor] = []
    gradient_recover(gen, targets, z0, iterations=40, lr=0.2, clip=None, step_hook=lambda s, z: free.append(z.clone()))
    assert len(seen) == 40
    stacked = torch.stack(seen)
    assert float(stacked.abs().max()) <= 1.0  # never outside [-c, c] after any step
    assert not (stacked.abs() == 1.0).any()  # never pinned to the bound
    # Without clipping, the same optimisation leaves [-1, 1]: the clipping had work to do.
    assert float(torch.stack(free).abs().max()) > 1.5
    # Redraws happened: between consecutive steps some coordinates jumped further than Adam's
    # step (at most about lr = 0.2 per step) could take them.
    jumps = (stacked[1:] - stacked[:-1]).abs()
    assert int((jumps > 0.5).sum()) >= 5


def test_batched_recovery_equals_one_image_at_a_time() -> None:
    torch.manual_seed(0)
    gen = DCGANGenerator(latent_dim=8, channels=1, image_size=16, width=4).eval()
    with torch.no_grad():
        targets = gen(torch.randn(4, 8))
    z0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    batched, loss = gradient_recover(gen, targets, z0, iterations=25)
    alone = torch.cat([gradient_recover(gen, targets[i : i + 1], z0[i : i + 1], iterations=25)[0] for i in range(4)])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-4)
    assert loss.shape == (4,)


def test_recover_latent_returns_the_best_latent_and_per_image_loss() -> None:
    torch.manual_seed(0)
    gen = DCGANGenerator(latent_dim=8, channels=1, image_size=16, width=4).eval()
    with torch.no_grad():
        targets = gen(torch.randn(3, 8))
    res = recover_latent(gen, targets, "gradient", latent_dim=8, prior="normal", iterations=30, seed=4)
    assert res.z.shape == (3, 8) and res.images.shape == (3, 1, 16, 16) and res.iterations == 30
    with torch.no_grad():
        l1 = (gen(res.z) - targets).abs().flatten(1).mean(1)
    torch.testing.assert_close(res.l1, l1, rtol=0, atol=1e-6)
    assert res.method == "gradient" and res.seconds_per_image > 0
