"""Column shards of the ArcFace class-weight matrix W (d, C): who holds what, gather, re-shard.

W has pytorch-metric-learning's `ArcFaceLoss.W` layout, one column per class. With `world_size`
ranks, rank r holds the contiguous columns `shard_range(C, world_size, r)`; the first `C %
world_size` ranks take one column more, so every rank's shard differs by at most one column. The
same functions serve any tensor laid out like W (an optimiser's momentum buffer for it, say), so a
checkpoint's shards of W and of its optimiser state re-shard alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from ml.core.errors import InputError


class ShardError(InputError):
    """Shards that do not fit the requested layout (wrong count, sizes or embedding size)."""


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """The columns `[start, stop)` of W that `rank` holds among `world_size` ranks.

    Raises:
        ShardError: fewer classes than ranks (a rank would hold nothing) or a rank out of range.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ShardError(f"rank {rank} is not in a world of {world_size} ranks")
    if num_classes < world_size:
        raise ShardError(f"{num_classes} classes cannot be sharded over {world_size} ranks: use at most {num_classes}")
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_columns(full: torch.Tensor, world_size: int, rank: int) -> torch.Tensor:
    """Rank `rank`'s shard of a full (d, C) tensor, as a fresh contiguous tensor."""
    if full.dim() != 2:
        raise ShardError(f"expected a (d, C) matrix, got shape {tuple(full.shape)}")
    start, stop = shard_range(full.shape[1], world_size, rank)
    return full[:, start:stop].clone()


def split_columns(full: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    """Every rank's shard of a full (d, C) tensor, rank 0 first."""
    return [shard_columns(full, world_size, rank) for rank in range(world_size)]


def join_columns(shards: list[torch.Tensor]) -> torch.Tensor:
    """The full (d, C) tensor from all ranks' shards, rank 0 first (the 1-GPU layout).

    Raises:
        ShardError: the shards do not have the sizes `shard_range` gives for their count, so they
            are out of order, from different runs, or missing one.
    """
    if not shards:
        raise ShardError("no shards to join")
    dims = {s.shape[0] for s in shards if s.dim() == 2}
    if len(dims) != 1 or any(s.dim() != 2 for s in shards):
        raise ShardError(f"shards must be (d, C_r) with one d, got shapes {[tuple(s.shape) for s in shards]}")
    num_classes = sum(s.shape[1] for s in shards)
    for rank, shard in enumerate(shards):
        start, stop = shard_range(num_classes, len(shards), rank)
        if shard.shape[1] != stop - start:
            raise ShardError(
                f"shard {rank} has {shard.shape[1]} columns, expected {stop - start} of {num_classes} "
                f"over {len(shards)} ranks: pass every rank's shard in rank order"
            )
    return torch.cat(shards, dim=1)


def reshard(shards: list[torch.Tensor], world_size: int) -> list[torch.Tensor]:
    """A checkpoint's shards (one per old rank, in rank order) laid out for `world_size` ranks."""
    return split_columns(join_columns(shards), world_size)


def gather_columns(local: torch.Tensor, num_classes: int, group: ProcessGroup | None = None) -> torch.Tensor:
    """The full (d, C) tensor on every rank from each rank's shard (collective: all ranks call it).

    Shards differ by up to one column and all_gather wants equal sizes, so each shard is padded to
    the largest and trimmed after.
    """
    world_size = dist.get_world_size(group) if dist.is_initialized() else 1
    if world_size == 1:
        return local.detach().clone()
    rank = dist.get_rank(group)
    start, stop = shard_range(num_classes, world_size, rank)
    if local.dim() != 2 or local.shape[1] != stop - start:
        raise ShardError(f"rank {rank} holds shape {tuple(local.shape)}, expected (d, {stop - start})")
    widest = shard_range(num_classes, world_size, 0)[1]
    padded = torch.zeros(local.shape[0], widest, dtype=local.dtype, device=local.device)
    padded[:, : local.shape[1]] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded, group=group)
    sizes = [b - a for a, b in (shard_range(num_classes, world_size, r) for r in range(world_size))]
    return torch.cat([part[:, :size] for part, size in zip(parts, sizes, strict=True)], dim=1)


@torch.no_grad()
def sgd_step_columns_(
    weight: torch.Tensor,
    grad: torch.Tensor,
    momentum_buffer: torch.Tensor,
    index: torch.Tensor,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> None:
    """One SGD-with-momentum step on the columns `index` of a shard only, in place.

    With negative sampling the other columns took no part in the step; `torch.optim.SGD` would
    still move them by their momentum and weight decay. This is `torch.optim.SGD`'s update
    (dampening 0, not Nesterov) restricted to `index`, with a zero-initialised buffer.
    """
    g = grad[:, index]
    if weight_decay:
        g = g + weight_decay * weight[:, index]
    buf = momentum_buffer[:, index].mul_(momentum).add_(g)
    momentum_buffer[:, index] = buf
    weight[:, index] = weight[:, index] - lr * buf


def reshard_head_state(state: dict[str, Any], world_size: int) -> dict[str, Any]:
    """A sharded head's checkpoint (`ShardedHead.state_dict`) regrouped for `world_size` ranks.

    The W shards and every optimiser tensor laid out like them (momentum, Adam's moments) are
    joined in old rank order and split anew; scalars (Adam's step) and the param groups are kept.

    Raises:
        ShardError: the shards do not join (missing, out of order, another run's).
    """
    weight = state["weight"]
    if len(weight) == world_size:
        return state
    moved: dict[str, Any] = {}
    for key, value in state["optimizer_state"].items():
        moved[key] = reshard(list(value), world_size) if isinstance(value, list) else value
    return {**state, "weight": reshard(list(weight), world_size), "optimizer_state": moved}


class ShardedHead:
    """The stateful of a rank's W shard and its optimiser: saves every rank's shard, loads its own.

    `state_dict()` is a collective (all ranks call it together, as `ResumableLoop.save` does):
    it gathers the shards of W and of each optimiser tensor shaped like W, so rank 0 writes all of
    them, one per rank. `load_state_dict` re-shards a checkpoint of another world size first.
    """

    def __init__(self, weight: torch.nn.Parameter, optimizer: torch.optim.Optimizer, num_classes: int) -> None:
        self.weight, self.optimizer, self.num_classes = weight, optimizer, num_classes

    def _world(self) -> tuple[int, int]:
        if not dist.is_initialized():
            return 1, 0
        return dist.get_world_size(), dist.get_rank()

    def state_dict(self) -> dict[str, Any]:
        world_size, _ = self._world()
        opt = self.optimizer.state_dict()
        per_param = opt["state"].get(0, {})
        moved: dict[str, Any] = {}
        for key, value in sorted(per_param.items()):
            if isinstance(value, torch.Tensor) and value.shape == self.weight.shape:
                moved[key] = split_columns(gather_columns(value, self.num_classes), world_size)
            else:
                moved[key] = value
        return {
            "num_classes": self.num_classes,
            "weight": split_columns(gather_columns(self.weight.detach(), self.num_classes), world_size),
            "optimizer_state": moved,
            "param_groups": opt["param_groups"],
        }

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        world_size, rank = self._world()
        if int(state["num_classes"]) != self.num_classes:
            raise ShardError(f"the checkpoint's head has {state['num_classes']} classes, this run {self.num_classes}")
        state = reshard_head_state(state, world_size)
        with torch.no_grad():
            self.weight.copy_(state["weight"][rank].to(self.weight.device))
        per_param = {
            key: (value[rank] if isinstance(value, list) else value) for key, value in state["optimizer_state"].items()
        }
        self.optimizer.load_state_dict(
            {"state": {0: per_param} if per_param else {}, "param_groups": state["param_groups"]}
        )
