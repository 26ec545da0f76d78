"""`iresnet18` / `iresnet50`: the ArcFace (insightface) improved-ResNet layout.

Stem conv3x3 (stride 1) + BN + PReLU; four stages ([2,2,2,2] or [3,4,14,3] blocks, widths
64/128/256/512, every stage stride 2); block = BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) ->
BN -> + shortcut, with no activation after the add. Head: BN2d -> dropout -> flatten -> Linear ->
BN1d with its scale frozen at 1. Designed for 112x112x3 and a 512-d embedding; the head follows the
input size, so smaller inputs (side >= 16) work too.
"""

from __future__ import annotations

import torch
from torch import nn

from ml.backbones import register_backbone
from ml.backbones.common import (
    EmbeddingHead,
    check_common,
    check_input_size,
    init_weights,
    trunk_output_size,
)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN -> + shortcut (no activation after)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn2(self.conv1(self.bn1(x))))
        out = self.bn3(self.conv2(out))
        return out + self.downsample(x)


class IResNet(nn.Module):
    """insightface's IResNet trunk plus the embedding head."""

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
        self.embedding_size = embedding_size
        self.in_channels = in_channels
        self.input_size = input_size
        widths = [base_width * m for m in (1, 2, 4, 8)]
        stem = [
            nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0], eps=1e-5),
            nn.PReLU(widths[0]),
        ]
        blocks: list[nn.Module] = []
        cin = widths[0]
        for width, count in zip(widths, layers, strict=True):
            for i in range(count):
                blocks.append(IBasicBlock(cin, width, 2 if i == 0 else 1))
                cin = width
        self.body = nn.Sequential(*stem, *blocks)
        channels, h, w = trunk_output_size(self.body, in_channels, input_size)
        self.head = EmbeddingHead(channels, (h, w), embedding_size, dropout, freeze_gamma=True)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _build(
    name: str,
    layers: tuple[int, int, int, int],
    embedding_size: int,
    in_channels: int,
    input_size: int | tuple[int, int],
    dropout: float,
    base_width: int,
) -> nn.Module:
    check_common(name, embedding_size, in_channels, dropout, base_width)
    hw = check_input_size(name, input_size, 16)
    return IResNet(layers, int(embedding_size), int(in_channels), hw, float(dropout), int(base_width))


@register_backbone()
def iresnet18(
    embedding_size: int = 512,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = 112,
    dropout: float = 0.0,
    base_width: int = 64,
) -> nn.Module:
    """IResNet-18: stages [2, 2, 2, 2]."""
    return _build("iresnet18", (2, 2, 2, 2), embedding_size, in_channels, input_size, dropout, base_width)


@register_backbone()
def iresnet50(
    embedding_size: int = 512,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = 112,
    dropout: float = 0.0,
    base_width: int = 64,
) -> nn.Module:
    """IResNet-50: stages [3, 4, 14, 3]."""
    return _build("iresnet50", (3, 4, 14, 3), embedding_size, in_channels, input_size, dropout, base_width)
