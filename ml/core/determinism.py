"""A deterministic mode: the same inputs on the same software and GPU model give the same bits.

CPU kernels are deterministic already (with a fixed thread count); CUDA ones are not by default:
cuDNN picks algorithms by timing them (`benchmark`), several convolution and matmul algorithms
accumulate with atomics, and cuBLAS splits reductions across a workspace whose layout depends on
how many streams ask for it. `set_deterministic(True)`:

- `torch.use_deterministic_algorithms(True, warn_only=False)`: deterministic kernels where torch
  has them, and a RuntimeError naming the operation where it has none (at the time of writing, on
  CUDA: the backward of AdaptiveAvgPool2d, which the encoder's torchvision ResNet-18 uses
  (se_resnet18's SE blocks take a plain mean instead), and of bilinear `interpolate` and
  `grid_sample`); a job that meets one fails with that message instead of silently differing;
- `torch.backends.cudnn.benchmark = False` and `cudnn.deterministic = True`;
- `CUBLAS_WORKSPACE_CONFIG=:4096:8` (cuBLAS reads it when CUDA initialises, so this must run
  before the first CUDA call: the worker calls it at process init, `FACEJOBS_DETERMINISTIC`).

What it promises is spelled out in README.md ("Exactness"): bitwise resume on CUDA only in this mode
and on the same GPU model; across CPU and CUDA results agree within tolerance, never bitwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["CUBLAS_WORKSPACE", "DeterminismError", "deterministic", "is_deterministic", "set_deterministic"]

# cuBLAS's documented setting for reproducible results (":16:8" also works, with less memory).
CUBLAS_WORKSPACE = ":4096:8"
_VALID_WORKSPACES = (":4096:8", ":16:8")


class DeterminismError(RuntimeError):
    """Deterministic mode was asked for too late: CUDA already started without the cuBLAS setting."""


def set_deterministic(enabled: bool) -> None:
    """Turn deterministic mode on or off for this process (call it before any CUDA work).

    Args:
        enabled: True for deterministic kernels (errors where torch has none); False restores
            torch's defaults for the algorithm choice (cuDNN benchmarking stays off).

    Raises:
        DeterminismError: enabled while CUDA is initialised and the cuBLAS workspace setting was
            not in the environment before it started (cuBLAS would ignore it now): set
            `CUBLAS_WORKSPACE_CONFIG=:4096:8` in the worker's environment, or call this at
            process start.
    """
    if enabled:
        # An environment variable of cuBLAS, not a facejobs setting: it must be in the process's
        # environment itself when CUDA initialises, so it is written here rather than read.
        current = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if current not in _VALID_WORKSPACES:
            if torch.cuda.is_initialized():
                raise DeterminismError(
                    "deterministic mode must be set before CUDA initialises: cuBLAS already started "
                    f"without CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE}; set it in the worker's "
                    "environment or call set_deterministic(True) at process start"
                )
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False


def is_deterministic() -> bool:
    """Whether deterministic mode is on in this process."""
    return torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()


@contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Deterministic mode (or not) inside the block, the previous torch flags restored after it."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    set_deterministic(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
