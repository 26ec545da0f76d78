"""Per-image quality metrics of reconstructions: PSNR, SSIM, latent and embedding cosine.

All image metrics take [0, 1] images of shape (N, C, H, W) and return one value per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Wang et al. (2004): 11x11 gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image; identical images give +inf."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def gaussian_window(
    size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, device: torch.device | None = None
) -> torch.Tensor:
    """The normalised 1-D gaussian of `size` taps, in float64 (its taps sum to 1 to double precision)."""
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' gaussian filtering of each channel (no padding, as Wang's filter2 'valid')."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> torch.Tensor:
    """Structural similarity per image (gaussian window, population statistics, mean over channels).

    Images smaller than the window use a window the size of their smaller side (odd).

    Returns:
        (N,) SSIM values; identical images give exactly 1.
    """
    x, y = x.double(), y.double()
    side = min(x.shape[-2:])
    if side < window:
        window = side if side % 2 == 1 else side - 1
    g = gaussian_window(window, sigma, x.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    var_x = _blur(x * x, g) - mu_x**2
    var_y = _blur(y * y, g) - mu_y**2
    cov = _blur(x * y, g) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(1).float()


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two (N, d) tensors."""
    return F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1, eps=1e-12)


def summarise(values: torch.Tensor) -> dict[str, float]:
    """Mean, median, min and max of per-image values (infinite PSNRs are left out of the mean)."""
    v = values.detach().double().cpu()
    finite = v[torch.isfinite(v)]
    mean = float(finite.mean()) if finite.numel() else math.inf
    return {"mean": mean, "median": float(v.median()), "min": float(v.min()), "max": float(v.max())}
