"""What every part of the suite may share: waiting on a condition, and every route an app serves.

`wait_for` is the one way a test waits for something another process or thread does: it polls the
condition until a deadline and fails saying what never happened (a bare `time.sleep` would guess how
long the other side takes, and pass or fail with the machine's load). `app_routes` lists the routes
from `app.routes` itself, not from the OpenAPI schema, so a route left out of the schema
(`include_in_schema=False`) is still seen by the auth and isolation tests.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from fastapi.routing import iter_route_contexts
from starlette.routing import Mount

from jobs.settings import get_settings

T = TypeVar("T")
POLL_SECONDS = 0.05


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, poll: float = POLL_SECONDS) -> T:
    """The first truthy value of `predicate()`, polled every `poll` seconds for up to `timeout` seconds.

    Raises:
        AssertionError: `predicate` never answered a truthy value in time; the message names `what`.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(poll)


def _plain_path(path: str) -> str:
    """`/jobs/{job_id}/artifacts/{name:path}` -> `/jobs/{job_id}/artifacts/{name}` (the schema's spelling)."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def app_routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) `app` answers, in or out of its OpenAPI schema; a mount is ("MOUNT", prefix).

    HEAD is left out: Starlette adds it beside every GET of a plain route, and it runs the GET's endpoint.
    """
    routes: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):
        path = _plain_path(str(route.path))
        if isinstance(route.original_route, Mount):
            routes.add(("MOUNT", path))
            continue
        methods = route.methods
        assert methods, f"route {path} answers no method: classify it by hand in tests/support/__init__.py"
        routes |= {(m, path) for m in methods if m != "HEAD"}
    return routes


def model_config(backbone_kwargs: dict[str, Any], size: int, channels: int = 1) -> dict[str, Any]:
    """The config `ml.arcface.model.save_trained` needs for an se_resnet18 of `backbone_kwargs` on
    `size` x `size` images with uniform normalisation, no warp and the default ArcFace margin and scale."""
    from ml.arcface.model import Normalization

    return {
        "backbone": "se_resnet18",
        "backbone_kwargs": dict(backbone_kwargs),
        "image_size": [size, size],
        "in_channels": channels,
        "normalize": Normalization.uniform(channels).to_json(),
        "warp": "none",
        "margin": 28.6,
        "scale": 64.0,
    }


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
