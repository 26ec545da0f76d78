"""Seeds and random-number-generator state: how a resumed run redraws what it would have drawn.

Exact resume rests on two habits. What a unit of work draws (an epoch's data order, a step's
latents) comes from a generator seeded by (seed, unit) alone (`derived_seed`, `epoch_seed`), so it
does not depend on what ran before. What the global generators hold at a checkpoint (dropout draws
of torch, numpy's and Python's) is saved with `rng_state` and put back with `set_rng_state`, in a
form `torch.load(weights_only=True)` reads: numpy's state as a tensor and numbers.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["derived_seed", "epoch_seed", "rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (torch's seeds every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derived_seed(seed: int, *parts: int) -> int:
    """A seed that depends on (seed, parts) only, so a resumed run redraws exactly what it would have."""
    value = int(seed) * 1_000_003 + 17
    for p in parts:
        value = value * 7_919 + int(p) + 1
    return value % (2**62)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of `epoch`'s draws in ArcFace training (its own formula: checkpoints depend on it)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**62)


def rng_state() -> dict[str, Any]:
    """The global generators' state (torch, numpy, Python, and CUDA where present) as plain data."""
    bit_generator, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(bit_generator),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned; also reads the older format with numpy's own state tuple."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    if isinstance(saved, dict):  # a tuple of numpy arrays in checkpoints written before
        keys = np.asarray(saved["keys"].numpy(), dtype=np.uint32)
        saved = (saved["bit_generator"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
    np.random.set_state(saved)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
