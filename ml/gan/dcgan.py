"""DCGAN (Radford et al. 2016): the generator and discriminator, for square power-of-two images.

The default is the paper's 64x64 network: z -> 4x4 x 8w -> 8x8 x 4w -> 16x16 x 2w -> 32x32 x w
-> 64x64 x C (transposed 4x4 convolutions, stride 2, batch norm + ReLU, tanh out); the
discriminator mirrors it with strided convolutions and LeakyReLU(0.2), no batch norm on its first
layer, one logit out. Other sizes (16, 32, 128) add or drop a stage; `width` scales every layer.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from ml.gan.common import GANConfigError

SIZES = (16, 32, 64, 128)


def check_dcgan(image_size: int, channels: int, latent_dim: int, width: int) -> None:
    """Raise `GANConfigError` for sizes the architecture cannot build."""
    if image_size not in SIZES:
        raise GANConfigError(f"DCGAN image_size must be one of {', '.join(map(str, SIZES))}, got {image_size}")
    if channels not in (1, 3):
        raise GANConfigError(f"DCGAN channels must be 1 (grey) or 3 (RGB), got {channels}")
    if latent_dim < 1:
        raise GANConfigError(f"latent_dim must be >= 1, got {latent_dim}")
    if width < 1:
        raise GANConfigError(f"width must be >= 1, got {width}")


def _stages(image_size: int) -> int:
    """Number of stride-2 stages between 4x4 and the image (64 -> 4)."""
    return int(math.log2(image_size)) - 2


def init_dcgan_weights(module: nn.Module) -> None:
    """The DCGAN initialisation: conv weights N(0, 0.02), batch-norm gamma N(1, 0.02), beta 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (N, latent_dim) -> images (N, channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, channels: int = 1, image_size: int = 64, width: int = 64) -> None:
        super().__init__()
        check_dcgan(image_size, channels, latent_dim, width)
        self.latent_dim = int(latent_dim)
        n = _stages(image_size)
        widths = [width * 2 ** (n - 1 - i) for i in range(n)]  # 64x64, w=64: 512, 256, 128, 64
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for cin, cout in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(z.shape[0], self.latent_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """images (N, channels, image_size, image_size) in [-1, 1] -> one logit per image (N,)."""

    def __init__(self, channels: int = 1, image_size: int = 64, width: int = 64) -> None:
        super().__init__()
        check_dcgan(image_size, channels, 1, width)
        n = _stages(image_size)
        widths = [width * 2**i for i in range(n)]  # 64x64, w=64: 64, 128, 256, 512
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for cin, cout in itertools.pairwise(widths):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()
