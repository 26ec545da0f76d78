"""ArcFace training on CUDA: a few fp32 steps against the CPU, resume across CPU and CUDA, bitwise CUDA resume.

Dropout is off (CUDA and the CPU draw different masks from the same seed) and TF32 is off, so the
two devices differ only by float32 rounding order.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from ml.arcface.train import TrainConfig, train_embedding
from ml.core.callbacks import LocalCallbacks
from ml.core.determinism import CUBLAS_WORKSPACE, deterministic
from ml.core.errors import Stopped
from ml.data import load_digits
from tests.support import need_gpu
from tests.support.gpu import full_fp32

# cuBLAS reads its workspace setting when CUDA starts: set it before any test of the session does.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)

pytestmark = pytest.mark.gpu

# iresnet18 (no adaptive pooling, so deterministic mode can run it), 512 digits: 8 steps of 64 an epoch.
CONFIG = TrainConfig(
    backbone="iresnet18", backbone_kwargs={"base_width": 8, "dropout": 0.0}, embedding_size=32, image_size=16,
    epochs=2, batch_size=64, augment_shift=1, split_by="sample", seed=3, max_train_samples=512, folds=2,
    max_pairs=300,
)  # fmt: skip


@pytest.fixture
def cuda() -> torch.device:
    return need_gpu()


def _train(device: Any, cb: LocalCallbacks | None = None) -> Any:
    return train_embedding(load_digits(16), CONFIG, cb if cb is not None else LocalCallbacks(), device=device)


def test_a_few_fp32_steps_on_cuda_follow_the_cpu(cuda: torch.device) -> None:
    cpu_cb, gpu_cb = LocalCallbacks(), LocalCallbacks()
    with full_fp32():
        cpu = _train("cpu", cpu_cb)
        gpu = _train(cuda, gpu_cb)
    assert [s for s, _, _ in gpu_cb.steps] == [s for s, _, _ in cpu_cb.steps] == list(range(1, 17))
    # Same initial weights (built on the CPU from the seed) and the same batches: the first step's
    # loss agrees to float32 rounding, the later ones drift a little.
    assert gpu_cb.steps[0][2]["loss"] == pytest.approx(cpu_cb.steps[0][2]["loss"], rel=1e-4)
    for (_, _, g), (_, _, c) in zip(gpu_cb.steps, cpu_cb.steps, strict=True):
        assert g["loss"] == pytest.approx(c["loss"], rel=1e-2)
    assert gpu.arcface_weight.device.type == "cpu" and next(gpu.backbone.parameters()).device.type == "cpu"
    assert gpu.metrics["auc"] == pytest.approx(cpu.metrics["auc"], abs=0.02)


@pytest.mark.parametrize(("first", "then"), [("cpu", "cuda"), ("cuda", "cpu")])
def test_resume_across_cpu_and_cuda_ends_near_the_uninterrupted_run(first: str, then: str, cuda: torch.device) -> None:
    devices = {"cpu": "cpu", "cuda": cuda}
    with full_fp32():
        reference = _train("cpu")
        killed = LocalCallbacks(stop_after_checkpoints=1)
        with pytest.raises(Stopped, match="after epoch 1"):
            _train(devices[first], killed)
        resumed_cb = killed.resume()
        resumed = _train(devices[then], resumed_cb)
    assert "resumed from the checkpoint of epoch 1" in resumed_cb.messages
    assert [s for s, _, _ in resumed_cb.steps] == list(range(9, 17))
    for got, want in zip(resumed.history, reference.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-2)
    assert resumed.metrics["auc"] == pytest.approx(reference.metrics["auc"], abs=0.02)


def test_cuda_resume_is_bitwise_in_deterministic_mode(cuda: torch.device) -> None:
    with deterministic():
        straight = _train(cuda)
        killed = LocalCallbacks(stop_after_checkpoints=1)
        with pytest.raises(Stopped):
            _train(cuda, killed)
        resumed = _train(cuda, killed.resume())
    assert resumed.history == straight.history
    torch.testing.assert_close(resumed.arcface_weight, straight.arcface_weight, rtol=0, atol=0)
    assert resumed.metrics == straight.metrics
