"""Face-network features for the perceptual loss and the embedding-cosine metric.

A `FaceFeatures` wraps a frozen face network and collects the outputs of named layers in one
forward pass through forward hooks; the pass stops right after the last of them, so the layers
after it are not computed. Two networks are supported:

- facenet-pytorch's InceptionResnetV1 (`load_facenet`): input resized to 160x160, grey images
  replicated to 3 channels, facenet's fixed standardisation; default layers are the blocks that
  end in a concatenation: repeat_1, mixed_6a, repeat_2, mixed_7a, repeat_3. Its weights come from
  a local file (the artifact store); facenet's own downloader is kept for machines that are online.
- an embedding backbone trained by `train_embedding` (`load_trained_backbone`): its own input
  pipeline (size, channels, normalisation, warp); default layers are the last block of each stage.

`PerceptualLoss(features)(recon, target)` is the mean over layers of the MSE between features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml.faces.models import inception_resnet_v1
from ml.gan.common import GANConfigError

FACENET_LAYERS = ("repeat_1", "mixed_6a", "repeat_2", "mixed_7a", "repeat_3")
FACENET_SIZE = 160
FACENET_NAMES = ("vggface2", "casia-webface")
UPLOAD_HINT = (
    "upload the InceptionResnetV1 weights file (facenet-pytorch's 20180402-114759-vggface2.pt or "
    "20180408-102900-casia-webface.pt) as a model and name it as the perceptual/face model"
)


class PerceptualWeightsError(GANConfigError):
    """The face network's weights are missing, cannot be downloaded, or are not that network's."""


class _Truncate(Exception):
    """Raised by the last feature hook to end the forward pass early."""


class FaceFeatures(nn.Module):
    """A frozen face network with forward hooks on `layers`.

    Args:
        net: the network (put in eval mode, parameters frozen).
        layers: names (as in `net.named_modules()`) whose outputs are the features.
        prepare: maps generator images in [-1, 1] to the network's input.
        embed_fn: maps the prepared input to an (N, d) embedding (default: `net` itself).
        kind: a label for configs ("facenet" or "backbone").
    """

    def __init__(
        self,
        net: nn.Module,
        layers: Sequence[str],
        prepare: Callable[[torch.Tensor], torch.Tensor],
        embed_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        kind: str = "network",
    ) -> None:
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        modules = dict(net.named_modules())
        unknown = [name for name in layers if name not in modules]
        if not layers or unknown:
            raise GANConfigError(
                f"unknown feature layers {unknown or '(none given)'}; the network's blocks include "
                f"{', '.join(n for n, _ in net.named_children())}"
            )
        order = {name: i for i, (name, _) in enumerate(net.named_modules())}
        self.layers = sorted(dict.fromkeys(layers), key=order.__getitem__)  # execution order
        self.prepare = prepare
        self.embed_fn = embed_fn
        self.kind = kind
        self._store: dict[str, torch.Tensor] | None = None
        for name in self.layers:
            modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        last = name == self.layers[-1]

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if self._store is None:  # an ordinary forward (embed): hooks stay silent
                return
            self._store[name] = output
            if last:
                raise _Truncate

        return hook

    def train(self, mode: bool = True) -> FaceFeatures:
        """The network stays in eval mode (frozen batch-norm statistics) whatever the caller does."""
        super().train(mode)
        self.net.eval()
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every feature layer for [-1, 1] images, from one (truncated) forward pass."""
        store: dict[str, torch.Tensor] = {}
        self._store = store
        try:
            self.net(self.prepare(images))
        except _Truncate:
            pass
        finally:
            self._store = None
        return [store[name] for name in self.layers]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings of [-1, 1] images."""
        x = self.prepare(images)
        emb = self.embed_fn(x) if self.embed_fn is not None else self.net(x)
        return F.normalize(emb.flatten(1), dim=1)


class PerceptualLoss(nn.Module):
    """Mean over the feature layers of the MSE between features of `recon` and of `target`."""

    def __init__(self, features: FaceFeatures) -> None:
        super().__init__()
        self.features = features

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want = self.features.features(target)
        got = self.features.features(recon)
        return torch.stack([F.mse_loss(g, w) for g, w in zip(got, want, strict=True)]).mean()


def _facenet_prepare(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> facenet's input: 3 channels, 160x160, (x * 255 - 127.5) / 128."""
    x = images
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (FACENET_SIZE, FACENET_SIZE):
        shrink = min(x.shape[-2:]) > FACENET_SIZE
        x = F.interpolate(x, size=(FACENET_SIZE, FACENET_SIZE), mode="bilinear", align_corners=False, antialias=shrink)
    return x * (127.5 / 128.0)


def load_facenet(
    weights: str | Path | None,
    layers: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
) -> FaceFeatures:
    """facenet-pytorch's InceptionResnetV1 with weights from a local file.

    Args:
        weights: path of a state-dict file (a bare state dict or {"state_dict": ...}); the names
            "vggface2"/"casia-webface" use facenet-pytorch's downloader (only where online).
        layers: feature layers (default `FACENET_LAYERS`).
        device: where the network runs.

    Raises:
        PerceptualWeightsError: no weights given, the download failed, or the file is not
            InceptionResnetV1's.
    """
    if weights is None or str(weights) == "":
        raise PerceptualWeightsError(f"no face-network weights given and they cannot be downloaded here: {UPLOAD_HINT}")

    def error(stage: str, exc: Exception, name: str) -> Exception:
        if stage == "download":  # no network, proxy, HTTP error: the remedy is the same
            return PerceptualWeightsError(
                f"downloading the {weights} InceptionResnetV1 weights failed ({type(exc).__name__}): {UPLOAD_HINT}"
            )
        if stage == "fit":
            return PerceptualWeightsError(f"{name} is not an InceptionResnetV1 state dict ({exc})")
        return PerceptualWeightsError(f"{exc}: {UPLOAD_HINT}")

    if str(weights) in FACENET_NAMES:
        net = inception_resnet_v1(str(weights), None, error)
    else:
        path = Path(weights)
        if not path.is_file():
            raise PerceptualWeightsError(f"no face-network weights file at {path}: {UPLOAD_HINT}")
        net = inception_resnet_v1(None, path, error)
    net = net.to(device).eval()
    return FaceFeatures(net, list(layers or FACENET_LAYERS), _facenet_prepare, kind="facenet")


def stage_ends(backbone: nn.Module) -> list[str]:
    """Names of the last residual block of each stage (where the width changes next) of a backbone."""
    blocks = [
        (name, m)
        for name, m in backbone.named_modules()
        if hasattr(m, "conv2") and hasattr(m, "downsample") and isinstance(m.conv2, nn.Conv2d)
    ]
    ends = [
        name
        for i, (name, m) in enumerate(blocks)
        if i + 1 == len(blocks) or blocks[i + 1][1].conv2.out_channels != m.conv2.out_channels
    ]
    if not ends:
        raise GANConfigError("no residual blocks found in the backbone: give its feature layers by name")
    return ends


def load_trained_backbone(
    folder: str | Path,
    layers: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
) -> FaceFeatures:
    """An embedding backbone trained by `train_embedding` (a folder with backbone.pt/arcface.pt)."""
    from ml.arcface.model import Normalization, TrainedModelError, load_trained, preprocess

    try:
        backbone, _weight, config = load_trained(folder, device=device)
    except TrainedModelError as exc:
        raise PerceptualWeightsError(f"cannot load the trained backbone in {folder}: {exc}") from exc
    size = tuple(int(v) for v in config["image_size"])
    channels = int(config["in_channels"])
    norm = Normalization.from_json(config["normalize"])
    warp = str(config.get("warp") or "none")

    def prepare(images: torch.Tensor) -> torch.Tensor:
        return preprocess((images + 1) / 2, size, channels, norm, warp)  # type: ignore[arg-type]

    return FaceFeatures(backbone, list(layers or stage_ends(backbone)), prepare, kind="backbone")


def load_face_network(
    path: str | Path | None,
    layers: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
) -> FaceFeatures:
    """A trained-backbone folder (backbone.pt inside) or facenet weights (a file, or a folder with one)."""
    if path is None or str(path) in FACENET_NAMES:
        return load_facenet(path, layers, device)
    p = Path(path)
    if p.is_dir():
        if (p / "backbone.pt").is_file():
            return load_trained_backbone(p, layers, device)
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".pt", ".pth"))
        if len(files) != 1:
            raise PerceptualWeightsError(
                f"{p} holds {len(files)} .pt/.pth files; expected backbone.pt (a trained backbone) or "
                f"one InceptionResnetV1 weights file: {UPLOAD_HINT}"
            )
        p = files[0]
    return load_facenet(p, layers, device)
