"""Face embedding models for bulk embedding and verification: FaceNet or a `train_embedding` backbone.

A `FaceModel` takes aligned [0, 1] crops and gives L2-normalised float32 embeddings, whatever the
network: it knows its input size, channels, normalisation, natural crop size, warp and, when its
training or evaluation recorded one, its verification threshold.

- `load_facenet(weights, path)`: facenet-pytorch's InceptionResnetV1 (160x160 RGB, 512-d). Its
  `vggface2`/`casia-webface` weights are downloaded where the machine is online (the library's
  own path, cached under TORCH_HOME); offline, pass the uploaded weights file (a state_dict, read
  with `weights_only=True`). `weights=None` builds random weights (speed tests only).
- `load_trained_model(folder)`: a folder written by `ml.arcface.model.save_trained`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml.arcface.model import Normalization, TrainedModelError, load_trained, preprocess
from ml.core.errors import InputError
from ml.core.safe_load import UnsafeFileError, WeightsMismatchError, check_fits, facenet_state_dict, load_data_file

FACENET_FILES = {
    "vggface2": "20180402-114759-vggface2.pt",
    "casia-webface": "20180408-102900-casia-webface.pt",
}
# facenet-pytorch's fixed_image_standardization: (x * 255 - 127.5) / 128.
FACENET_NORMALIZE = Normalization((127.5 / 255,) * 3, (128 / 255,) * 3)


class ModelLoadError(InputError):
    """The model files are missing, unreadable, or not the model they claim to be."""


class WeightsUnavailableError(ModelLoadError):
    """Pretrained weights could not be downloaded and no local file was given."""


@dataclass
class FaceModel:
    """An embedding network with its input pipeline.

    Attributes:
        module: the network, eval mode; maps normalised (N, C, H, W) to (N, d).
        model_id: what the index rows record (e.g. "facenet:vggface2", "job:<id>").
        input_size: (h, w) the network takes; crops are resized to it.
        in_channels: 1 or 3 (RGB crops are converted to grey for 1).
        normalize: [0, 1] -> network input.
        align_size: the crop side the model was made for (160 FaceNet, 112 otherwise).
        warp: the RoI-tanh space the model was trained in ("none" for FaceNet).
        embedding_size: d.
        threshold: cosine-similarity threshold for "same person" from the model's metrics, if any.
    """

    module: nn.Module
    model_id: str
    input_size: tuple[int, int]
    in_channels: int
    normalize: Normalization
    align_size: int
    warp: str
    embedding_size: int
    threshold: float | None = None

    def to(self, device: torch.device | str) -> FaceModel:
        self.module.to(device)
        return self

    @torch.no_grad()
    def embed(self, crops01: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
        """L2-normalised float32 embeddings (N, d) of RGB crops (N, 3, S, S) in [0, 1], on their device.

        With `flip_tta` the embedding of each crop and of its mirror image are summed first.
        """
        if crops01.shape[0] == 0:
            return crops01.new_zeros(0, self.embedding_size, dtype=torch.float32)
        x = preprocess(crops01, self.input_size, self.in_channels, self.normalize, "none")
        e = self.module(x).float()
        if flip_tta:
            e = e + self.module(torch.flip(x, dims=[3])).float()
        return F.normalize(e, dim=1)


def _find_weights_file(path: Path, weights: str) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise ModelLoadError(f"no weights file or folder at {path}")
    named = path / FACENET_FILES.get(weights, "")
    if named.is_file():
        return named
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".pt", ".pth"))
    if len(found) != 1:
        raise ModelLoadError(
            f"{path} holds {len(found)} .pt/.pth files; upload exactly one InceptionResnetV1 state_dict "
            f"(facenet-pytorch's {FACENET_FILES.get(weights, 'weights file')})"
        )
    return found[0]


FacenetError = Callable[[str, Exception, str], Exception]


def inception_resnet_v1(weights: str | None, file: Path | None, error: FacenetError) -> nn.Module:
    """facenet-pytorch's InceptionResnetV1: weights read from `file`, downloaded by name, or random.

    The one place the network is built, for embedding (`load_facenet` here) and for the GAN's
    perceptual loss (`ml.gan.perceptual.load_facenet`); each caller words its own errors.

    Args:
        weights: "vggface2" / "casia-webface" to download (only where online) when `file` is None;
            None (and no file) for random weights.
        file: a local state-dict file (a bare state dict or {"state_dict": ...}), read as data only.
        error: builds the exception to raise from (stage, cause, file name); stage is "download",
            "unsafe" (not a data-only torch file), "read" (not a dict of tensors) or "fit" (keys,
            shapes or dtypes of another network).

    Returns:
        The network in eval mode, on the CPU.
    """
    from facenet_pytorch import InceptionResnetV1

    if file is None:
        if weights is None:
            return InceptionResnetV1(pretrained=None).eval()
        try:
            return InceptionResnetV1(pretrained=weights).eval()
        except Exception as exc:  # urllib/HTTP/SSL/proxy errors: all mean "not available here"
            raise error("download", exc, weights) from None
    module = InceptionResnetV1(pretrained=None)
    try:
        state = facenet_state_dict(load_data_file(file, file.name), file.name)
    except UnsafeFileError as exc:
        raise error("unsafe", exc, file.name) from None
    except WeightsMismatchError as exc:
        raise error("read", exc, file.name) from None
    try:
        check_fits(module, state, file.name, "InceptionResnetV1")
    except WeightsMismatchError as exc:
        raise error("fit", exc, file.name) from None
    module.load_state_dict(state, strict=True)
    return module.eval()


def load_facenet(
    weights: str | None = "vggface2", path: str | Path | None = None, device: torch.device | str = "cpu"
) -> FaceModel:
    """facenet-pytorch's InceptionResnetV1 as a `FaceModel`.

    Args:
        weights: "vggface2" or "casia-webface"; None for random weights (pipeline speed tests).
        path: a local weights file (or a folder holding one); None downloads through facenet-pytorch.
        device: where the network runs.

    Raises:
        WeightsUnavailableError: no `path` and the download failed (offline machine).
        ModelLoadError: unknown weights name, or a file that is not an InceptionResnetV1 state_dict.
    """
    if weights is not None and weights not in FACENET_FILES:
        raise ModelLoadError(f"unknown FaceNet weights {weights!r}; one of {', '.join(FACENET_FILES)}")

    def error(stage: str, exc: Exception, name: str) -> Exception:
        if stage == "download":
            return WeightsUnavailableError(
                f"could not download the FaceNet {weights} weights ({type(exc).__name__}: {exc}); this "
                f"machine may be offline: upload {FACENET_FILES[str(weights)]} (POST /models) and pass it as "
                "the model's weights"
            )
        what = {"unsafe": "a readable torch state_dict", "read": "a state_dict of tensors"}
        return ModelLoadError(f"{name} is not {what.get(stage, 'an InceptionResnetV1 state_dict')}: {exc}")

    file = _find_weights_file(Path(path), str(weights)) if path is not None and weights is not None else None
    module = inception_resnet_v1(weights if file is None else None, file, error)
    module.eval().to(device)
    return FaceModel(
        module=module,
        model_id=f"facenet:{weights or 'random'}",
        input_size=(160, 160),
        in_channels=3,
        normalize=FACENET_NORMALIZE,
        align_size=160,
        warp="none",
        embedding_size=512,
    )


def read_threshold(folder: str | Path, config: dict[str, Any] | None = None) -> float | None:
    """The cosine-similarity threshold recorded for a model: metrics.json's `best_threshold` or
    `threshold`, else config.json's metrics; None when neither has one."""
    folder = Path(folder)
    sources: list[dict[str, Any]] = []
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            sources.append(json.loads(metrics_path.read_text()))
    if config and isinstance(config.get("metrics"), dict):
        sources.append(config["metrics"])
    for src in sources:
        for key in ("best_threshold", "threshold"):
            value = src.get(key)
            if isinstance(value, int | float) and -1.0 <= float(value) <= 1.0:
                return float(value)
    return None


def load_trained_model(folder: str | Path, model_id: str, device: torch.device | str = "cpu") -> FaceModel:
    """A backbone saved by `train_embedding` (backbone.pt, arcface.pt, config.json) as a `FaceModel`.

    Raises:
        ModelLoadError: the folder is not a trained model.
    """
    try:
        backbone, _, config = load_trained(folder, device)
    except TrainedModelError as exc:
        raise ModelLoadError(str(exc)) from None
    h, w = (int(v) for v in config["image_size"])
    return FaceModel(
        module=backbone.eval(),
        model_id=model_id,
        input_size=(h, w),
        in_channels=int(config["in_channels"]),
        normalize=Normalization.from_json(config["normalize"]),
        align_size=112,
        warp=config.get("warp") or "none",
        embedding_size=int(config["backbone_kwargs"].get("embedding_size", 0)) or _probe_size(backbone, h, w, config),
        threshold=read_threshold(folder, config),
    )


@torch.no_grad()
def _probe_size(backbone: nn.Module, h: int, w: int, config: dict[str, Any]) -> int:
    p = next(backbone.parameters())
    x = torch.zeros(2, int(config["in_channels"]), h, w, device=p.device, dtype=p.dtype)
    return int(backbone(x).shape[1])
