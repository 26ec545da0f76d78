"""Pieces shared by the backbone families: argument checks and the embedding head."""

from __future__ import annotations

import torch
from torch import nn


def as_hw(input_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """`input_size` as (height, width)."""
    if isinstance(input_size, int):
        return input_size, input_size
    if len(input_size) != 2:
        raise ValueError(f"input_size must be an int or (height, width), got {input_size!r}")
    return int(input_size[0]), int(input_size[1])


def check_common(name: str, embedding_size: int, in_channels: int, dropout: float, base_width: int) -> None:
    """Raise a `BackboneError` for impossible values of the common arguments."""
    from ml.backbones import BackboneError

    if int(embedding_size) < 1:
        raise BackboneError(f"{name}: embedding_size must be >= 1, got {embedding_size}")
    if int(in_channels) < 1:
        raise BackboneError(f"{name}: in_channels must be >= 1, got {in_channels}")
    if not 0.0 <= float(dropout) < 1.0:
        raise BackboneError(f"{name}: dropout must be in [0, 1), got {dropout}")
    if int(base_width) < 1:
        raise BackboneError(f"{name}: base_width must be >= 1, got {base_width}")


def check_input_size(name: str, input_size: int | tuple[int, int] | list[int], factor: int) -> tuple[int, int]:
    """`input_size` as (h, w), or a `BackboneError` when the trunk's `factor` downsampling empties it."""
    from ml.backbones import BackboneError

    h, w = as_hw(input_size)
    if h < factor or w < factor:
        raise BackboneError(
            f"{name}: input_size {h}x{w} is too small; the trunk downsamples by {factor}, "
            f"so each side must be >= {factor}"
        )
    return h, w


class EmbeddingHead(nn.Module):
    """BN2d -> dropout -> flatten -> Linear -> BN1d (ArcFace's "E" output layer).

    Args:
        channels: channels of the trunk's output.
        spatial: (h, w) of the trunk's output.
        embedding_size: d.
        dropout: dropout probability.
        freeze_gamma: fix the final BN1d's scale at 1 (insightface's `features.weight`).
    """

    def __init__(
        self, channels: int, spatial: tuple[int, int], embedding_size: int, dropout: float, freeze_gamma: bool
    ) -> None:
        super().__init__()
        self.bn2 = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * spatial[0] * spatial[1], embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        if freeze_gamma:
            nn.init.constant_(self.features.weight, 1.0)
            self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.bn2(x))
        return self.features(self.fc(torch.flatten(x, 1)))


def trunk_output_size(trunk: nn.Module, in_channels: int, input_size: tuple[int, int]) -> tuple[int, int, int]:
    """(channels, h, w) of `trunk` on a zero input, computed without touching BN statistics."""
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        out = trunk(torch.zeros(1, in_channels, *input_size))
    trunk.train(was_training)
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


def init_weights(module: nn.Module) -> None:
    """Kaiming init for convs and linears, unit/zero BN, PReLU at 0.25."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            if m.weight.requires_grad:
                nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
