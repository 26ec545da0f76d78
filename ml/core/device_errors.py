"""Which exceptions mean "the device failed", as opposed to "this input or these params failed".

A fatal accelerator error (an illegal memory access, a device-side assert, an ECC error, a lost
device) leaves the CUDA context of the process unusable: every later kernel launch fails too. It is
never a fact about one image or one param, so code that records per-item failures must let it
propagate (`raise_if_device_error`), and the worker hands the job to a fresh process. Running out
of device memory is different: the process stays healthy and the job's own sizes are to blame.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Older torch raised plain RuntimeErrors for the same faults; their messages start like this.
_FATAL_PREFIXES = ("CUDA error", "CUDA driver error", "HIP error", "XPU error")


def _chain(exc: BaseException, depth: int = 8) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling (a wrapper may hide the fault)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < depth:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device (or host allocator) out-of-memory error anywhere in the chain."""
    return any(isinstance(e, torch.OutOfMemoryError) for e in _chain(exc))


def is_fatal_device_error(exc: BaseException) -> bool:
    """True for an error that poisons the process's device context (not out of memory).

    `torch.AcceleratorError` is what torch raises for a failed CUDA call; a `RuntimeError` whose
    message starts with "CUDA error" is the same fault from code paths that predate that class.
    """
    for e in _chain(exc):
        if isinstance(e, torch.OutOfMemoryError):
            return False
        if isinstance(e, torch.AcceleratorError):
            return True
        if type(e) is RuntimeError and str(e).startswith(_FATAL_PREFIXES):
            return True
    return False


def raise_if_device_error(exc: BaseException) -> None:
    """Re-raise `exc` when it is a device fault or out of memory, so it is never recorded as bad data."""
    if is_out_of_memory(exc) or is_fatal_device_error(exc):
        raise exc
