"""Model inversion on the session's MNIST ArcFace model: recognisable digits, exact resume, the job runner.

The quality bar (ML.md section 3): images inverted from the se_resnet18 ArcFace model are assigned
to their target digit by that model (>= 99%) and by an independently trained LeNet-5 (a different
architecture that never sees the inverted model, >= 80%).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError
from torch import nn

from jobs.params.invert import InvertParams
from ml.arcface.train import save_trained
from ml.core.callbacks import LocalCallbacks
from ml.core.errors import Stopped
from ml.core.images import grid_png
from ml.data import ImageDataset
from ml.invert.inversion import InversionConfig, InversionError, InversionResult, invert
from tests.support import pretrain
from tests.support.recipes import (
    QUALITY_ITERATIONS,
    QUALITY_PER_CLASS,
    QUALITY_SEEDS,
    invert_trained,
    quality_inversions,
)
from tests.support.threads import one_torch_thread
from workers.runners import Preempted
from workers.runners.invert import run_invert


def lenet() -> nn.Module:
    """LeNet-5 for 32x32 grey images in [-1, 1]: conv-pool-conv-pool and three dense layers."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference_classifier(mnist32: ImageDataset, mnist_arcface: Any) -> tuple[nn.Module, float]:
    """LeNet-5 trained on the ArcFace model's training split only; (model, held-out accuracy)."""
    torch.manual_seed(0)
    model = lenet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    train, test = mnist_arcface.train_indices, mnist_arcface.test_indices
    x, y = (mnist32.images[train] - 0.5) / 0.5, mnist32.labels[train]
    gen = torch.Generator().manual_seed(0)
    with one_torch_thread():  # the same judge whatever the thread count
        for _ in range(5):
            for idx in torch.randperm(len(x), generator=gen).split(64):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval()
    with torch.no_grad():
        pred = model((mnist32.images[test] - 0.5) / 0.5).argmax(1)
    return model, float((pred == mnist32.labels[test]).float().mean())


@pytest.fixture(scope="module")
def mnist_inversions(mnist_arcface: Any) -> list[tuple[InversionResult, LocalCallbacks]]:
    """`tests.support.recipes.quality_inversions` of the session's model (computed in the background,
    after that model, when the session has this test: tests.support.pretrain)."""
    runs: list[tuple[InversionResult, LocalCallbacks]] | None = pretrain.take("mnist_inversions")
    return runs if runs is not None else quality_inversions(mnist_arcface)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_inverted_digits_are_recognised_by_the_model_and_by_an_independent_lenet(
    mnist_arcface: Any,
    mnist_inversions: list[tuple[InversionResult, LocalCallbacks]],
    reference_classifier: tuple[nn.Module, float],
    artifacts_dir: Path,
) -> None:
    clf, clf_accuracy = reference_classifier
    assert clf_accuracy >= 0.95  # a competent judge: LeNet on held-out real digits

    model_hits, lenet_hits = [], []
    for seed, (result, cb) in zip(QUALITY_SEEDS, mnist_inversions, strict=True):
        grid = grid_png(result.images, QUALITY_PER_CLASS, upscale=2)
        (artifacts_dir / f"invert_mnist_grid_seed{seed}.png").write_bytes(grid)

        assert result.images.shape == (10 * QUALITY_PER_CLASS, 1, 32, 32)
        assert float(result.images.min()) >= 0.0 and float(result.images.max()) <= 1.0
        assert result.labels.tolist() == [c for c in range(10) for _ in range(QUALITY_PER_CLASS)]
        with torch.no_grad():
            x = mnist_arcface.normalize.apply(result.images)
            w = F.normalize(mnist_arcface.arcface_weight, dim=0)
            model_pred = (F.normalize(mnist_arcface.backbone(x), dim=1) @ w).argmax(1)
            lenet_pred = clf((result.images - 0.5) / 0.5).argmax(1)
        model_hits += (model_pred == result.labels).tolist()
        lenet_hits += (lenet_pred == result.labels).tolist()
        assert result.metrics["accuracy"] == pytest.approx((model_pred == result.labels).float().mean().item())
        assert min(per["target_prob"] for per in result.metrics["per_class"].values()) >= 0.9
        # the loss went down and the target probability up over the run
        first, last = cb.steps[0][2], cb.steps[-1][2]
        assert last["loss"] < first["loss"] and last["target_prob"] > first["target_prob"]

    model_rate, lenet_rate = sum(model_hits) / len(model_hits), sum(lenet_hits) / len(lenet_hits)
    figures = {
        "iterations": QUALITY_ITERATIONS, "images": len(model_hits), "seeds": list(QUALITY_SEEDS),
        "model_accuracy": model_rate, "lenet_accuracy": lenet_rate, "lenet_heldout_accuracy": clf_accuracy,
    }  # fmt: skip
    (artifacts_dir / "invert_mnist_quality.json").write_text(json.dumps(figures, indent=2))
    # (a) the inverted model: every image is its target digit (>= 99% of 60 means all 60)
    assert model_rate >= 0.99
    # (b) an independent LeNet that never saw the inverted model
    assert lenet_rate >= 0.8, f"LeNet recognised {lenet_rate:.2%} of the inverted digits"


def test_a_killed_and_resumed_inversion_ends_with_the_uninterrupted_images(mnist_arcface: Any, tmp_path: Path) -> None:
    settings = {"classes": [0, 3, 7], "images_per_class": 2, "iterations": 12, "checkpoint_every": 4, "flip": True}
    reference = invert_trained(mnist_arcface, LocalCallbacks(), **settings)

    killed = LocalCallbacks(tmp_path / "ckpt", stop_after_checkpoints=2)
    with pytest.raises(Stopped) as first:
        invert_trained(mnist_arcface, killed, **settings)
    assert (first.value.step, killed.checkpoints_saved) == (8, 2)
    # The images the stopped run had reached: its checkpoint's, in [0, 1].
    early_state = torch.load(tmp_path / "ckpt" / "checkpoint.pt", map_location="cpu", weights_only=True)
    early = mnist_arcface.normalize.undo(early_state["images"]).clamp(0, 1)
    resumed_cb = killed.resume()
    resumed = invert_trained(mnist_arcface, resumed_cb, **settings)

    assert resumed.step == 12
    assert resumed_cb.messages == ["invert: resumed from the checkpoint at step 8"]
    assert [s for s, _, _ in resumed_cb.steps] == [12]  # progress_every 20: only the last step reports
    assert torch.allclose(resumed.images, reference.images, rtol=0, atol=1e-5)
    assert not torch.allclose(early, reference.images, atol=1e-3)  # the kill really came early


def test_progress_previews_and_metrics(mnist_arcface: Any) -> None:
    cb = LocalCallbacks()
    result = invert_trained(
        mnist_arcface, cb, classes=[4, 9], images_per_class=2, iterations=6, progress_every=2, preview_every=3
    )
    assert [s for s, _, _ in cb.steps] == [2, 4, 6]
    assert all(total == 6 for _, total, _ in cb.steps)
    names = {"loss", "loss_bn", "loss_arcface", "loss_tv", "loss_l2", "target_prob"}
    assert all(set(m) == names for _, _, m in cb.steps)
    step6 = cb.steps[-1][2]
    # total = ArcFace + lambda_bn * BN + l2_weight * L2 (a roll or a flip keeps the squared norm, so the
    # L2 term of the jittered batch equals the one reported for the images themselves; TV weight is 0)
    expected = step6["loss_arcface"] + 0.01 * step6["loss_bn"] + 0.01 * step6["loss_l2"]
    assert step6["loss"] == pytest.approx(expected, rel=1e-5)
    assert cb.preview_count == 3  # steps 3 and 6, and the final grid
    grid = Image.open(io.BytesIO(cb.previews["grid"]))
    assert grid.size == (2 + 2 * 34, 2 + 2 * 34)  # 2 per row, 2 rows of 32x32 with 2-pixel padding
    assert set(result.metrics["per_class"]) == {"4", "9"}
    for per in result.metrics["per_class"].values():
        assert set(per) == {"target_prob", "accuracy", "bn_loss", "iterations", "seconds"}
        assert per["iterations"] == 6
    assert result.metrics["checkpoints"] == 0


def test_bad_inputs_raise_named_errors(mnist_arcface: Any) -> None:
    with pytest.raises(InversionError, match=r"classes \[10\] are outside the model's 10 classes"):
        invert_trained(mnist_arcface, classes=[1, 10])
    with pytest.raises(InversionError, match="images_per_class must be >= 1"):
        invert_trained(mnist_arcface, images_per_class=0)
    with pytest.raises(InversionError, match="bn_form"):
        invert_trained(mnist_arcface, bn_form="l1")
    other = LocalCallbacks()
    invert_trained(mnist_arcface, other, classes=[1], images_per_class=1, iterations=2, checkpoint_every=1)
    with pytest.raises(InversionError, match="different inversion"):
        invert_trained(mnist_arcface, other.resume(), classes=[1, 2], images_per_class=1, iterations=2)
    with pytest.raises(InversionError, match="image_size and in_channels"):
        invert(nn.Sequential(nn.BatchNorm2d(1)), torch.randn(4, 2), InversionConfig())


def test_params_reject_bad_requests() -> None:
    p = InvertParams(model="job:abc123")
    assert (p.iterations, p.lambda_bn, p.bn_form, p.flip, p.classes) == (20000, 0.05, "squared", True, None)
    assert InversionConfig(**p.model_dump(exclude={"model"})) == InversionConfig()  # same defaults
    bad_requests: list[dict[str, Any]] = [
        {"model": "file:/etc/passwd"},
        {"model": "job:a", "classes": [1, 1]},
        {"model": "job:a", "classes": []},
        {"model": "job:a", "bn_form": "l1"},
        {"model": "job:a", "iterations": 0},
        {"model": "job:a", "x": 1},
        {"model": "job:a", "adam_betas": [0.9, 1.0]},
    ]
    for bad in bad_requests:
        with pytest.raises(ValidationError):
            InvertParams(**bad)


class FolderContext(LocalCallbacks):
    """The JobContext's shape over a local folder: what the worker hands a runner, minus the services."""

    def __init__(self, params: InvertParams, model_dir: Path, root: Path, stop_after_checkpoints: int | None = None):
        super().__init__(root / "checkpoints", stop_after_checkpoints)
        self.job_id, self.params, self.device, self.workdir = "job-test", params, torch.device("cpu"), root
        self.model_dir = model_dir
        self.artifacts: dict[str, tuple[bytes, str]] = {}

    def open_model(self, ref: str) -> Path:
        assert ref == self.params.model
        return self.model_dir

    def put_artifact(self, name: str, data: bytes | Path, content_type: str = "application/octet-stream") -> None:
        self.artifacts[name] = (data if isinstance(data, bytes) else Path(data).read_bytes(), content_type)


def test_runner_writes_images_grid_tensors_and_metrics_and_resumes_after_preemption(
    mnist_arcface: Any, tmp_path: Path
) -> None:
    save_trained(
        tmp_path / "model", mnist_arcface.backbone, mnist_arcface.arcface_weight, mnist_arcface.config,
        mnist_arcface.class_names,
    )  # fmt: skip
    params = InvertParams(
        model="job:trained", classes=[2, 5], images_per_class=2, iterations=6, flip=False, checkpoint_every=2
    )
    ctx = FolderContext(params, tmp_path / "model", tmp_path / "run", stop_after_checkpoints=1)
    with pytest.raises(Preempted, match="stopped at step 2"):
        run_invert(ctx)
    assert ctx.artifacts == {}

    resumed = FolderContext(params, tmp_path / "model", tmp_path / "run")
    result = run_invert(resumed)
    assert result["iterations"] == 6 and result["classes"] == [2, 5] and result["images"] == 4
    assert sorted(resumed.artifacts) == [
        "grid.png", "images/2_0.png", "images/2_1.png", "images/5_0.png", "images/5_1.png", "metrics.json",
        "tensors.pt",
    ]  # fmt: skip
    png, ctype = resumed.artifacts["images/5_1.png"]
    assert ctype == "image/png" and Image.open(io.BytesIO(png)).size == (32, 32)
    tensors = torch.load(io.BytesIO(resumed.artifacts["tensors.pt"][0]), weights_only=True)
    assert tensors["images"].shape == (4, 1, 32, 32) and tensors["labels"].tolist() == [2, 2, 5, 5]
    pixel = round(float(tensors["images"][3, 0, 7, 9]) * 255)
    assert Image.open(io.BytesIO(png)).getpixel((9, 7)) == pixel
    metrics = json.loads(resumed.artifacts["metrics.json"][0])
    assert set(metrics["per_class"]) == {"2", "5"} and metrics["per_class"]["5"]["name"] == "5"
    assert metrics["iterations"] == 6 and metrics["per_class"]["2"]["iterations"] == 6
    assert metrics["target_prob"] == pytest.approx(result["target_prob"])


def _rgb_model() -> tuple[nn.Module, torch.Tensor]:
    """An untrained 3-channel se_resnet18 and class weights: with one channel both layouts are the same memory."""
    from ml.backbones import create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("se_resnet18", in_channels=3, input_size=16, base_width=4, embedding_size=16)
    return backbone.eval(), torch.randn(16, 5)


def _layout_run(model: tuple[nn.Module, torch.Tensor], cb: LocalCallbacks, channels_last: bool) -> Any:
    config = InversionConfig(
        classes=[0, 3], images_per_class=2, iterations=12, checkpoint_every=4, preview_every=0, lambda_bn=0.01,
        bn_form="l2", channels_last=channels_last,
    )  # fmt: skip
    return invert(model[0], model[1], config, callbacks=cb)


@pytest.mark.parametrize(("first", "then"), [(False, True), (True, False)])
def test_resume_in_the_other_memory_layout_ends_with_the_uninterrupted_images(
    first: bool, then: bool, tmp_path: Path
) -> None:
    # Before checkpoints were normalised, Adam's saved moments kept the first attempt's layout and the
    # fused kernel paired them with the wrong pixels: 0.52 / 0.47 (in [0, 1]) from the reference here.
    model = _rgb_model()
    reference = _layout_run(model, LocalCallbacks(), channels_last=first)
    killed = LocalCallbacks(tmp_path / "ckpt", stop_after_checkpoints=2)
    with pytest.raises(Stopped) as stop:
        _layout_run(model, killed, channels_last=first)
    assert stop.value.step == 8

    # The checkpoint is canonical (CPU, contiguous) and reads back with weights_only=True.
    state = torch.load(tmp_path / "ckpt" / "checkpoint.pt", map_location="cpu", weights_only=True)
    moments = state["optimizer"]["state"][0]
    for t in (state["images"], moments["exp_avg"], moments["exp_avg_sq"]):
        assert (t.device.type, t.is_contiguous(), tuple(t.shape)) == ("cpu", True, (4, 3, 16, 16))

    resumed = _layout_run(model, killed.resume(), channels_last=then)
    assert resumed.step == 12
    # The two layouts' convolutions round differently (the uninterrupted runs differ by about 1e-5),
    # so the bar is 1e-4: four orders of magnitude under the mismatched-layout error.
    assert torch.allclose(resumed.images, reference.images, rtol=0, atol=1e-4)
