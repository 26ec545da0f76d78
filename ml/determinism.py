"""A deterministic mode for a whole process: the same inputs on the same device give the same bits.

Minimal version (the worker needs only `set_deterministic`): `CUBLAS_WORKSPACE_CONFIG` must be in
the environment before CUDA initialises (cuBLAS reads it then), so the worker calls this at process
init; deterministic kernels where torch has them, an error naming the operation where it has none;
no cuDNN autotuning (it picks kernels by timing them).
"""

from __future__ import annotations

import os

import torch

CUBLAS_WORKSPACE = ":4096:8"


def set_deterministic(enabled: bool) -> None:
    """Turn deterministic algorithms on (or back off) for this process; call it before any CUDA work."""
    if enabled:
        # cuBLAS's own variable, read from the process environment when CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = enabled
