"""Inversion on CUDA: channels-last, resume across CPU and CUDA (and layouts), bitwise resume in deterministic mode.

The worker runs the inversion channels-last on CUDA and contiguous on the CPU
(`workers/runners/invert.py`), so a requeued job may resume in the other layout on the other device.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ml.core.callbacks import LocalCallbacks
from ml.core.determinism import CUBLAS_WORKSPACE, deterministic
from ml.core.errors import Stopped
from ml.invert.inversion import InversionConfig, invert
from tests.support import need_gpu
from tests.support.gpu import full_fp32, rgb_model

# cuBLAS reads its workspace setting when CUDA starts: set it before any test of the session does.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)

pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda() -> torch.device:
    return need_gpu()


def _run(model: tuple[nn.Module, torch.Tensor], cb: LocalCallbacks, device: Any, channels_last: bool) -> Any:
    config = InversionConfig(
        classes=[0, 3], images_per_class=2, iterations=12, checkpoint_every=4, preview_every=0, lambda_bn=0.01,
        bn_form="l2", channels_last=channels_last,
    )  # fmt: skip
    return invert(model[0], model[1], config, device=device, callbacks=cb)


def test_channels_last_inversion_on_cuda_gives_the_cpu_images(cuda: torch.device) -> None:
    model = rgb_model()
    with full_fp32():
        cpu = _run(model, LocalCallbacks(), "cpu", channels_last=False)
        gpu = _run(model, LocalCallbacks(), cuda, channels_last=True)
    assert gpu.images.device.type == "cpu" and gpu.step == 12
    assert torch.allclose(gpu.images, cpu.images, rtol=0, atol=1e-3)
    assert gpu.metrics["target_prob"] == pytest.approx(cpu.metrics["target_prob"], abs=1e-3)


@pytest.mark.parametrize(("first", "then"), [("cpu", "cuda"), ("cuda", "cpu")])
def test_resume_on_the_other_worker_kind_ends_near_the_uninterrupted_images(
    first: str, then: str, cuda: torch.device, tmp_path: Path
) -> None:
    model = rgb_model()
    workers = {"cpu": ("cpu", False), "cuda": (cuda, True)}  # where and how each worker kind runs it (the runner)
    with full_fp32():
        reference = _run(model, LocalCallbacks(), "cpu", channels_last=False)
        killed = LocalCallbacks(tmp_path / "ckpt", stop_after_checkpoints=2)
        with pytest.raises(Stopped) as stop:
            _run(model, killed, *workers[first])
        assert stop.value.step == 8
        state = torch.load(tmp_path / "ckpt" / "checkpoint.pt", map_location="cpu", weights_only=True)
        assert state["images"].is_contiguous() and state["optimizer"]["state"][0]["exp_avg"].is_contiguous()
        resumed = _run(model, killed.resume(), *workers[then])
    assert resumed.step == 12
    # Across devices: equal within tolerance, not bitwise (README, "Exactness"); the layout mismatch
    # this guards against was 0.5 away.
    assert torch.allclose(resumed.images, reference.images, rtol=0, atol=1e-3)


def test_cuda_resume_is_bitwise_in_deterministic_mode(cuda: torch.device) -> None:
    model = rgb_model("iresnet18")  # no adaptive pooling: every kernel of its backward is deterministic
    with deterministic():
        straight = _run(model, LocalCallbacks(), cuda, channels_last=True)
        killed = LocalCallbacks(stop_after_checkpoints=2)
        _run(model, killed, cuda, channels_last=True)
        resumed = _run(model, killed.resume(), cuda, channels_last=True)
    assert torch.equal(resumed.images, straight.images)
