"""The multi-rank sampler of ArcFace training: rank r's slice of one rank's global batches, resumable mid-epoch."""

from __future__ import annotations

from typing import Any

import torch

from ml.arcface.config import TrainConfig, TrainConfigError
from ml.arcface.train import _epoch_draws
from ml.core.seeding import epoch_seed


class ShardSampler:
    """Rank `rank`'s slice of every global batch of an epoch; resumes mid-epoch by its position.

    The epoch's order and augmentation draws are exactly one rank's (`train_embedding`): a seeded
    permutation, then per global batch its shifts and flips; rank r takes rows [r*b, (r+1)*b).
    """

    def __init__(self, n: int, batch: int, world_size: int, rank: int, config: TrainConfig) -> None:
        self.n, self.batch, self.world_size, self.rank, self.config = n, batch, world_size, rank, config
        self.steps = max(1, n // batch)
        self.local = batch // world_size
        self.epoch, self.position = 0, 0
        self._cached: tuple[int, Any] | None = None

    def draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(order, offsets, flips) of `epoch`, as one rank draws them."""
        if self._cached is None or self._cached[0] != epoch:
            gen = torch.Generator().manual_seed(epoch_seed(self.config.seed, epoch))
            order = torch.randperm(self.n, generator=gen)[: self.steps * self.batch]
            offsets, flips = _epoch_draws(
                self.steps, self.batch, self.config.augment_shift, self.config.augment_flip, gen
            )
            self._cached = (epoch, (order, offsets, flips))
        return self._cached[1]

    def take(self, epoch: int, position: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This rank's indices, offsets and flips at `position` of `epoch`; the next position is remembered."""
        order, offsets, flips = self.draws(epoch)
        lo = position * self.batch + self.rank * self.local
        rows = slice(self.rank * self.local, (self.rank + 1) * self.local)
        self.epoch, self.position = epoch, position + 1
        return (
            order[lo : lo + self.local],
            None if offsets is None else offsets[position, rows],
            None if flips is None else flips[position, rows],
        )

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "n": self.n, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int], /) -> None:
        if int(state["n"]) != self.n or int(state["batch"]) != self.batch:
            raise TrainConfigError("the checkpoint's sampler is for other data or another global batch")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
