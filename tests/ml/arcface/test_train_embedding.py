"""ArcFace training: quality on MNIST and ORL, exact resume, early validation, saved models, params."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from jobs.params.embedding import BACKBONES, KINDS, EvaluateParams, TrainEmbeddingParams
from ml.arcface.model import Normalization, evaluate_model, preprocess
from ml.arcface.train import (
    TrainConfig,
    TrainConfigError,
    TrainedEmbedding,
    load_trained,
    save_trained,
    train_embedding,
)
from ml.backbones import list_backbones
from ml.core.callbacks import LocalCallbacks
from ml.core.errors import Stopped
from ml.data import ImageDataset, MixedChannelsError, SingleIdentityError, load_digits, load_image_folder
from ml.metrics.plots import evaluation_plots
from ml.metrics.verification import embed_images
from tests.support import pretrain
from tests.support.recipes import ORL_ARCFACE_SIZE, train_orl_arcface

# Small and fast: digits at 16x16, a narrow se_resnet18, 4 epochs (about 10 s on 2 cores).
DIGITS_CONFIG = TrainConfig(
    backbone="se_resnet18",
    backbone_kwargs={"base_width": 8},
    embedding_size=32,
    image_size=16,
    # s=32, not the face default 64, as for the MNIST fixture (10 classes): at s=64 the resume test's
    # held-out accuracy was 0.88 with 1 thread and 0.90 with 2 (its bar is 0.9); s=32 gives 0.968 and 0.975.
    scale=32.0,
    epochs=4,
    batch_size=64,
    augment_shift=1,
    split_by="sample",
    seed=3,
)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the session fixture trains here first: ~90 s alone, far more on a shared machine
def test_mnist_arcface_verifies_and_identifies_held_out_digits(
    mnist_arcface: TrainedEmbedding, mnist32: ImageDataset, artifacts_dir: Path
) -> None:
    m = mnist_arcface.metrics
    (artifacts_dir / "mnist_arcface_metrics.json").write_text(
        json.dumps(
            {**m, "seconds": mnist_arcface.config["fixture_seconds"], "history": mnist_arcface.history}, indent=2
        )
    )
    for name, png in evaluation_plots(
        mnist_arcface.report, mnist_arcface.test_embeddings, mnist_arcface.test_labels, None, mnist_arcface.history
    ).items():
        (artifacts_dir / f"mnist_arcface_{name}").write_bytes(png)
    # Held out by sample: round(25%) of every digit (1,999 of the 8,000 images), never trained on.
    held = sum(round(int(n) * 0.25) for n in torch.bincount(mnist32.labels))
    assert m["split_by"] == "sample" and m["num_images"] == held and m["train_images"] == len(mnist32) - held
    assert len(mnist32) == 8000 and abs(held - 2000) <= 5
    assert not set(mnist_arcface.train_indices.tolist()) & set(mnist_arcface.test_indices.tolist())
    assert m["num_same"] == 3000 and m["num_different"] == 3000 and m["folds"] == 10
    assert m["accuracy"] >= 0.99
    assert m["identification_accuracy"] >= 0.98
    assert m["auc"] >= 0.998
    assert m["tar_at_far_1e-2"] >= 0.97
    assert mnist_arcface.arcface_weight.shape == (128, 10)
    assert mnist_arcface.num_classes == 10 and mnist_arcface.in_channels == 1
    assert mnist_arcface.image_size == (32, 32)
    assert not mnist_arcface.backbone.training
    # The class weights are the class centres: each held-out image's nearest column is its digit
    # for (at least) 98% of the images.
    w = torch.nn.functional.normalize(mnist_arcface.arcface_weight, dim=0)
    pred = (mnist_arcface.test_embeddings @ w).argmax(1)
    assert float((pred == mnist_arcface.test_labels).float().mean()) >= 0.98
    # The fixture's held-out embeddings are what the saved pipeline recomputes from raw images.
    x = preprocess(mnist32.images[mnist_arcface.test_indices[:64]], (32, 32), 1, mnist_arcface.normalize)
    torch.testing.assert_close(embed_images(mnist_arcface.backbone, x), mnist_arcface.test_embeddings[:64])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_save_and_load_trained_rebuilds_the_model(mnist_arcface: TrainedEmbedding, tmp_path: Path) -> None:
    paths = save_trained(
        tmp_path, mnist_arcface.backbone, mnist_arcface.arcface_weight, mnist_arcface.config, mnist_arcface.class_names
    )
    assert sorted(p.name for p in paths.values()) == ["arcface.pt", "backbone.pt", "config.json"]
    backbone, weight, config = load_trained(tmp_path)
    assert torch.equal(weight, mnist_arcface.arcface_weight)
    assert config["backbone"] == "se_resnet18" and config["in_channels"] == 1 and config["image_size"] == [32, 32]
    assert config["margin"] == 28.6 and config["scale"] == 32.0 and config["num_classes"] == 10
    assert config["dataset"] == "builtin:mnist" and config["metrics"]["accuracy"] == mnist_arcface.metrics["accuracy"]
    assert Normalization.from_json(config["normalize"]) == mnist_arcface.normalize
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), mnist_arcface.backbone(x), rtol=0, atol=0)
    # config.json alone is not needed: backbone.pt carries the architecture.
    (tmp_path / "config.json").unlink()
    backbone2, _, config2 = load_trained(tmp_path)
    assert config2["backbone_kwargs"]["base_width"] == 16 and config2["class_names"] == [str(i) for i in range(10)]
    with torch.no_grad():
        torch.testing.assert_close(backbone2(x), backbone(x), rtol=0, atol=0)


@pytest.fixture(scope="module")
def orl_arcface(orl_dir: Path) -> TrainedEmbedding:
    """`tests.support.recipes.train_orl_arcface` (in the background while the first tests run when the
    session has this test: tests.support.pretrain)."""
    trained: TrainedEmbedding | None = pretrain.take("orl_arcface")
    return trained if trained is not None else train_orl_arcface(orl_dir)


@pytest.mark.slow
def test_orl_model_verifies_people_it_never_saw(
    orl_dir: Path, orl_arcface: TrainedEmbedding, artifacts_dir: Path
) -> None:
    orl = load_image_folder(orl_dir, image_size=ORL_ARCFACE_SIZE)
    result = orl_arcface
    m = result.metrics
    (artifacts_dir / "orl_arcface_metrics.json").write_text(json.dumps({**m, "seconds": result.seconds}, indent=2))
    held_out = {orl.class_names[int(c)] for c in orl.labels[result.test_indices].unique()}
    assert len(held_out) == 10 and not held_out & set(result.class_names)
    assert result.num_classes == 20 and m["num_images"] == 100
    assert m["num_same"] == 450 and m["num_different"] == 450
    assert m["auc"] >= 0.95


@pytest.mark.usefixtures("one_thread")
def test_resumed_run_ends_with_the_metrics_of_an_uninterrupted_one() -> None:
    digits = load_digits(16)
    full = train_embedding(digits, DIGITS_CONFIG, LocalCallbacks())
    killed = LocalCallbacks(stop_after_checkpoints=2)
    with pytest.raises(Stopped, match="after epoch 2") as info:
        train_embedding(digits, DIGITS_CONFIG, killed)
    assert info.value.step == 2 and killed.checkpoints_saved == 2
    resumed_cb = killed.resume()
    resumed = train_embedding(digits, DIGITS_CONFIG, resumed_cb)
    assert "resumed from the checkpoint of epoch 2" in resumed_cb.messages
    assert resumed_cb.steps[0][0] == len(killed.steps) + 1  # continues at epoch 3's first step
    for key in ("accuracy", "auc", "identification_accuracy", "tar_at_far_1e-2", "threshold"):
        assert round(resumed.metrics[key], 3) == round(full.metrics[key], 3), key
    assert [round(h["loss"], 3) for h in resumed.history] == [round(h["loss"], 3) for h in full.history]
    torch.testing.assert_close(resumed.arcface_weight, full.arcface_weight, rtol=0, atol=1e-5)
    assert full.metrics["accuracy"] > 0.9  # and it learned something


def test_checkpoint_of_another_config_is_refused() -> None:
    digits = load_digits(16)
    cb = LocalCallbacks(stop_after_checkpoints=1)
    cfg = TrainConfig(**{**DIGITS_CONFIG.to_json(), "epochs": 2, "image_size": 16})
    with pytest.raises(Stopped):
        train_embedding(digits, cfg, cb)
    other = TrainConfig(**{**cfg.to_json(), "lr": 0.05})
    with pytest.raises(TrainConfigError, match="different config"):
        train_embedding(digits, other, cb.resume())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backbone": "resnet9000"}, r"unknown backbone 'resnet9000'; registered backbones: iresnet18"),
        ({"embedding_size": 0}, r"embedding_size must be >= 1, got 0"),
        ({"warp": "fisheye"}, r"warp must be one of none, roi_tanh"),
        ({"image_size": 8}, r"input_size 8x8 is too small"),
        ({"backbone_kwargs": {"use_se": True}, "backbone": "iresnet18"}, r"does not take use_se"),
        ({"epochs": 0, "batch_size": 1}, r"epochs must be >= 1, got 0; batch_size must be >= 2"),
    ],
)
def test_bad_params_fail_before_training(change: dict, message: str) -> None:
    cb = LocalCallbacks()
    config = TrainConfig(**{**DIGITS_CONFIG.to_json(), **change})
    with pytest.raises(TrainConfigError, match=message):
        train_embedding(load_digits(16), config, cb)
    assert cb.steps == [] and cb.checkpoints_saved == 0


def test_bad_data_fails_before_training(tmp_path: Path) -> None:
    digits = load_digits(16)
    one = digits.subset(torch.nonzero(digits.labels == 4).flatten())
    cb = LocalCallbacks()
    with pytest.raises(SingleIdentityError, match="single identity \\('4'\\)"):
        train_embedding(one, DIGITS_CONFIG, cb)
    # Split by identity with 3 digits leaves too few to hold out.
    three = digits.subset(torch.nonzero(digits.labels < 3).flatten())
    with pytest.raises(SingleIdentityError, match="at least 4 identities"):
        train_embedding(three, TrainConfig(**{**DIGITS_CONFIG.to_json(), "split_by": "identity"}), cb)
    assert cb.steps == [] and cb.checkpoints_saved == 0
    from PIL import Image

    for i, mode in enumerate(("L", "RGB")):
        (tmp_path / f"p{i}").mkdir()
        Image.new(mode, (16, 16)).save(tmp_path / f"p{i}" / "a.png")
    with pytest.raises(MixedChannelsError, match="different channel counts"):
        load_image_folder(tmp_path)  # the loader refuses before anything can be trained


def test_evaluate_model_on_a_saved_digits_model(tmp_path: Path) -> None:
    digits = load_digits(16)
    cfg = TrainConfig(**{**DIGITS_CONFIG.to_json(), "epochs": 2, "split_by": "identity", "test_fraction": 0.4})
    result = train_embedding(digits, cfg, LocalCallbacks())
    save_trained(tmp_path, result.backbone, result.arcface_weight, result.config, result.class_names)
    backbone, _, config = load_trained(tmp_path)
    held = digits.subset(result.test_indices)
    report, emb = evaluate_model(backbone, held.images, held.labels, config, seed=cfg.seed)
    for key in ("auc", "accuracy", "identification_accuracy"):
        assert report.metrics[key] == pytest.approx(result.metrics[key], abs=1e-6)
    assert emb.shape == (len(held), 32)
    assert config["split"]["by"] == "identity" and result.metrics["num_identities"] == 4


def test_params_models_match_the_registry() -> None:
    assert set(BACKBONES) == set(list_backbones())
    p = TrainEmbeddingParams()
    assert (p.backbone, p.embedding_size, p.margin, p.scale, p.warp) == ("se_resnet18", 512, 28.6, 64.0, "none")
    assert {k.name for k in KINDS} == {"train_embedding", "evaluate"}
    import importlib

    for spec in KINDS:
        module, func = spec.runner.split(":")
        assert callable(getattr(importlib.import_module(module), func))
    for bad in ({"backbone": "resnet9000"}, {"embedding_size": 0}, {"dataset": "s3://x"}, {"warp": "x"}):
        with pytest.raises(ValidationError):
            TrainEmbeddingParams(**bad)
    e = EvaluateParams(model="job:abc123", dataset="dataset:xyz")
    assert e.folds == 10 and not e.flip_tta and e.use_split == "held_out"
    with pytest.raises(ValidationError):
        EvaluateParams(model="abc", dataset="builtin:digits")


def test_warp_is_applied_before_normalisation() -> None:
    from ml.faces.warp import warp

    x = load_digits(16).images[:4]
    norm = Normalization.uniform(1)
    out = preprocess(x, (16, 16), 1, norm, "roi_tanh")
    torch.testing.assert_close(out, norm.apply(warp(x, "roi_tanh")))
    assert not torch.allclose(out, norm.apply(x))
    # Grey digits fed to a 3-channel model are replicated, and resized on the way.
    rgb = preprocess(x, (20, 20), 3, Normalization.uniform(3))
    assert rgb.shape == (4, 3, 20, 20) and torch.equal(rgb[:, 0], rgb[:, 2])


# Measured to diverge (as the fault test's job does): the loss is first NaN at epoch 1's 6th step.
DIVERGING_CONFIG = TrainConfig(
    backbone="iresnet18", backbone_kwargs={"base_width": 4}, embedding_size=8, image_size=16, optimizer="sgd",
    lr=10.0, momentum=0.99, weight_decay=1.0, loss_lr_multiplier=100.0, scale=1024.0, margin=89.0,
    schedule="constant", epochs=3, batch_size=8, max_train_samples=128, folds=2, max_pairs=10, split_by="identity",
)  # fmt: skip


def test_a_nan_loss_read_later_still_fails_at_its_own_step_with_nothing_saved() -> None:
    cb = LocalCallbacks()
    # 16 steps an epoch, read once at its end: the NaN of step 6 is found there, not when it happened.
    with pytest.raises(FloatingPointError, match=r"^the ArcFace loss became nan at epoch 1; lower lr$"):
        train_embedding(load_digits(16), DIVERGING_CONFIG, cb, progress_every=16)
    # Every step before it is reported (with finite values), the NaN step and later ones are not.
    assert [s for s, _, _ in cb.steps] == [1, 2, 3, 4, 5]
    assert cb.steps[-1][2]["loss"] == pytest.approx(1535.7567, abs=1e-3) and cb.checkpoints_saved == 0
    with pytest.raises(TrainConfigError, match="progress_every must be >= 1, got 0"):
        train_embedding(load_digits(16), DIVERGING_CONFIG, LocalCallbacks(), progress_every=0)


def test_reading_the_losses_rarely_changes_nothing_but_when_they_are_read() -> None:
    config = TrainConfig(**{**DIGITS_CONFIG.to_json(), "epochs": 2, "augment_flip": True, "max_train_samples": 512})
    every, rarely = LocalCallbacks(), LocalCallbacks()
    a = train_embedding(load_digits(16), config, every, progress_every=1)
    b = train_embedding(load_digits(16), config, rarely, progress_every=5)
    assert len(every.steps) == 16 and every.steps == rarely.steps  # 8 steps of 64 an epoch, each reported
    assert a.history == b.history
    torch.testing.assert_close(a.arcface_weight, b.arcface_weight, rtol=0, atol=0)
