"""Fixtures shared by the whole suite.

Service fixtures (PostgreSQL, Redis, S3) live in `tests/support/services.py` (a plugin, below); the
ones here need no services: the real data folder beside the checkout, a CPU-friendly torch setup,
the `need_gpu` check (tests/support) before every `gpu` test, and the background training of the
shared models the collected tests need (`tests.support.pretrain`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.settings import get_settings
from tests.support import need_gpu, pretrain


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


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start training the shared models these tests need, in the background (tests.support.pretrain)."""
    if not session.config.option.collectonly:
        pretrain.start(pretrain.needed(session.items), _data_dir())


def pytest_sessionfinish(session: pytest.Session) -> None:
    pretrain.stop()


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


pytest_plugins = ["tests.support.services"]
