"""What a trained embedding model is: its config, its input pipeline, and its files on disk.

A trained model is a folder with
- `backbone.pt`: {"format", "backbone", "backbone_kwargs", "state_dict", "image_size",
  "in_channels", "normalize", "warp"} (enough to rebuild it without config.json);
- `arcface.pt`: {"weight": W of shape (d, C) as pytorch-metric-learning's `ArcFaceLoss.W`,
  "margin" (degrees), "scale", "num_classes", "class_names"};
- `config.json`: resolved params, versions, seed, dataset ref and metrics.

`load_trained(folder)` gives back (backbone in eval mode, W (d, C), config dict).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml.backbones import create_backbone
from ml.verify import VerificationReport, embed_images, evaluate_embeddings

WARPS = ("none", "roi_tanh", "roi_tanh_polar", "roi_tanh_circular")
FORMAT = "facejobs.embedding/1"


class TrainedModelError(ValueError):
    """A model folder is missing files or holds something else."""


@dataclass(frozen=True)
class Normalization:
    """Per-channel input normalisation x -> (x - mean) / std applied to images in [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def uniform(cls, channels: int, mean: float = 0.5, std: float = 0.5) -> Normalization:
        return cls((float(mean),) * channels, (float(std),) * channels)

    def _shape(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return m, s

    def apply(self, images01: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> network input."""
        m, s = self._shape(images01)
        return (images01 - m) / s

    def undo(self, x: torch.Tensor) -> torch.Tensor:
        """Network input -> [0, 1] images (not clamped)."""
        m, s = self._shape(x)
        return x * s + m

    def valid_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) per channel, shaped (1, C, 1, 1): where [0, 1] pixels land after `apply`."""
        m = torch.tensor(self.mean).view(1, -1, 1, 1)
        s = torch.tensor(self.std).view(1, -1, 1, 1)
        return (0 - m) / s, (1 - m) / s

    def to_json(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Normalization:
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


def apply_warp(images: torch.Tensor, space: str) -> torch.Tensor:
    """Warp [0, 1] images into `space` with `ml.warp` (imported only when a warp is asked for)."""
    if space == "none":
        return images
    if space not in WARPS:
        raise ValueError(f"unknown warp {space!r}; choose one of {', '.join(WARPS)}")
    from ml import warp as warp_module  # someone else's module; only needed for warped models

    return warp_module.warp(images, space)


def preprocess(
    images01: torch.Tensor,
    image_size: tuple[int, int],
    in_channels: int,
    normalize: Normalization,
    warp: str = "none",
) -> torch.Tensor:
    """[0, 1] images (N, C, H, W) -> the network's input: resize, channel conversion, warp, normalise."""
    x = images01.float()
    if x.shape[1] != in_channels:
        if in_channels == 1 and x.shape[1] == 3:
            x = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif in_channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f"cannot feed {x.shape[1]}-channel images to a {in_channels}-channel model")
    if tuple(x.shape[2:]) != tuple(image_size):
        x = F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(0, 1)
    return normalize.apply(apply_warp(x, warp))


def save_trained(
    folder: str | Path,
    backbone: nn.Module,
    arcface_weight: torch.Tensor,
    config: dict[str, Any],
    class_names: list[str],
) -> dict[str, Path]:
    """Write backbone.pt, arcface.pt and config.json into `folder`; returns name -> path.

    `config` must hold "backbone", "backbone_kwargs", "image_size", "in_channels", "normalize",
    "warp", "margin" and "scale" (see `TrainConfig.resolved`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("backbone.pt", "arcface.pt", "config.json")}
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    torch.save(
        {
            "format": FORMAT,
            "backbone": config["backbone"],
            "backbone_kwargs": config["backbone_kwargs"],
            "state_dict": state,
            "image_size": list(config["image_size"]),
            "in_channels": int(config["in_channels"]),
            "normalize": config["normalize"],
            "warp": config.get("warp", "none"),
        },
        paths["backbone.pt"],
    )
    torch.save(
        {
            "format": FORMAT,
            "weight": arcface_weight.detach().cpu(),
            "layout": "(embedding_size, num_classes)",
            "margin": float(config["margin"]),
            "scale": float(config["scale"]),
            "num_classes": int(arcface_weight.shape[1]),
            "class_names": list(class_names),
        },
        paths["arcface.pt"],
    )
    paths["config.json"].write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    return paths


def load_backbone_file(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a backbone from backbone.pt alone: (module in eval mode, its saved header)."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise TrainedModelError(f"no backbone file at {path}") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or "backbone" not in blob:
        raise TrainedModelError(f"{path} is not a facejobs backbone file (no state_dict/backbone keys)")
    model = create_backbone(blob["backbone"], **blob["backbone_kwargs"])
    model.load_state_dict(blob["state_dict"])
    model.to(device).eval()
    header = {k: v for k, v in blob.items() if k != "state_dict"}
    return model, header


def load_trained(
    folder: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """(backbone in eval mode, ArcFace W of shape (d, C), config dict) of a trained model folder.

    The config dict is config.json's content when present, else rebuilt from backbone.pt's header;
    either way it holds "backbone", "backbone_kwargs", "image_size", "in_channels", "normalize"
    and "warp". `Normalization.from_json(config["normalize"])` gives the input normalisation.

    Raises:
        TrainedModelError: backbone.pt or arcface.pt missing or not ours.
    """
    folder = Path(folder)
    backbone, header = load_backbone_file(folder / "backbone.pt", device)
    arc_path = folder / "arcface.pt"
    if not arc_path.is_file():
        raise TrainedModelError(f"no arcface.pt in {folder}: the class weights are saved beside backbone.pt")
    arc = torch.load(arc_path, map_location="cpu", weights_only=False)
    if not isinstance(arc, dict) or "weight" not in arc:
        raise TrainedModelError(f"{arc_path} is not a facejobs ArcFace weight file")
    cfg_path = folder / "config.json"
    config: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    for key in ("backbone", "backbone_kwargs", "image_size", "in_channels", "normalize", "warp"):
        config.setdefault(key, header.get(key))
    for key in ("margin", "scale", "class_names", "num_classes"):
        config.setdefault(key, arc.get(key))
    return backbone, arc["weight"].to(device), config


def evaluate_model(
    backbone: nn.Module,
    images01: torch.Tensor,
    labels: torch.Tensor,
    config: dict[str, Any],
    flip_tta: bool = False,
    folds: int = 10,
    max_pairs: int = 3000,
    gallery_fraction: float = 0.5,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[VerificationReport, torch.Tensor]:
    """Verification report and L2-normalised embeddings of [0, 1] `images01` through a trained
    model's input pipeline (`config` as returned by `load_trained`)."""
    norm = Normalization.from_json(config["normalize"])
    x = preprocess(
        images01, tuple(config["image_size"]), int(config["in_channels"]), norm, config.get("warp") or "none"
    )
    emb = embed_images(backbone, x, flip_tta=flip_tta, device=device)
    report = evaluate_embeddings(
        emb, labels, folds=folds, max_pairs=max_pairs, seed=seed, gallery_fraction=gallery_fraction
    )
    return report, emb
