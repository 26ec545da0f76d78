"""Sharded ArcFace (`ml.arcface`): 2 gloo ranks against pytorch-metric-learning's `ArcFaceLoss`.

One `torch.multiprocessing` spawn of 2 ranks per backend runs every scenario (a spawn costs a
torch import per rank) and saves what each rank saw; the tests compare those with the single
process loss, recomputed here the slow obvious way, in float64 to 1e-6.
"""

from __future__ import annotations

import datetime
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytorch_metric_learning.losses import ArcFaceLoss

from ml.arcface.model import load_trained, save_trained
from ml.arcface.partial_fc import PartialFCError, PartialFCLoss
from ml.arcface.shards import (
    ShardError,
    gather_columns,
    join_columns,
    reshard,
    sgd_step_columns_,
    shard_columns,
    shard_range,
    split_columns,
)
from ml.backbones import create_backbone
from tests.support import model_config

WORLD = 2
DIM = 8
SPAWN_DEADLINE_S = 600  # a ceiling so a broken collective fails the test instead of hanging it
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)


def batch(num_classes: int, rows: int, labels: list[int], seed: int) -> dict[str, torch.Tensor]:
    """A float64 W (d, C) and a global batch; row 0 points away from its class (angle > pi - m)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(DIM, num_classes, generator=gen, dtype=torch.float64)
    emb = torch.randn(rows, DIM, generator=gen, dtype=torch.float64)
    emb[0] = -3 * weight[:, labels[0]] / weight[:, labels[0]].norm() + 0.05 * emb[0]
    return {"weight": weight, "emb": emb, "labels": torch.tensor(labels)}


# name -> (num_classes, labels of the global batch, sample_rate)
SCENARIOS: dict[str, tuple[int, list[int], float]] = {
    # 11 classes over 2 ranks: rank 0 holds 0..5, rank 1 holds 6..10.
    "exact": (11, [3, 0, 7, 10, 5, 6, 6, 1, 9, 2, 8, 4], 1.0),
    "targets_on_rank0_only": (11, [0, 1, 2, 3, 4, 5, 5, 1], 1.0),
    # 40 classes, 20 a rank, 5 sampled a rank: positives plus random negatives.
    "sampled": (40, [2, 2, 13, 25, 39, 30, 7, 25], 0.25),
    # 2 sampled a rank but more positives than that: exactly the positives are kept.
    "sampled_positives_only": (40, [1, 4, 9, 12, 21, 22, 30, 35, 36, 38], 0.1),
}


def rank_main(rank: int, out: str, backend: str, device_name: str) -> None:
    """One rank: every scenario, results to `out`/rank{rank}.pt."""
    torch.set_num_threads(1)
    device = torch.device(device_name, rank) if device_name == "cuda" else torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=f"file://{out}/store", world_size=WORLD, rank=rank, timeout=COLLECTIVE_TIMEOUT
    )
    results: dict[str, Any] = {}
    try:
        for name, (num_classes, labels, rate) in SCENARIOS.items():
            data = batch(num_classes, len(labels), labels, seed=len(name))
            n = len(labels) // WORLD
            emb = data["emb"][rank * n : (rank + 1) * n].to(device).requires_grad_(True)
            loss_fn = PartialFCLoss(
                num_classes, DIM, sample_rate=rate, seed=5, weight=shard_columns(data["weight"], WORLD, rank).to(device)
            )
            loss, index = loss_fn(emb, data["labels"][rank * n : (rank + 1) * n].to(device), step=3)
            loss.backward()
            _, again = loss_fn(emb.detach(), data["labels"][rank * n : (rank + 1) * n].to(device), step=3)
            assert loss_fn.weight.grad is not None and emb.grad is not None
            results[name] = {
                "loss": loss.detach().cpu(),
                "index": index.cpu(),
                "index_again": again.cpu(),
                "emb_grad": emb.grad.cpu(),
                "weight_grad": loss_fn.weight.grad.cpu(),
                "gathered": gather_columns(loss_fn.weight.detach(), num_classes).cpu(),
            }
        for name, bad_rank_batch in (("label_out_of_range", "label"), ("uneven_batches", "rows")):
            emb = torch.zeros(
                3 if bad_rank_batch == "rows" and rank == 1 else 2, DIM, dtype=torch.float64, device=device
            )
            bad_labels = torch.tensor([0, 11 if bad_rank_batch == "label" and rank == 1 else 1, 2][: emb.shape[0]])
            try:
                PartialFCLoss(11, DIM, device=device, dtype=torch.float64)(emb, bad_labels.to(device))
                results[name] = "no error"
            except PartialFCError as error:
                results[name] = str(error)
    finally:
        torch.save(results, f"{out}/rank{rank}.pt")
        dist.destroy_process_group()


def spawn(tmp: Path, backend: str, device: str) -> list[dict[str, Any]]:
    """Run `rank_main` on 2 ranks, failing (not hanging) past the deadline."""
    ctx = mp.start_processes(
        rank_main, args=(str(tmp), backend, device), nprocs=WORLD, join=False, start_method="spawn"
    )
    try:
        deadline = time.monotonic() + SPAWN_DEADLINE_S
        # join() returns as soon as one rank exits (raising if it failed), so wait in a loop.
        while not ctx.join(timeout=max(0.0, deadline - time.monotonic())):
            assert time.monotonic() < deadline, f"ranks still running after {SPAWN_DEADLINE_S} s"
    finally:
        for process in ctx.processes:
            if process.is_alive():
                process.kill()
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def gloo_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Both CPU ranks' results of every scenario."""
    return spawn(tmp_path_factory.mktemp("gloo"), "gloo", "cpu")


def reference(name: str, columns: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """PML's ArcFaceLoss in one process on the whole batch, on W or on W's `columns` only."""
    num_classes, labels, _ = SCENARIOS[name]
    data = batch(num_classes, len(labels), labels, seed=len(name))
    weight, targets = data["weight"], data["labels"]
    if columns is not None:
        # The slow obvious restriction: a C' = len(columns) class problem, labels renumbered.
        weight = weight[:, columns]
        targets = torch.tensor([columns.tolist().index(label) for label in labels])
    pml = ArcFaceLoss(num_classes=weight.shape[1], embedding_size=DIM)
    pml.W.data = weight.clone()
    emb = data["emb"].clone().requires_grad_(True)
    loss = pml(emb, targets)
    loss.backward()
    assert pml.W.grad is not None and emb.grad is not None
    return {"loss": loss.detach(), "emb_grad": emb.grad, "weight_grad": pml.W.grad, "weight": data["weight"]}


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=0, atol=1e-6)


def check_exact(ranks: list[dict[str, Any]], name: str) -> None:
    """Loss on every rank, each rank's embedding and W-column gradients equal PML's."""
    ref = reference(name)
    num_classes = SCENARIOS[name][0]
    n = len(SCENARIOS[name][1]) // WORLD
    assert ref["loss"].item() > 1.0  # a real loss (scale 64), so agreement is not 0 == 0
    for rank, result in enumerate(r[name] for r in ranks):
        start, stop = shard_range(num_classes, WORLD, rank)
        assert_close(result["loss"], ref["loss"])
        assert_close(result["emb_grad"], ref["emb_grad"][rank * n : (rank + 1) * n])
        assert_close(result["weight_grad"], ref["weight_grad"][:, start:stop])
        assert torch.equal(result["index"], torch.arange(stop - start))


@pytest.mark.parametrize("name", ["exact", "targets_on_rank0_only"])
def test_sharded_loss_and_gradients_equal_pml(gloo_ranks: list[dict[str, Any]], name: str) -> None:
    check_exact(gloo_ranks, name)


def check_sampled(ranks: list[dict[str, Any]], name: str) -> torch.Tensor:
    """Sampled columns hold every positive; loss and gradients equal PML on those columns only."""
    num_classes, labels, rate = SCENARIOS[name]
    starts = [shard_range(num_classes, WORLD, r)[0] for r in range(WORLD)]
    local_sizes = [b - a for a, b in (shard_range(num_classes, WORLD, r) for r in range(WORLD))]
    columns = torch.cat([r[name]["index"] + start for r, start in zip(ranks, starts, strict=True)])
    assert set(labels) <= set(columns.tolist())
    for rank, result in enumerate(r[name] for r in ranks):
        positives = {label - starts[rank] for label in labels if 0 <= label - starts[rank] < local_sizes[rank]}
        expected_size = max(len(positives), max(1, int(rate * local_sizes[rank])))
        assert result["index"].numel() == expected_size
        assert torch.equal(result["index"], result["index"].unique())  # sorted, no repeats
        assert torch.equal(result["index_again"], result["index"])  # same step, same draw
    ref = reference(name, columns)
    n = len(labels) // WORLD
    for rank, result in enumerate(r[name] for r in ranks):
        assert_close(result["loss"], ref["loss"])
        assert_close(result["emb_grad"], ref["emb_grad"][rank * n : (rank + 1) * n])
        expected = torch.zeros(DIM, local_sizes[rank], dtype=torch.float64)
        mine = (columns >= starts[rank]) & (columns < starts[rank] + local_sizes[rank])
        expected[:, columns[mine] - starts[rank]] = ref["weight_grad"][:, mine]
        assert_close(result["weight_grad"], expected)  # zero on every column not sampled
    return columns


def test_sampling_keeps_positives_and_equals_loss_on_sampled_columns(gloo_ranks: list[dict[str, Any]]) -> None:
    columns = check_sampled(gloo_ranks, "sampled")
    assert columns.numel() == 10  # 5 a rank: 3 positive classes and 2 negatives each


def test_sampling_with_more_positives_than_the_rate_keeps_exactly_the_positives(
    gloo_ranks: list[dict[str, Any]],
) -> None:
    columns = check_sampled(gloo_ranks, "sampled_positives_only")
    assert columns.tolist() == sorted(set(SCENARIOS["sampled_positives_only"][1]))


def test_gathered_weight_is_the_full_matrix_on_every_rank(gloo_ranks: list[dict[str, Any]]) -> None:
    for name, (num_classes, labels, _) in SCENARIOS.items():
        full = batch(num_classes, len(labels), labels, seed=len(name))["weight"]
        for result in gloo_ranks:
            assert torch.equal(result[name]["gathered"], full)


def test_bad_batches_fail_on_every_rank_with_a_message(gloo_ranks: list[dict[str, Any]]) -> None:
    for result in gloo_ranks:
        assert result["label_out_of_range"] == ("labels [11] are outside [0, 11): check the dataset's classes")
        assert result["uneven_batches"] == "ranks sent batches of [2, 3] rows: use one batch size"


def test_the_gathered_weight_saves_and_loads_in_the_one_gpu_format(
    gloo_ranks: list[dict[str, Any]], tmp_path: Path
) -> None:
    """What rank 0 gathers is the arcface.pt of a 1-GPU run: `load_trained` takes it unchanged."""
    num_classes = SCENARIOS["exact"][0]
    kwargs = {"in_channels": 1, "input_size": 32, "embedding_size": DIM, "base_width": 8}
    config = model_config(kwargs, 32)
    gathered = gloo_ranks[0]["exact"]["gathered"]
    names = [f"id{c}" for c in range(num_classes)]
    save_trained(tmp_path, create_backbone("se_resnet18", **kwargs), gathered, config, names)
    _, weight, loaded = load_trained(tmp_path)
    assert torch.equal(weight, gathered) and weight.shape == (DIM, num_classes)
    assert loaded["num_classes"] == num_classes and loaded["class_names"] == names
    expected = split_columns(batch(num_classes, 12, SCENARIOS["exact"][1], seed=len("exact"))["weight"], WORLD)
    assert all(torch.equal(a, b) for a, b in zip(reshard([weight], WORLD), expected, strict=True))


def test_a_two_rank_checkpoint_resharded_to_one_rank_gives_the_same_loss() -> None:
    """2 -> 1: shards joined into the 1-GPU W; a world-size-1 loss on it equals PML."""
    name = "exact"
    num_classes, labels, _ = SCENARIOS[name]
    data = batch(num_classes, len(labels), labels, seed=len(name))
    shards = split_columns(data["weight"], WORLD)
    (single,) = reshard(shards, 1)
    assert torch.equal(single, data["weight"])
    emb = data["emb"].clone().requires_grad_(True)
    loss, index = PartialFCLoss(num_classes, DIM, weight=single)(emb, data["labels"])
    loss.backward()
    ref = reference(name)
    assert_close(loss.detach(), ref["loss"])
    assert emb.grad is not None
    assert_close(emb.grad, ref["emb_grad"])
    assert torch.equal(index, torch.arange(num_classes))


def test_shard_ranges_give_the_remainder_to_the_first_ranks() -> None:
    assert [shard_range(11, 2, r) for r in range(2)] == [(0, 6), (6, 11)]
    assert [shard_range(11, 3, r) for r in range(3)] == [(0, 4), (4, 8), (8, 11)]
    assert [shard_range(12, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    with pytest.raises(ShardError, match="3 classes cannot be sharded over 4 ranks"):
        shard_range(3, 4, 0)


def test_reshard_round_trips_exactly() -> None:
    full = torch.randn(DIM, 11, generator=torch.Generator().manual_seed(1))
    two = reshard([full], 2)  # 1 -> 2
    assert [tuple(s.shape) for s in two] == [(DIM, 6), (DIM, 5)]
    assert torch.equal(two[0], full[:, :6]) and torch.equal(two[1], full[:, 6:])
    assert torch.equal(join_columns(two), full)  # 2 -> 1
    three = reshard(two, 3)
    assert [s.shape[1] for s in three] == [4, 4, 3]
    assert all(torch.equal(a, b) for a, b in zip(reshard(three, 2), two, strict=True))
    with pytest.raises(ShardError, match="shard 0 has 5 columns, expected 6 of 11 over 2 ranks"):
        join_columns([two[1], two[0]])


def test_column_sgd_step_equals_torch_sgd_on_the_sampled_columns_and_leaves_the_rest() -> None:
    gen = torch.Generator().manual_seed(2)
    weight, buf = torch.randn(DIM, 9, generator=gen), torch.zeros(DIM, 9)
    index = torch.tensor([1, 4, 8])
    sub = torch.nn.Parameter(weight[:, index].clone())
    sgd = torch.optim.SGD([sub], lr=0.1, momentum=0.9, weight_decay=5e-4)
    before = weight.clone()
    for _ in range(3):
        grad = torch.zeros(DIM, 9)
        grad[:, index] = torch.randn(DIM, 3, generator=gen)
        sub.grad = grad[:, index].clone()
        sgd.step()
        sgd_step_columns_(weight, grad, buf, index, lr=0.1, momentum=0.9, weight_decay=5e-4)
    torch.testing.assert_close(weight[:, index], sub.detach(), rtol=0, atol=1e-6)
    rest = torch.tensor([0, 2, 3, 5, 6, 7])
    assert torch.equal(weight[:, rest], before[:, rest]) and torch.equal(buf[:, rest], torch.zeros(DIM, 6))


def test_bad_sample_rate_and_shard_shape_are_refused() -> None:
    with pytest.raises(PartialFCError, match=r"sample_rate must be in \(0, 1\], got 0.0"):
        PartialFCLoss(10, DIM, sample_rate=0.0)
    with pytest.raises(PartialFCError, match=r"its weight must be \(8, 10\), got \(8, 9\)"):
        PartialFCLoss(10, DIM, weight=torch.zeros(DIM, 9))
    with pytest.raises(PartialFCError, match="rank 0 sent an empty batch"):
        PartialFCLoss(10, DIM)(torch.zeros(0, DIM), torch.zeros(0, dtype=torch.long))
    with pytest.raises(PartialFCError, match=r"each rank needs \(n, 8\) embeddings and n labels"):
        PartialFCLoss(10, DIM)(torch.zeros(3, DIM + 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(PartialFCError, match="rank 0 sent embeddings of 0 dims, width 0, with 1 labels for 0 rows"):
        PartialFCLoss(10, DIM)(torch.tensor(1.0), torch.tensor(3))
    assert math.isclose(PartialFCLoss(10, DIM).margin, math.radians(28.6))


@pytest.mark.gpu
def test_nccl_ranks_on_two_gpus_equal_pml(tmp_path: Path) -> None:
    """The same scenarios on 2 CUDA devices with NCCL, compared with PML in float64 on the CPU."""
    if torch.cuda.device_count() < WORLD or not dist.is_nccl_available():
        pytest.skip(f"needs {WORLD} CUDA devices and NCCL (found {torch.cuda.device_count()} devices)")
    ranks = spawn(tmp_path, "nccl", "cuda")
    check_exact(ranks, "exact")
    check_exact(ranks, "targets_on_rank0_only")
    check_sampled(ranks, "sampled")
    check_sampled(ranks, "sampled_positives_only")
