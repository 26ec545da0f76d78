"""Partial FC's negative sampling in training (`ColumnSGD`): only the sampled columns move.

One process (no process group: a world of one holding all 40 columns); the 2-rank loss with
sampling is tested against PML in test_partial_fc.py, the 2-rank run in test_ddp_metrics.py.
"""

from __future__ import annotations

import pytest
import torch

from ml.arcface.config import TrainConfig, TrainConfigError, validate_config
from ml.arcface.partial_fc import PartialFCLoss
from ml.arcface.ranks import ColumnSGD, make_optimizers
from ml.arcface.train import train_embedding

C, D, LR, MOM, WD = 40, 8, 0.1, 0.9, 5e-4


def loss_at(pfc: PartialFCLoss, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(6, D, generator=gen, dtype=torch.float64)
    labels = torch.tensor([3, 3, 17, 22, 35, 8])
    return pfc(emb, labels, step=seed)


def head(rate: float) -> PartialFCLoss:
    gen = torch.Generator().manual_seed(0)
    return PartialFCLoss(
        C, D, scale=16.0, sample_rate=rate, seed=5, weight=torch.randn(D, C, generator=gen, dtype=torch.float64)
    )


def test_a_sampled_step_moves_only_the_sampled_columns_and_their_momentum() -> None:
    pfc = head(0.25)
    opt = ColumnSGD([pfc.weight], lr=LR, momentum=MOM, weight_decay=WD)
    # A first step over every column, so each has momentum a plain SGD step would carry on with.
    loss, _ = loss_at(pfc, 0)
    loss.backward()
    opt.take(torch.arange(C))
    opt.step()
    opt.zero_grad()
    before_w, before_m = pfc.weight.detach().clone(), opt.state[pfc.weight]["momentum_buffer"].clone()
    assert before_m.abs().min() > 0
    loss, columns = loss_at(pfc, 1)
    assert columns.numel() == 10 and {3, 17, 22, 35, 8} <= set(columns.tolist())  # positives kept
    loss.backward()
    grad = pfc.weight.grad.clone()  # type: ignore[union-attr]
    # What torch's SGD does to every column from the same state.
    ref = torch.nn.Parameter(before_w.clone())
    ref_opt = torch.optim.SGD([ref], lr=LR, momentum=MOM, weight_decay=WD)
    ref_opt.load_state_dict(
        {"state": {0: {"momentum_buffer": before_m.clone()}}, "param_groups": opt.state_dict()["param_groups"]}
    )
    ref.grad = grad.clone()
    ref_opt.step()
    opt.take(columns)
    opt.step()
    after_m = opt.state[pfc.weight]["momentum_buffer"]
    rest = torch.ones(C, dtype=torch.bool)
    rest[columns] = False
    assert torch.equal(grad[:, rest], torch.zeros_like(grad[:, rest]))  # no gradient outside the sample
    assert torch.equal(pfc.weight.detach()[:, rest], before_w[:, rest])
    assert torch.equal(after_m[:, rest], before_m[:, rest])
    assert not torch.equal(ref.detach()[:, rest], before_w[:, rest])  # plain SGD would have moved them
    torch.testing.assert_close(pfc.weight.detach()[:, columns], ref.detach()[:, columns], rtol=0, atol=1e-15)
    torch.testing.assert_close(
        after_m[:, columns], ref_opt.state[ref]["momentum_buffer"][:, columns], rtol=0, atol=1e-15
    )
    opt.zero_grad()
    assert opt.taken is None


def test_rate_one_steps_exactly_as_torch_sgd() -> None:
    exact, full = head(1.0), head(1.0)
    opt = torch.optim.SGD([exact.weight], lr=LR, momentum=MOM, weight_decay=WD)
    column_opt = ColumnSGD([full.weight], lr=LR, momentum=MOM, weight_decay=WD)
    for step in range(3):
        for pfc, o in ((exact, opt), (full, column_opt)):
            loss, columns = loss_at(pfc, step)
            assert columns.tolist() == list(range(C))
            loss.backward()
            if isinstance(o, ColumnSGD):
                o.take(columns)
            o.step()
            o.zero_grad()
    # torch's SGD orders the same float64 operations differently (foreach kernels): equal to 1e-14.
    torch.testing.assert_close(full.weight, exact.weight, rtol=0, atol=1e-14)
    momentum = column_opt.state[full.weight]["momentum_buffer"]
    torch.testing.assert_close(momentum, opt.state[exact.weight]["momentum_buffer"], rtol=0, atol=1e-14)
    # And a training run at 1.0 (the default) steps its head with torch's SGD itself: the exact run.
    backbone = torch.nn.Linear(2, D)
    for rate, kind in ((1.0, torch.optim.SGD), (0.5, ColumnSGD)):
        config = TrainConfig(sample_rate=rate)
        head_opt = make_optimizers(config, backbone, head(rate))[2]
        assert type(head_opt) is kind


def test_sample_rate_is_checked() -> None:
    with pytest.raises(TrainConfigError, match=r"sample_rate must be in \(0, 1\], got 1.5"):
        validate_config(TrainConfig(sample_rate=1.5))
    with pytest.raises(TrainConfigError, match="sample_rate < 1 needs optimizer 'sgd'"):
        validate_config(TrainConfig(sample_rate=0.5, optimizer="adam"))
    with pytest.raises(TrainConfigError, match="multi-rank runs"):
        train_embedding(None, TrainConfig(sample_rate=0.5))  # type: ignore[arg-type]


def test_the_job_params_take_sample_rate_for_multi_rank_sgd_runs_only() -> None:
    from pydantic import ValidationError

    from jobs.params.embedding import TrainEmbeddingParams

    base = {"dataset": "builtin:mnist"}
    assert TrainEmbeddingParams(**base).sample_rate == 1.0
    assert TrainEmbeddingParams(**base, gpus=2, sample_rate=0.1).sample_rate == 0.1
    for bad, message in (
        ({"gpus": 1, "sample_rate": 0.5}, "needs gpus > 1"),
        ({"gpus": 2, "sample_rate": 0.5, "optimizer": "adam"}, "needs optimizer sgd"),
        ({"gpus": 2, "sample_rate": 0.0}, "greater than 0"),
        ({"gpus": 2, "sample_rate": 1.5}, "less than or equal to 1"),
    ):
        with pytest.raises(ValidationError, match=message):
            TrainEmbeddingParams(**base, **bad)
