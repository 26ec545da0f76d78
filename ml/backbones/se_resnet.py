"""`se_resnet18`: the "resnet_face18" layout of the ArcFace-inversion project.

Stem conv3x3 (stride 1) + BN + PReLU + maxpool 2, then four stages of two IR blocks (widths
64/128/256/512, strides 1/2/2/2), then BN2d -> dropout -> flatten -> Linear -> BN1d. The trunk
downsamples by 16, and the head's Linear layer is sized from the actual input size (the original
hard-coded 128x128 input).
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


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class SEModule(nn.Module):
    """Squeeze-and-excitation: global pool -> FC (C/r) -> ReLU -> FC (C) -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        # A mean, not AdaptiveAvgPool2d(1): the same numbers, and its CUDA backward is deterministic
        # (the pool's has no deterministic kernel, so deterministic mode refused every se_resnet18 job).
        w = self.fc(x.mean(dim=(2, 3))).view(n, c, 1, 1)
        return x * w


class IRBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN -> SE? -> + shortcut -> PReLU."""

    def __init__(self, cin: int, cout: int, stride: int, use_se: bool) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cin)
        self.bn1 = nn.BatchNorm2d(cin)
        self.prelu = nn.PReLU(cin)
        self.conv2 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SEModule(cout) if use_se else nn.Identity()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.prelu_out = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.prelu(self.bn1(self.conv1(self.bn0(x))))
        out = self.se(self.bn2(self.conv2(out)))
        return self.prelu_out(out + self.downsample(x))


class SEResNetFace(nn.Module):
    """The resnet_face trunk plus the embedding head."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        embedding_size: int,
        in_channels: int,
        input_size: tuple[int, int],
        dropout: float,
        use_se: bool,
        base_width: int,
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.in_channels = in_channels
        self.input_size = input_size
        widths = [base_width * m for m in (1, 2, 4, 8)]
        strides = (1, 2, 2, 2)
        stem = [
            nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.PReLU(widths[0]),
            nn.MaxPool2d(kernel_size=2, stride=2),
        ]
        blocks: list[nn.Module] = []
        cin = widths[0]
        for width, stride, count in zip(widths, strides, layers, strict=True):
            for i in range(count):
                blocks.append(IRBlock(cin, width, stride if i == 0 else 1, use_se))
                cin = width
        self.body = nn.Sequential(*stem, *blocks)
        channels, h, w = trunk_output_size(self.body, in_channels, input_size)
        self.head = EmbeddingHead(channels, (h, w), embedding_size, dropout, freeze_gamma=False)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@register_backbone()
def se_resnet18(
    embedding_size: int = 512,
    in_channels: int = 3,
    input_size: int | tuple[int, int] = 128,
    dropout: float = 0.5,
    use_se: bool = True,
    base_width: int = 64,
) -> nn.Module:
    """resnet_face18 with optional squeeze-and-excitation (reduction 16); any input size >= 16."""
    check_common("se_resnet18", embedding_size, in_channels, dropout, base_width)
    hw = check_input_size("se_resnet18", input_size, 16)
    return SEResNetFace(
        (2, 2, 2, 2), int(embedding_size), int(in_channels), hw, float(dropout), bool(use_se), int(base_width)
    )
