"""A rank's parts in `ml.arcface.ddp`: its callbacks, the averaged backbone stateful, its optimisers.

`ColumnSGD` is the head's optimiser under partial FC's negative sampling (`sample_rate` < 1).
"""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from ml.arcface.config import TrainConfig
from ml.arcface.partial_fc import PartialFCLoss
from ml.arcface.shards import sgd_step_columns_
from ml.core.distributed import RankChannel, average_buffers


class RankCallbacks:
    """A rank's callbacks: rank 0 forwards to the host; every rank agrees on stops."""

    def __init__(self, channel: RankChannel, rank: int, checkpoint: dict[str, Any] | None) -> None:
        self.channel, self.rank, self.checkpoint = channel, rank, checkpoint

    def progress(self, step: int, total: int, **metrics: float) -> None:
        if self.rank == 0:
            self.channel.send("progress", step, total, metrics)

    def log(self, message: str) -> None:
        if self.rank == 0:
            self.channel.send("log", message)

    def should_stop(self) -> bool:
        return self.channel.stop_requested()

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        self.channel.send("checkpoint", buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self.checkpoint

    def preview(self, name: str, png: bytes) -> None:
        """No previews from ranks."""


class AveragedModel:
    """The backbone's stateful: its batch-norm statistics averaged over the ranks before saving (a collective)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict[str, Any]:
        average_buffers(self.module)
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        self.module.load_state_dict(state)


class ColumnSGD(torch.optim.SGD):
    """SGD with momentum on a (d, C_local) W shard that steps only the columns taken since the last zero_grad.

    Under partial FC's negative sampling a column left out of a step has a zero gradient, yet
    `torch.optim.SGD` would still move it by its momentum and weight decay. Here the sampled
    columns of W and of its momentum buffer are indexed and updated (`sgd_step_columns_`: torch's
    update restricted to them, as insightface's PartialFC steps only the sampled rows of W and of
    their momentum); every other column and its momentum stay as they are. `take(columns)` after
    each (micro-)batch adds its local columns (`PartialFCOutput.columns`); `step()` updates their
    union and `zero_grad()` clears it, so a step a grad scaler skips carries nothing over. With
    nothing taken it is `torch.optim.SGD` (dampening 0, not Nesterov). The momentum buffer has
    torch's key, so checkpoints and re-sharding (`ShardedHead`) are unchanged.
    """

    def __init__(self, params: Any, lr: float, momentum: float, weight_decay: float) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.taken: torch.Tensor | None = None

    def take(self, columns: torch.Tensor) -> None:
        """Mark the local `columns` of this (micro-)batch for the next step."""
        weight = self.param_groups[0]["params"][0]
        if self.taken is None:
            self.taken = torch.zeros(weight.shape[1], dtype=torch.bool, device=weight.device)
        self.taken[columns] = True

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self.taken = None

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if self.taken is None:
            return super().step(closure)
        if closure is not None:
            raise ValueError("ColumnSGD takes no closure")
        index = torch.nonzero(self.taken).squeeze(1)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if state.get("momentum_buffer") is None:
                    state["momentum_buffer"] = torch.zeros_like(param)
                sgd_step_columns_(
                    param, param.grad, state["momentum_buffer"], index,
                    lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"],
                )  # fmt: skip
        return None


def make_optimizers(config: TrainConfig, backbone: nn.Module, pfc: PartialFCLoss) -> tuple[Any, Any, Any, Any]:
    """The backbone's and the head's optimiser and per-epoch scheduler (one rank's two groups, split)."""
    from ml.arcface.train import _make_scheduler

    w_decay = config.weight_decay if config.loss_weight_decay is None else config.loss_weight_decay
    params = [p for p in backbone.parameters() if p.requires_grad]
    head_lr = config.lr * config.loss_lr_multiplier
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        head_type = ColumnSGD if config.sample_rate < 1 else torch.optim.SGD
        head_opt: torch.optim.Optimizer = head_type(
            [pfc.weight], lr=head_lr, momentum=config.momentum, weight_decay=w_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        head_opt = torch.optim.AdamW([pfc.weight], lr=head_lr, weight_decay=w_decay)
    return opt, _make_scheduler(config, opt), head_opt, _make_scheduler(config, head_opt)
