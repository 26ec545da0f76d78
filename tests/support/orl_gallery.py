"""Tiny embedding models trained on the ORL gallery (people s1-s20, images 1-5), shared by the index
and export tests.

The ORL frames (92x112, one centred face each) are used as they are, resized to 40x40 grey: no
detection, so a model trains in seconds. The gallery is the training data; the probes are what the
model never saw: images 6-10 of the same 20 people (mated) and every image of s21-s30 (non-mated).
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.arcface.model import evaluate_model, load_trained, save_trained
from ml.arcface.train import TrainConfig, train_embedding
from ml.core.callbacks import LocalCallbacks
from ml.data import ImageDataset
from ml.data.folders import load_image_folder
from tests.support import pretrain
from tests.support.threads import one_torch_thread

GALLERY_PEOPLE = 20
GALLERY_IMAGES = 5  # images 1-5 of each gallery person; 6-10 are the mated probes


@dataclass(frozen=True)
class OrlSplit:
    """ORL at 40x40 grey, with the key ("s3/7.pgm") and person of every image, and the three parts."""

    images: torch.Tensor
    keys: tuple[str, ...]
    people: tuple[str, ...]
    gallery: np.ndarray
    mated: np.ndarray
    non_mated: np.ndarray


@functools.cache
def orl_split(orl_dir: Path) -> OrlSplit:
    data = load_image_folder(orl_dir, image_size=40, channels="grey")
    labels = data.labels.numpy()
    people = tuple(data.class_names[i] for i in labels)
    number = np.zeros(len(labels), int)
    for c in np.unique(labels):  # load_image_folder keeps natural order: 1.pgm .. 10.pgm
        number[labels == c] = np.arange(1, int((labels == c).sum()) + 1)
    keys = tuple(f"{p}/{n}.pgm" for p, n in zip(people, number, strict=True))
    in_gallery_people = np.array([int(p[1:]) <= GALLERY_PEOPLE for p in people])
    return OrlSplit(
        data.images,
        keys,
        people,
        np.flatnonzero(in_gallery_people & (number <= GALLERY_IMAGES)),
        np.flatnonzero(in_gallery_people & (number > GALLERY_IMAGES)),
        np.flatnonzero(~in_gallery_people),
    )


def train_config(backbone: str) -> TrainConfig:
    return TrainConfig(
        backbone=backbone,
        backbone_kwargs={"base_width": 8},
        embedding_size=64,
        image_size=40,
        margin=11.5,
        scale=32.0,
        epochs=25,
        batch_size=20,
        lr=0.05,
        augment_shift=3,
        augment_flip=True,
        split_by="sample",
        test_fraction=0.4,
        seed=0,
    )


def train_gallery_model(orl_dir: Path, backbone: str, folder: Path) -> None:
    """Train a `backbone` on the ORL gallery images (one torch thread) and save it in `folder` as
    train_embedding saves it."""
    split = orl_split(orl_dir)
    idx = split.gallery
    names = sorted({split.people[i] for i in idx}, key=lambda p: int(p[1:]))
    labels = torch.tensor([names.index(split.people[i]) for i in idx])
    data = ImageDataset(split.images[idx], labels, names, source="orl-gallery")
    with one_torch_thread():
        trained = train_embedding(data, train_config(backbone), LocalCallbacks())
    save_trained(folder, trained.backbone, trained.arcface_weight, trained.config, trained.class_names)
    (folder / "metrics.json").write_text(json.dumps(trained.metrics))


@functools.cache
def orl_gallery_model(orl_dir: Path, backbone: str) -> Path:
    """The folder of `train_gallery_model`'s `backbone`, trained once per test process (in the background
    when the session's tests are marked `pretrained("orl_gallery_<backbone>")`: tests.support.pretrain)."""
    folder: Path | None = pretrain.take(f"orl_gallery_{backbone}")
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix=f"orl-{backbone}-"))
        atexit.register(shutil.rmtree, folder, True)
        train_gallery_model(orl_dir, backbone, folder)
    return folder


def orl_embeddings(orl_dir: Path, folder: Path) -> np.ndarray:
    """Unit embeddings (300, 64) of every ORL image by the model in `folder` (flip TTA off)."""
    split = orl_split(orl_dir)
    backbone, _, config = load_trained(folder)
    labels = torch.tensor([int(p[1:]) for p in split.people])
    with one_torch_thread():
        _, emb = evaluate_model(backbone, split.images, labels, config)
    return emb.numpy().astype(np.float32)


def orl_members(orl_dir: Path, part: str) -> dict[str, bytes]:
    """The archive members of one part of the split ("gallery", "mated", "non_mated", or "probes":
    mated and non-mated), keyed as ORL lays them out ("s3/7.pgm")."""
    split = orl_split(orl_dir)
    rows = {
        "gallery": split.gallery,
        "mated": split.mated,
        "non_mated": split.non_mated,
        "probes": np.concatenate([split.mated, split.non_mated]),
    }[part]
    return {split.keys[i]: (orl_dir / split.keys[i]).read_bytes() for i in rows}


def embed_orl_part(stack: Any, orl_dir: Path, part: str, model: str) -> tuple[str, str]:
    """(dataset ref, embed job id) of one ORL part uploaded and sent to an embed job (detector none:
    the frames are faces already); the job is queued, a worker runs it."""
    from tests.support.factories import make_zip, upload
    from tests.support.jobs import submit

    resp = upload(stack.client, "/datasets", f"orl-{part}.zip", make_zip(orl_members(orl_dir, part)))
    assert resp.status_code == 201, resp.text
    dataset = f"dataset:{resp.json()['id']}"
    job = submit(stack, {"dataset": dataset, "model": model, "detector": "none", "flip_tta": False}, kind="embed")
    return dataset, job
