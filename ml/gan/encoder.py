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

from ml.core.safe_load import UnsafeFileError, WeightsMismatchError, check_fits, load_data_file, tensor_dict
from ml.gan.common import GANConfigError

FORMAT = "facejobs.gan_encoder/1"
ENCODER_FILE = "encoder.pt"
MAX_LATENT_DIM = 4096
MAX_IMAGE_SIDE = 1024


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
            # Through JSON, as config.json: plain data only, so the file loads with weights_only=True.
            "config": json.loads(json.dumps(config, sort_keys=True, default=str)),
        },
        paths[ENCODER_FILE],
    )
    paths["config.json"].write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    return paths


def load_encoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[LatentEncoder, dict[str, Any]]:
    """(encoder in eval mode on `device`, its saved header) from encoder.pt or a folder holding it.

    The file is read as data only and checked (header fields, every weight's name, shape and dtype)
    before a network is built for it.

    Raises:
        EncoderFileError: no encoder.pt, a file of another kind, or weights that do not fit; the
            message names the file and what was wrong.
    """
    p = Path(path)
    file = p / ENCODER_FILE if p.is_dir() else p
    if not file.is_file():
        raise EncoderFileError(f"no {ENCODER_FILE} at {p}: give a train_encoder job (job:<id>) or its encoder.pt")
    try:
        blob = load_data_file(file, file.name)
    except UnsafeFileError as exc:
        raise EncoderFileError(str(exc)) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise EncoderFileError(f"{file.name} is not a facejobs latent encoder (format {FORMAT})")
    in_channels: Any = blob.get("in_channels")
    latent_dim: Any = blob.get("latent_dim")
    size: Any = blob.get("image_size")
    if not (_small_int(in_channels, 3) and in_channels != 2) or not _small_int(latent_dim, MAX_LATENT_DIM):
        raise EncoderFileError(
            f"{file.name}: in_channels must be 1 or 3 and latent_dim 1..{MAX_LATENT_DIM}, "
            f"got {str(in_channels)[:20]} and {str(latent_dim)[:20]}"
        )
    if not (isinstance(size, list) and len(size) == 2 and all(_small_int(v, MAX_IMAGE_SIDE) for v in size)):
        raise EncoderFileError(f"{file.name}: image_size must be [height, width], each 1..{MAX_IMAGE_SIDE}")
    try:
        state = tensor_dict(blob.get("state_dict"), file.name)
        with torch.device("meta"):  # shapes only: nothing is allocated for weights that do not fit
            skeleton = LatentEncoder(int(in_channels), int(latent_dim))
        check_fits(skeleton, state, file.name, "the ResNet-18 latent encoder")
    except WeightsMismatchError as exc:
        raise EncoderFileError(str(exc)) from None
    encoder = LatentEncoder(int(in_channels), int(latent_dim))
    encoder.load_state_dict(state)
    header = {k: v for k, v in blob.items() if k != "state_dict"}
    return encoder.to(device).eval(), header


def _small_int(value: Any, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= high
