"""A rank's parts in `ml.arcface.ddp`: its callbacks, the averaged backbone stateful, its optimisers."""

from __future__ import annotations

import io
from typing import Any

import torch
from torch import nn

from ml.arcface.config import TrainConfig
from ml.arcface.partial_fc import PartialFCLoss
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
        head_opt: torch.optim.Optimizer = torch.optim.SGD(
            [pfc.weight], lr=head_lr, momentum=config.momentum, weight_decay=w_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        head_opt = torch.optim.AdamW([pfc.weight], lr=head_lr, weight_decay=w_decay)
    return opt, _make_scheduler(config, opt), head_opt, _make_scheduler(config, head_opt)
