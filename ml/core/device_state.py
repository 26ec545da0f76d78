"""Checkpoint state that resumes on any device and in any memory layout, and host copies that do not block.

A requeued job may land on another kind of worker (`gpu` or `cpu`), so a checkpoint is written in
one canonical form and fitted to the new attempt on load:

- `portable(state)`: every tensor detached, on the CPU and contiguous (a copy, so the saved state
  never aliases live buffers), inside the same dicts, lists and tuples. Such a state loads with
  `torch.load(weights_only=True, map_location="cpu")` on a host without CUDA.
- `fit_optimizer_state(optimizer)`: after `optimizer.load_state_dict`, give every per-parameter state
  tensor (Adam's moments, SGD's momentum) the device, dtype and strides of its parameter. Torch's
  own loader moves device and dtype but keeps the saved strides, and the fused Adam kernels walk the
  moments and the parameter in memory order: a contiguous moment for a channels-last image updates
  the wrong pixels on the CPU (0.5 away from an uninterrupted run after 4 steps) and is refused on CUDA.
- `fused_adam_supported(device)`: whether `torch.optim.Adam(fused=True)` runs there.
- `to_device(tensor, device)`: a host-to-device copy that does not wait for the device (pinned
  memory, `non_blocking`); a plain `.to()` from pageable memory synchronises the CUDA stream.
"""

from __future__ import annotations

from typing import TypeVar

import torch

__all__ = ["fit_optimizer_state", "fused_adam_supported", "portable", "to_device"]

T = TypeVar("T")

# Where torch ships fused Adam kernels (torch.utils._foreach_utils lists them privately).
_FUSED_ADAM_DEVICES = ("cpu", "cuda", "mps", "xpu", "hpu")


def portable(state: T) -> T:
    """A copy of `state` with every tensor detached, on the CPU, contiguous; containers rebuilt alike."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu").clone(memory_format=torch.contiguous_format)  # type: ignore[return-value]
    if isinstance(state, dict):
        out = type(state)((k, portable(v)) for k, v in state.items())
        if hasattr(state, "_metadata"):  # a module's state_dict: load_state_dict reads the versions
            out._metadata = state._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(state, list):
        return [portable(v) for v in state]  # type: ignore[return-value]
    if isinstance(state, tuple):
        return tuple(portable(v) for v in state)  # type: ignore[return-value]
    return state


def fit_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give each parameter's state tensors its device, dtype and memory layout (call after loading).

    Only tensors of the parameter's shape are refitted (moments, momentum buffers); scalars such as
    Adam's `step` keep what `load_state_dict` chose for them (the CPU, or the device when fused).
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state:
                continue
            for key, value in state.items():
                if not isinstance(value, torch.Tensor) or value.shape != param.shape:
                    continue
                if value.device == param.device and value.dtype == param.dtype and value.stride() == param.stride():
                    continue
                fitted = torch.empty_like(param, memory_format=torch.preserve_format)
                fitted.copy_(value)  # copy_ matches elements by index, whatever either layout is
                state[key] = fitted


def fused_adam_supported(device: torch.device | str) -> bool:
    """True where `torch.optim.Adam(fused=True)` has kernels for float parameters."""
    return torch.device(device).type in _FUSED_ADAM_DEVICES


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`; from the CPU to CUDA through pinned memory without blocking the host.

    Safe to use the result at once: the copy is queued on the current stream before any kernel that
    reads it, and the caching host allocator keeps the pinned block until the copy has finished.
    """
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
