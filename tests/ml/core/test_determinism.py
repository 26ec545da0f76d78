"""Deterministic mode: the torch flags and the cuBLAS setting, and CPU results it leaves unchanged."""

from __future__ import annotations

import os

import pytest
import torch

from ml.arcface.train import TrainConfig, train_embedding
from ml.core.callbacks import LocalCallbacks
from ml.core.determinism import DeterminismError, deterministic, is_deterministic, set_deterministic
from ml.data import load_digits


def test_deterministic_mode_sets_the_flags_and_the_cublas_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not is_deterministic()
    with deterministic():
        assert is_deterministic() and torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()  # refuse, never just warn
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not is_deterministic() and not torch.backends.cudnn.deterministic
    set_deterministic(False)  # off is always allowed
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_workspace_setting_already_present_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with deterministic():
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_too_late_after_cuda_started_without_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # what a worker that used CUDA sees
    with pytest.raises(DeterminismError, match=r"before CUDA initialises.*CUBLAS_WORKSPACE_CONFIG=:4096:8"):
        set_deterministic(True)
    assert not is_deterministic() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_cpu_training_is_unchanged_by_deterministic_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    digits = load_digits(16)
    config = TrainConfig(
        backbone="se_resnet18", backbone_kwargs={"base_width": 4}, embedding_size=16, image_size=16, epochs=1,
        batch_size=64, augment_shift=1, split_by="sample", seed=1, folds=2, max_pairs=100, max_train_samples=256,
    )  # fmt: skip
    plain = train_embedding(digits, config, LocalCallbacks())
    with deterministic():
        strict = train_embedding(digits, config, LocalCallbacks())
    assert strict.history == plain.history
    torch.testing.assert_close(strict.arcface_weight, plain.arcface_weight, rtol=0, atol=0)
