"""The latent encoder E: images in [-1, 1] -> z, a ResNet-18 with a linear head; its files on disk.

`LatentEncoder` is torchvision's resnet18 (weights=None) with its first convolution taking the
generator's channel count, its classifier removed (global-average-pooled 512-d features) and a
linear head to latent_dim. Training is in `ml.gan.train_encoder`.

On disk an encoder is `encoder.pt`: {"format", "in_channels", "latent_dim", "image_size",
"state_dict", "config"}, beside a `config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml.gan.common import GANConfigError

FORMAT = "facejobs.gan_encoder/1"
ENCODER_FILE = "encoder.pt"


class EncoderFileError(GANConfigError):
    """A folder or file does not hold a facejobs latent encoder."""


class LatentEncoder(nn.Module):
    """ResNet-18 -> pooled 512-d features -> Linear(512, latent_dim)."""

    def __init__(self, in_channels: int, latent_dim: int) -> None:
        super().__init__()
        from torchvision.models import resnet18

        if in_channels < 1 or latent_dim < 1:
            raise GANConfigError(f"in_channels and latent_dim must be >= 1, got {in_channels} and {latent_dim}")
        net = resnet18(weights=None)
        if in_channels != 3:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        features = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.head = nn.Linear(features, latent_dim)
        self.in_channels = int(in_channels)
        self.latent_dim = int(latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def save_encoder(
    encoder: LatentEncoder, folder: str | Path, image_size: tuple[int, int], config: dict[str, Any]
) -> dict[str, Path]:
    """Write encoder.pt and config.json into `folder`; returns name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {ENCODER_FILE: folder / ENCODER_FILE, "config.json": folder / "config.json"}
    torch.save(
        {
            "format": FORMAT,
            "in_channels": encoder.in_channels,
            "latent_dim": encoder.latent_dim,
            "image_size": list(image_size),
            "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
            "config": config,
        },
        paths[ENCODER_FILE],
    )
    paths["config.json"].write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    return paths


def load_encoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[LatentEncoder, dict[str, Any]]:
    """(encoder in eval mode on `device`, its saved header) from encoder.pt or a folder holding it.

    Raises:
        EncoderFileError: no encoder.pt, or a file of another kind.
    """
    p = Path(path)
    file = p / ENCODER_FILE if p.is_dir() else p
    if not file.is_file():
        raise EncoderFileError(f"no {ENCODER_FILE} at {p}: give a train_encoder job (job:<id>) or its encoder.pt")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise EncoderFileError(f"{file.name} cannot be read as a torch file: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise EncoderFileError(f"{file.name} is not a facejobs latent encoder (format {FORMAT})")
    encoder = LatentEncoder(int(blob["in_channels"]), int(blob["latent_dim"]))
    encoder.load_state_dict(blob["state_dict"])
    header = {k: v for k, v in blob.items() if k != "state_dict"}
    return encoder.to(device).eval(), header
