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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml.backbones import backbone_defaults, create_backbone
from ml.core.errors import InputError
from ml.core.safe_load import UnsafeFileError, WeightsMismatchError, check_fits, load_data_file, tensor_dict
from ml.metrics.verification import VerificationReport, embed_images, evaluate_embeddings

WARPS = ("none", "roi_tanh", "roi_tanh_polar", "roi_tanh_circular")
FORMAT = "facejobs.embedding/1"
MAX_IMAGE_SIDE = 1024  # a network input side; larger would be a caller asking the worker for gigabytes


class TrainedModelError(InputError):
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
    """Warp [0, 1] images into `space` with `ml.faces.warp` (imported only when a warp is asked for)."""
    if space == "none":
        return images
    if space not in WARPS:
        raise ValueError(f"unknown warp {space!r}; choose one of {', '.join(WARPS)}")
    from ml.faces import warp as warp_module  # someone else's module; only needed for warped models

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


def _read(path: Path) -> Any:
    """A model file's content, read as data only (`ml.core.safe_load`)."""
    try:
        return load_data_file(path, path.name)
    except FileNotFoundError:
        raise TrainedModelError(f"no {path.name} at {path.parent}") from None
    except UnsafeFileError as exc:
        raise TrainedModelError(str(exc)) from None


def _check_input_config(config: dict[str, Any], name: str) -> None:
    """Refuse input-pipeline settings that are not what `save_trained` writes (or would cost anything)."""
    size = config.get("image_size")
    if size is not None and not (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE for v in size)
    ):
        raise TrainedModelError(f"{name}: image_size must be [height, width], each 1..{MAX_IMAGE_SIDE}, got {size!r}")
    channels = config.get("in_channels")
    if channels is not None and channels not in (1, 3):
        raise TrainedModelError(f"{name}: in_channels must be 1 or 3, got {channels!r}")
    norm = config.get("normalize")
    if norm is not None:
        ok = isinstance(norm, dict) and all(
            isinstance(norm.get(k), list)
            and len(norm[k]) == (channels or len(norm[k]))
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in norm[k])
            for k in ("mean", "std")
        )
        if not ok or any(v <= 0 for v in norm["std"]):
            raise TrainedModelError(
                f"{name}: normalize must be {{'mean': [...], 'std': [...]}} with one finite number per channel "
                f"(std > 0), got {str(norm)[:200]}"
            )
    warp = config.get("warp")
    if warp is not None and warp not in WARPS:
        raise TrainedModelError(f"{name}: unknown warp {str(warp)[:50]!r}; one of {', '.join(WARPS)}")


def _build_backbone(blob: dict[str, Any], name: str) -> nn.Module:
    """The backbone `blob` describes, with its weights, after checking them on a meta-device copy."""
    arch, kwargs = blob["backbone"], blob["backbone_kwargs"]
    if not isinstance(arch, str) or not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TrainedModelError(f"{name}: backbone must be a name and backbone_kwargs a dict of keyword arguments")
    state = tensor_dict(blob["state_dict"], name)
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated for a file that does not fit
            skeleton = create_backbone(arch, **kwargs)
    except Exception as exc:  # unknown name or kwargs, or values the constructor refuses
        raise TrainedModelError(f"{name}: backbone {arch[:50]!r} cannot be built from its kwargs: {exc}") from None
    check_fits(skeleton, state, name, f"backbone {arch}")
    model = create_backbone(arch, **kwargs)
    model.load_state_dict(state)
    return model


def load_backbone_file(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a backbone from backbone.pt alone: (module in eval mode, its saved header).

    Raises:
        TrainedModelError: no file, not a facejobs backbone file, or weights that do not fit the
            architecture its header names; the message names the file and what was wrong.
    """
    path = Path(path)
    blob = _read(path)
    if not isinstance(blob, dict) or "state_dict" not in blob or "backbone" not in blob:
        raise TrainedModelError(f"{path.name} is not a facejobs backbone file (no state_dict/backbone keys)")
    if blob.get("format", FORMAT) != FORMAT:
        raise TrainedModelError(f"{path.name} has format {str(blob['format'])[:50]!r}; this facejobs reads {FORMAT}")
    blob.setdefault("backbone_kwargs", {})
    _check_input_config(blob, path.name)
    try:
        model = _build_backbone(blob, path.name)
    except WeightsMismatchError as exc:
        raise TrainedModelError(str(exc)) from None
    model.to(device).eval()
    header = {k: v for k, v in blob.items() if k != "state_dict"}
    return model, header


def _check_arcface(arc: Any, name: str, header: dict[str, Any]) -> torch.Tensor:
    """The class-weight matrix W (d, C) of an arcface.pt blob, checked against the backbone's header."""
    if not isinstance(arc, dict) or not isinstance(arc.get("weight"), torch.Tensor):
        raise TrainedModelError(f"{name} is not a facejobs ArcFace weight file (no 'weight' tensor)")
    weight = arc["weight"]
    if weight.dim() != 2 or not weight.dtype.is_floating_point or weight.layout != torch.strided:
        raise TrainedModelError(
            f"{name}: weight must be a dense floating (embedding_size, num_classes) matrix, "
            f"got {weight.dtype} of shape {tuple(weight.shape)}"
        )
    d = header["backbone_kwargs"].get("embedding_size", backbone_defaults(header["backbone"]).get("embedding_size"))
    if isinstance(d, int) and weight.shape[0] != d:
        raise TrainedModelError(f"{name}: weight has {weight.shape[0]} rows, the backbone's embeddings have {d}")
    classes = arc.get("num_classes", weight.shape[1])
    names = arc.get("class_names", [])
    if classes != weight.shape[1] or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TrainedModelError(f"{name}: num_classes/class_names do not match the {weight.shape[1]} weight columns")
    if names and len(names) != weight.shape[1]:
        raise TrainedModelError(f"{name}: {len(names)} class_names for {weight.shape[1]} weight columns")
    for key in ("margin", "scale"):
        value = arc.get(key, 1.0)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise TrainedModelError(f"{name}: {key} must be a finite number, got {str(value)[:50]!r}")
    return weight


def load_trained(
    folder: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, torch.Tensor, dict[str, Any]]:
    """(backbone in eval mode, ArcFace W of shape (d, C), config dict) of a trained model folder.

    The config dict is config.json's content when present, else rebuilt from backbone.pt's header;
    either way it holds "backbone", "backbone_kwargs", "image_size", "in_channels", "normalize"
    and "warp". `Normalization.from_json(config["normalize"])` gives the input normalisation.

    Raises:
        TrainedModelError: backbone.pt or arcface.pt missing, not ours, or not fitting each other.
    """
    folder = Path(folder)
    backbone, header = load_backbone_file(folder / "backbone.pt", device)
    arc_path = folder / "arcface.pt"
    if not arc_path.is_file():
        raise TrainedModelError(f"no arcface.pt in {folder}: the class weights are saved beside backbone.pt")
    arc = _read(arc_path)
    weight = _check_arcface(arc, arc_path.name, header)
    cfg_path = folder / "config.json"
    config: dict[str, Any] = {}
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except (ValueError, RecursionError) as exc:
            raise TrainedModelError(f"config.json is not JSON: {str(exc)[:200]}") from None
        if not isinstance(config, dict):
            raise TrainedModelError("config.json must hold a JSON object")
    for key in ("backbone", "backbone_kwargs", "image_size", "in_channels", "normalize", "warp"):
        config.setdefault(key, header.get(key))
    for key in ("margin", "scale", "class_names", "num_classes"):
        config.setdefault(key, arc.get(key))
    _check_input_config(config, "config.json")
    return backbone, weight.to(device), config


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
