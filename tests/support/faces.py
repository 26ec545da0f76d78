"""Face models for tests: a tiny counting backbone, and the ORL model trained once per test process.

`orl_model_folder` trains on 20 ORL people once per process (the ML, API and platform tests share
it, and the background run of tests.support.pretrain trains it while the first tests run);
`register_model` stores such a folder as a succeeded train_embedding job of a key.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from jobs.states import JobStatus
from ml.arcface.model import Normalization, save_trained
from ml.arcface.train import TrainConfig, TrainedEmbedding, train_embedding
from ml.backbones import create_backbone
from ml.core.callbacks import LocalCallbacks
from ml.data import ImageDataset
from ml.faces.align import align_faces
from ml.faces.decode import list_files
from ml.faces.detect import DetectorSettings
from ml.faces.embed import EmbedResult, EmbedSettings, embed_dataset
from ml.faces.models import FaceModel
from tests.support import pretrain
from tests.support.factories import add_artifact, add_job, key_id
from tests.support.services import Stack
from tests.support.threads import one_torch_thread

# ORL faces are ~70 px wide in 92x112 frames: a 40 px minimum finds all of them with fewer pyramid levels.
ORL_DETECTOR = DetectorSettings(min_face_size=40, batch_size=50)


class CountingNet(nn.Module):
    """A tiny random backbone that counts the samples it embeds (to prove no face is embedded twice)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = create_backbone("se_resnet18", embedding_size=16, in_channels=1, input_size=32, base_width=4)
        self.net.eval()
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += x.shape[0]
        return self.net(x)


def tiny_model(seed: int = 0) -> FaceModel:
    return FaceModel(CountingNet(seed).eval(), "tiny", (32, 32), 1, Normalization.uniform(1), 112, "none", 16)


@functools.cache
def detect_orl(orl_dir: Path) -> tuple[list[tuple[str, Path]], EmbedResult]:
    """Pass 1 over the 300 ORL images with every face kept: the landmarks to train on (once per
    process, or by the background run of `tests.support.pretrain` with the ORL model).

    One torch thread: MTCNN's landmarks move in their last bits with the thread count, and the
    model trained on these crops would differ with them.
    """
    done = pretrain.take("orl_model")
    if done is not None:
        detected: tuple[list[tuple[str, Path]], EmbedResult] = done["detected"]
        return detected
    files = list_files(orl_dir)
    settings = EmbedSettings(detector=DetectorSettings(min_face_size=40, batch_size=50, faces="all"), flip_tta=False)
    with one_torch_thread():
        return files, embed_dataset(files, tiny_model(), settings)


def train_orl_model(orl_dir: Path, detected: EmbedResult, folder: Path) -> TrainedEmbedding:
    """se_resnet18 (width 8, 40x40 grey) trained with ArcFace on aligned faces of 20 ORL people, saved
    in `folder` as a train_embedding job stores it (backbone.pt, arcface.pt, config.json, metrics.json).

    One torch thread: the numbers below were measured so, and a shared 2-core machine trains this
    small network several times faster without OpenMP threads waiting on each other.
    """
    crops, labels, names = [], [], []
    for row in detected.index:
        rgb = np.array(Image.open(orl_dir / row["key"]).convert("RGB"))
        img = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
        lm = torch.tensor([[[row[f"lm{i}_x"], row[f"lm{i}_y"]] for i in range(5)]])
        crops.append(align_faces(img, lm, 112).mean(1, keepdim=True))
        person = row["key"].split("/")[0]
        names += [person] if person not in names else []
        labels.append(names.index(person))
    data = ImageDataset(torch.cat(crops), torch.tensor(labels), names, source="orl-aligned")
    config = TrainConfig(
        backbone="se_resnet18",
        backbone_kwargs={"base_width": 8},
        embedding_size=64,
        image_size=40,
        margin=11.5,
        scale=32.0,
        epochs=30,
        batch_size=32,
        lr=0.05,
        augment_shift=3,
        augment_flip=True,
        flip_tta=True,
        split_by="identity",
        test_fraction=1 / 3,
        seed=0,
    )
    with one_torch_thread():
        trained = train_embedding(data, config, LocalCallbacks())
    save_trained(folder, trained.backbone, trained.arcface_weight, trained.config, trained.class_names)
    (folder / "metrics.json").write_text(json.dumps(trained.metrics))
    return trained


def orl_model(orl_dir: Path, folder: Path) -> dict[str, Any]:
    """The ORL landmarks (`detect_orl`) and `train_orl_model` on them, saved in `folder`: the recipe
    `orl_model_folder` runs, in this process or in the background (tests.support.pretrain)."""
    detected = detect_orl(orl_dir)
    trained = train_orl_model(orl_dir, detected[1], folder)
    return {"detected": detected, "folder": folder, "class_names": tuple(trained.class_names)}


@functools.cache
def orl_model_folder(orl_dir: Path) -> tuple[Path, tuple[str, ...]]:
    """`train_orl_model` once per test process (the ML, API and platform tests share it): its folder
    and the people it was trained on (the other 10 are unseen)."""
    done = pretrain.take("orl_model")
    if done is None:
        folder = Path(tempfile.mkdtemp(prefix="orl-model-"))
        atexit.register(shutil.rmtree, folder, True)
        done = orl_model(orl_dir, folder)
    return done["folder"], done["class_names"]


MODEL_FILES = {
    "backbone.pt": "application/octet-stream",
    "arcface.pt": "application/octet-stream",
    "config.json": "application/json",
    "metrics.json": "application/json",
}


def register_model(stack: Stack, folder: Path, key: str | None = None) -> str:
    """The ORL model as a succeeded train_embedding job of the key (its artifacts, as the worker stores them)."""
    job_id = add_job(stack, key_id(stack, key), status=JobStatus.SUCCEEDED, kind="train_embedding")
    for name, ctype in MODEL_FILES.items():
        add_artifact(stack, job_id, name, (folder / name).read_bytes(), ctype)
    return job_id


def post_verify(client: Any, a: bytes | str, b: bytes | str, timeout: float | None = None, **fields: str) -> Any:
    """POST /verify with image_a/image_b as files (bytes) or text fields (dataset refs)."""
    files: dict[str, Any] = {}
    for name, image in (("image_a", a), ("image_b", b)):
        files[name] = (f"{name}.pgm", image, "image/x-portable-graymap") if isinstance(image, bytes) else (None, image)
    params = {"timeout": timeout} if timeout is not None else {}
    return client.post("/verify", files=files, data=fields, params=params)
