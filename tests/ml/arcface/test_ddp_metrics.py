"""Per-rank job metrics of a 2-rank gloo run (`ml.core.distributed.rank_metrics`), in a few steps.

The run also samples negatives (sample_rate 0.5: the head steps with `ColumnSGD` on both ranks).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ml.arcface.config import TrainConfig, TrainConfigError
from ml.arcface.ddp import DistributedOptions, train_embedding_ddp
from ml.core.callbacks import LocalCallbacks
from ml.data import load_mnist

# 160 MNIST digits at 16 px, 120 to train: one epoch of 3 steps of 32 (16 a rank).
TINY = TrainConfig(
    backbone="se_resnet18",
    backbone_kwargs={"base_width": 4, "dropout": 0.0},
    embedding_size=16,
    image_size=16,
    scale=32.0,
    epochs=1,
    batch_size=32,
    split_by="sample",
    seed=3,
    max_pairs=200,
    sample_rate=0.5,
)


@pytest.mark.timeout(300)
def test_two_ranks_report_samples_per_second_each_and_no_gpu_memory_on_cpu(mnist_dir: Path) -> None:
    data = load_mnist(mnist_dir, 16, max_samples=160)
    cb = LocalCallbacks()
    result = train_embedding_ddp(data, TINY, cb, DistributedOptions(world_size=2, threads=1, timeout_s=60.0))
    assert [s[0] for s in cb.steps] == [1, 2, 3]
    for _, _, metrics in cb.steps:
        assert set(metrics) == {"loss", "acc", "rank0/samples_per_s", "rank1/samples_per_s"}
        assert metrics["rank0/samples_per_s"] > 0 and metrics["rank1/samples_per_s"] > 0
    assert result.arcface_weight.shape == (16, 10) and bool(result.arcface_weight.isfinite().all())
    assert not any("gpu_mem_mb" in k for k in cb.steps[-1][2])  # CPU: no GPU memory to report


@pytest.mark.timeout(300)
def test_an_input_error_in_a_rank_is_raised_by_name_on_the_host(mnist_dir: Path) -> None:
    # batch_size 33 is checked by each rank (it must split evenly): only the error's class name and
    # text come back, and the host raises that class again, not RankFailed.
    data = load_mnist(mnist_dir, 16, max_samples=160)
    config = dataclasses.replace(TINY, batch_size=33)
    with pytest.raises(TrainConfigError, match=r"batch_size 33 must be a multiple of gpus \(2\)"):
        train_embedding_ddp(data, config, LocalCallbacks(), DistributedOptions(world_size=2, threads=1, timeout_s=60.0))
