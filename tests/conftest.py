"""Fixtures shared by the whole suite.

Service fixtures (PostgreSQL, Redis, S3) live in `tests/platform/conftest.py`; the ones here need
no services: the real data folder beside the checkout and a CPU-friendly torch setup.
"""

from __future__ import annotations

import os
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
    """The CUDA device, or skip (fail under FACEJOBS_REQUIRE_GPU=1) without one.

    A `gpu` test calls this first, so on a GPU host that lost its GPU (or a CI job meant to run on
    one) the smoke script's FACEJOBS_REQUIRE_GPU=1 turns the skip into a failure.
    """
    import torch  # here, not at the top: the rest of the suite must not need (or load) torch for this

    if torch.cuda.is_available():
        return torch.device("cuda", 0)  # no CUDA call yet: deterministic mode may still be set after this
    reason = "needs CUDA: torch sees no GPU on this host"
    require = getattr(get_settings(), "require_gpu", None)
    if require is None:  # until the settings object has the flag
        require = os.environ.get("FACEJOBS_REQUIRE_GPU", "") == "1"
    if require:
        pytest.fail(reason + " (FACEJOBS_REQUIRE_GPU=1 forbids skipping)")
    pytest.skip(reason)


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
