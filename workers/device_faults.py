"""What the worker says and does about device faults: the device to use, and out-of-memory hints.

`workers.runner` maps every exception to a job outcome in one place; this module holds the facts
that mapping needs and that are about devices rather than about jobs: which device a worker uses
(`FACEJOBS_DEVICE`), the message an out-of-memory failure gets (from the params each kind declares
as deciding its memory, `KindSpec.oom_hints`), and how to leave the device clean for the next job.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

Fault = Literal["fatal", "out_of_memory"]


class DeviceUnavailableError(RuntimeError):
    """This worker was told to use a device that torch cannot see (a worker fault, not the job's)."""


def resolve_device(choice: str, torch_threads: int | None = None) -> Any:
    """The torch.device for `FACEJOBS_DEVICE` (auto | cpu | cuda), with the CPU thread count applied.

    Raises:
        DeviceUnavailableError: `cuda` on a worker where torch sees no CUDA device.
    """
    import torch

    if torch_threads is not None and torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"FACEJOBS_DEVICE=cuda but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device "
            "on this worker: check the driver and CUDA_VISIBLE_DEVICES, or set FACEJOBS_DEVICE=auto or cpu"
        )
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def classify(exc: BaseException) -> Fault | None:
    """`fatal` for an error that poisons this process's device, `out_of_memory`, or None.

    Nothing that did not import torch can have raised a torch error, so the API-side import rules
    hold and a job that failed before touching torch does not pay for importing it here.
    """
    if isinstance(exc, DeviceUnavailableError):
        return "fatal"
    if "torch" not in sys.modules:
        return None
    from ml.core.device_errors import is_fatal_device_error, is_out_of_memory

    if is_out_of_memory(exc):
        return "out_of_memory"
    if is_fatal_device_error(exc):
        return "fatal"
    return None


def oom_message(kind: str, params: Any, device: Any, exc: BaseException) -> str:
    """The failure message of an out-of-memory job: which of its params to lower, then torch's words."""
    from jobs.kinds import UnknownKind, get_kind

    try:
        names = get_kind(kind).oom_hints
    except UnknownKind:
        names = ()
    parts = []
    for name in names:
        value = getattr(params, name, None)
        parts.append(f"{name} (now {value})" if value is not None else name)
    if len(parts) > 1:
        lower = "lower " + ", ".join(parts[:-1]) + " or " + parts[-1]
    elif parts:
        lower = "lower " + parts[0]
    else:
        lower = "use smaller batches or images"
    where = str(device) if device is not None else "the device"
    return (
        f"out of memory on {where} ({kind}): {lower}, or run it on a worker with more memory. "
        f"torch said: {str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__}"
    )


def release_device_memory(exc: BaseException) -> None:
    """Let go of what a failed job held on the device, so the next job in this process has it all."""
    import traceback

    # The traceback's frames keep the job's tensors alive until the exception object dies.
    traceback.clear_frames(exc.__traceback__)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
