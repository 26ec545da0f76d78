"""`rtnet50`: the RoI Tanh-polar Transformer Network's ResNet-50 with hybrid bottlenecks (Lin et al. 2021).

For inputs warped into RoI-tanh-polar space (`warp="roi_tanh_polar"`, `ml.faces.warp`): rows are
angles (2*pi*i / H, so the first and last rows are neighbours) and columns radii (tanh space,
column j at j / W). Every bottleneck's 3x3 stage is the hybrid of the paper:

- a polar branch: 3x3 conv in polar space, padded circularly along the angle (rows) and by
  replication along the radius (columns);
- a Cartesian branch: the feature map resampled into RoI-tanh Cartesian space (u, v in (-1, 1),
  u = r cos(theta), v = r sin(theta)), a 3x3 conv there (zero padding), resampled back to polar;
- both concatenated, 1x1 conv, BN; the usual 1x1 -> hybrid -> 1x1 bottleneck with a residual.

The resampling grids depend on the RoI: this implementation uses the default RoI of the warp
(the face box `ml.faces.warp.default_roi` every preprocessed image shares), so the grids depend
only on each stage's size and are built once per size and device. A per-image RoI passed down the
stages (the paper's detector box) is not implemented. Note for whoever does it: with this project's
polar warp (`keep_aspect_ratio=False`, radii (w, h) / sqrt(pi)) the exact map from polar (angle,
tanh radius r) to the RoI's tanh-Cartesian space is u = tanh(2 / sqrt(pi) * atanh(r) * cos(angle)),
v likewise with sin, which no RoI's position or size enters; only `keep_aspect_ratio=True` makes it
depend on the RoI (through h / w), and the data pipeline warps without it and has no per-image box.
The Cartesian branch here uses u = r cos(angle), v = r sin(angle) (a tanh-circular space).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ml.backbones import register_backbone
from ml.backbones.common import EmbeddingHead, check_common, check_input_size, init_weights, trunk_output_size


def polar_to_cartesian_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """The `grid_sample` grid (1, h, w, 2) that reads a polar map (with its first row appended) at
    each Cartesian pixel's (angle, radius)."""
    v, u = torch.meshgrid(
        (torch.arange(h, device=device) + 0.5) / h * 2 - 1, (torch.arange(w, device=device) + 0.5) / w * 2 - 1,
        indexing="ij",
    )  # fmt: skip
    radius = torch.sqrt(u * u + v * v).clamp(max=1.0)
    angle = torch.atan2(v, u) % (2 * math.pi)
    # Row i of the polar map is angle 2*pi*i/h; the appended row h is angle 2*pi (row 0 again).
    y = angle / (2 * math.pi) * h / (h + 1) * 2 - 1 + 1 / (h + 1)
    x = radius * 2 - 1
    return torch.stack((x, y), dim=-1).unsqueeze(0)


def cartesian_to_polar_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """The `grid_sample` grid (1, h, w, 2) that reads a Cartesian map at each polar pixel's (u, v)."""
    angle = torch.arange(h, device=device) / h * 2 * math.pi
    radius = torch.arange(w, device=device) / w
    theta, r = torch.meshgrid(angle, radius, indexing="ij")
    return torch.stack((r * torch.cos(theta), r * torch.sin(theta)), dim=-1).unsqueeze(0)


class HybridConv(nn.Module):
    """The hybrid 3x3 stage: polar branch and Cartesian branch, concatenated, 1x1 conv, BN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = max(1, cout // 2)
        self.stride = stride
        self.polar = nn.Conv2d(cin, half, kernel_size=3, stride=stride, padding=0, bias=False)
        self.cartesian = nn.Conv2d(cin, cout - half if cout > 1 else 1, kernel_size=3, stride=1, padding=1, bias=False)
        self.fuse = nn.Conv2d(half + self.cartesian.out_channels, cout, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self._grids: dict[tuple[int, int, int, str], torch.Tensor] = {}

    def _grid(self, kind: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (kind, h, w, str(device))
        if key not in self._grids:
            make = polar_to_cartesian_grid if kind == 0 else cartesian_to_polar_grid
            self._grids[key] = make(h, w, device)
        return self._grids[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        # Polar: circular along the angle (rows), replicate along the radius (columns).
        padded = F.pad(F.pad(x, (0, 0, 1, 1), mode="circular"), (1, 1, 0, 0), mode="replicate")
        polar = self.polar(padded)
        # Cartesian: resample (the angle wraps: append row 0), convolve, resample back at polar's size.
        wrapped = torch.cat((x, x[:, :, :1]), dim=2)
        grid = self._grid(0, h, w, x.device).to(x.dtype).expand(n, -1, -1, -1)
        cart = F.grid_sample(wrapped, grid, mode="bilinear", padding_mode="border", align_corners=False)
        cart = self.cartesian(cart)
        ph, pw = polar.shape[2], polar.shape[3]
        back = self._grid(1, ph, pw, x.device).to(x.dtype).expand(n, -1, -1, -1)
        cart = F.grid_sample(cart, back, mode="bilinear", padding_mode="border", align_corners=False)
        return self.bn(self.fuse(torch.cat((polar, cart), dim=1)))


class HybridBottleneck(nn.Module):
    """1x1 conv, BN, ReLU -> hybrid 3x3 (stride), ReLU -> 1x1 conv (x4), BN -> + shortcut -> ReLU."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.reduce = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.hybrid = HybridConv(width, width, stride)
        self.expand = nn.Sequential(nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(F.relu(self.hybrid(self.reduce(x))))
        return F.relu(out + self.shortcut(x))


class RTNet(nn.Module):
    """Stem (3x3 conv, BN, ReLU; polar-padded) -> 4 stages of hybrid bottlenecks -> embedding head."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        embedding_size: int,
        in_channels: int,
        input_size: tuple[int, int],
        dropout: float,
        base_width: int,
    ) -> None:
        super().__init__()
        self.embedding_size, self.in_channels, self.input_size = embedding_size, in_channels, input_size
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        cin = base_width
        for stage, count in enumerate(layers):
            width = base_width * 2**stage
            for i in range(count):
                blocks.append(HybridBottleneck(cin, width, 2 if i == 0 else 1))
                cin = width * HybridBottleneck.expansion
        self.body = nn.Sequential(self.stem, *blocks)
        channels, h, w = trunk_output_size(self.body, in_channels, input_size)
        self.head = EmbeddingHead(channels, (h, w), embedding_size, dropout, freeze_gamma=True)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@register_backbone()
def rtnet50(
    embedding_size: int = 512,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = 112,
    dropout: float = 0.0,
    base_width: int = 64,
) -> nn.Module:
    """RTNet-50: ResNet-50's stages [3, 4, 6, 3] of hybrid bottlenecks, for roi_tanh_polar inputs."""
    check_common("rtnet50", embedding_size, in_channels, dropout, base_width)
    hw = check_input_size("rtnet50", input_size, 16)
    return RTNet((3, 4, 6, 3), int(embedding_size), int(in_channels), hw, float(dropout), int(base_width))
