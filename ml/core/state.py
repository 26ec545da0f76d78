"""Stateful objects: what a resumable loop saves and restores, each behind `state_dict` / `load_state_dict`.

Modules, optimisers, schedulers and grad scalers already have that shape; the wrappers here give it
to what does not: the global random generators (`GlobalRNG`), a `torch.Generator` (`GeneratorState`),
torch's CPU and one CUDA device's generator alone (`TorchRNG`, `CudaRNG`), and a tensor that is
itself being optimised, such as inverted images (`TensorState`). A new kind of state (a sampler
that resumes mid-epoch, an EMA of the weights) joins the loop's state dict the same way.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from ml.core.seeding import rng_state, set_rng_state

__all__ = ["CudaRNG", "GeneratorState", "GlobalRNG", "Stateful", "TensorState", "TorchRNG"]


@runtime_checkable
class Stateful(Protocol):
    """Anything whose state is saved as data and put back: modules, optimisers, the wrappers below."""

    def state_dict(self) -> Any:
        """The state as tensors, plain containers, numbers and strings."""

    def load_state_dict(self, state: Any, /) -> Any:
        """Put back what `state_dict` returned (possibly saved on another device)."""


class GlobalRNG:
    """Python's, numpy's and torch's global generators (and CUDA's), as `ml.core.seeding.rng_state`."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        set_rng_state(state)


class TorchRNG:
    """torch's global CPU generator alone."""

    def state_dict(self) -> torch.Tensor:
        return torch.get_rng_state()

    def load_state_dict(self, state: torch.Tensor, /) -> None:
        torch.set_rng_state(state)


class CudaRNG:
    """The generator of one CUDA device; None (saved and loaded as such) on other devices."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def state_dict(self) -> torch.Tensor | None:
        return torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def load_state_dict(self, state: torch.Tensor | None, /) -> None:
        if self.device.type == "cuda" and state is not None:
            torch.cuda.set_rng_state(state, self.device)


class GeneratorState:
    """A `torch.Generator` that draws a run's jitter, latents or data order."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor, /) -> None:
        self.generator.set_state(state)


class TensorState:
    """A tensor optimised in place (a leaf with gradients): loading copies into it by index.

    `copy_` matches elements by index whatever either memory layout is, so a checkpoint saved in
    contiguous form fills a channels-last tensor correctly, on any device.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def state_dict(self) -> torch.Tensor:
        return self.tensor

    def load_state_dict(self, state: torch.Tensor, /) -> None:
        with torch.no_grad():
            self.tensor.copy_(state.to(self.tensor.device))
