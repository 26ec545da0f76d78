"""Fixtures shared by the whole suite.

Service fixtures (PostgreSQL, Redis, S3) live in `tests/platform/conftest.py`; the ones here need
no services: the real data folder beside the checkout, a CPU-friendly torch setup, and `need_gpu`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs.settings import get_settings


def _data_dir() -> Path:
    return get_settings().data_dir


def need_data(*parts: str) -> Path:
    """Path of a folder of the shared data, or skip (fail under FACEJOBS_REQUIRE_DATA=1) without it."""
    path = _data_dir().joinpath(*parts)
    if not path.exists():
        reason = (
            f"real test data not found at {path}: put the shared data folder beside the checkout "
            "or point FACEJOBS_DATA_DIR at it"
        )
        if get_settings().require_data:
            pytest.fail(reason + " (FACEJOBS_REQUIRE_DATA=1 forbids skipping)")
        pytest.skip(reason)
    return path


def need_gpu() -> Any:
    """The CUDA device, or skip (fail under FACEJOBS_REQUIRE_GPU=1) where torch sees none.

    Every `gpu`-marked test calls it before it runs (`pytest_runtest_setup` below), so on a GPU host
    the smoke script's FACEJOBS_REQUIRE_GPU=1 turns a broken CUDA setup into failures, not skips.
    """
    import torch

    if not torch.cuda.is_available():
        reason = f"needs a CUDA device: torch {torch.__version__} (CUDA {torch.version.cuda}) sees none"
        if get_settings().require_gpu:
            pytest.fail(reason + " (FACEJOBS_REQUIRE_GPU=1 forbids skipping)")
        pytest.skip(reason)
    return torch.device("cuda")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        need_gpu()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The shared MNIST IDX folder (8,000 test-set images)."""
    return need_data("mnist")


@pytest.fixture(scope="session")
def orl_dir() -> Path:
    """The shared ORL faces folder (s1..s30, 10 PGM images each)."""
    return need_data("orl")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests save screenshots and plots for people to look at (ignored by git)."""
    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


pytest_plugins = ["tests.services"]
