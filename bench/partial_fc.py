"""Benchmark of sharded ArcFace (partial FC) against the single-process full FC: memory and step time.

    python bench/partial_fc.py [--quick] [--json PATH] [--device cpu|cuda] [--threads N] [--sample-rate R]

For C = 10k, 100k and 1M classes at d = 512, one ArcFace training step (loss, backward, SGD with
momentum 0.9) on a global batch of --batch random embeddings, two ways, in one run:

- `full`: one process, pytorch-metric-learning's `ArcFaceLoss` (W of d x C) and `torch.optim.SGD`;
- `sharded`: 2 ranks (`torch.distributed`, gloo on the CPU, NCCL on 2 GPUs), `ml.arcface.PartialFCLoss`,
  each rank holding C/2 columns of W and their momentum, batch/2 embeddings a rank.

Every configuration runs in fresh processes (spawned), so one's memory does not count in another's.
Memory per rank, two figures:

- `state_bytes`: bytes of the storages actually allocated for W, its gradient and its momentum
  buffer after the steps (what grows with C and what sharding divides); `memory_ratio_1M` is the
  sharded rank 0's `state_bytes` / the full process's at C = 1M (ideal 0.5, target <= 0.55);
- `peak_bytes`: on the CPU the process's peak RSS (`ru_maxrss`) minus its RSS just before W was
  allocated (after a tiny warm-up step has loaded the kernels), so also each implementation's
  transient (batch x C) tensors kept for backward; on CUDA `max_memory_allocated`.

`--quick` measures C = 10k and 100k and computes the 1M row's `state_bytes` as 3 x d x C_rank x 4
bytes (W, gradient, momentum in fp32; the measured rows check that formula), without allocating
the 6 GiB a full 1M step needs; without `--quick` the 1M rows are measured too (about 9 GiB peak
for `full`, 4.5 GiB a rank for `sharded`). Step time is the median over --steps steps after one
warm-up step; for `sharded` each step counts its slowest rank. With `--threads N` the full process
gets 2N threads and each rank N, so both use the same cores. Prints a table and writes every
printed figure to --json.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any, cast  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from pytorch_metric_learning.losses import ArcFaceLoss  # noqa: E402

from bench.common import cpu_name, sync  # noqa: E402
from ml.arcface.partial_fc import PartialFCLoss  # noqa: E402
from ml.arcface.shards import sgd_step_columns_, shard_range  # noqa: E402

DIM = 512
WORLD = 2
CLASSES = (10_000, 100_000, 1_000_000)
FP32_BYTES = 4
DEADLINE_S = 1800


def rss_bytes() -> int:
    """The process's resident set size now."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def storage_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the distinct storages behind `tensors` (a view of another counts once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def warm_up(mode: str, device: torch.device, world: int) -> None:
    """A tiny step of the same loss first, so loading kernels and thread pools is not counted."""
    emb = torch.randn(4, DIM, device=device, requires_grad=True)
    labels = torch.arange(4, device=device) % (4 * world)
    if mode == "full":
        ArcFaceLoss(num_classes=4, embedding_size=DIM).to(device)(emb, labels).backward()
    else:
        PartialFCLoss(4 * world, DIM, device=device)(emb, labels).loss.backward()


def run_case(rank: int, out: str, mode: str, classes: int, args: dict[str, Any]) -> None:
    """One process of one configuration (`full`: the only one; `sharded`: rank `rank` of 2)."""
    world = WORLD if mode == "sharded" else 1
    torch.set_num_threads(args["threads"] * (WORLD if mode == "full" else 1))
    device = torch.device(args["device"], rank) if args["device"] == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=f"file://{out}/store-{mode}-{classes}",
            world_size=world,
            rank=rank,
            timeout=datetime.timedelta(seconds=600),
        )
    gen = torch.Generator().manual_seed(rank)
    rows = args["batch"] // world
    emb = torch.randn(rows, DIM, generator=gen).to(device).requires_grad_(True)
    labels = torch.randint(0, classes, (rows,), generator=gen).to(device)
    warm_up(mode, device, world)
    baseline = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    buffer: torch.Tensor | None = None
    if mode == "full":
        loss_fn: torch.nn.Module = ArcFaceLoss(num_classes=classes, embedding_size=DIM).to(device)
        weight = cast(torch.nn.Parameter, loss_fn.W)
    else:
        loss_fn = PartialFCLoss(classes, DIM, sample_rate=args["sample_rate"], device=device)
        weight = cast(torch.nn.Parameter, loss_fn.weight)
    optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    if mode == "sharded" and args["sample_rate"] < 1.0:
        buffer = torch.zeros_like(weight)

    def step(i: int) -> None:
        emb.grad = None
        weight.grad = None
        if mode == "full":
            loss_fn(emb, labels).backward()
            optimizer.step()
            return
        loss, columns = loss_fn(emb, labels, step=i)
        loss.backward()
        if buffer is None:
            optimizer.step()
        else:
            assert weight.grad is not None
            sgd_step_columns_(weight.data, weight.grad, buffer, columns, lr=0.1, momentum=0.9)

    times = []
    for i in range(args["steps"] + 1):
        if world > 1:
            dist.barrier()
        sync(device)
        start = time.perf_counter()
        step(i)
        sync(device)
        times.append(time.perf_counter() - start)
    state = [optimizer.state[weight].get("momentum_buffer"), buffer]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline)
    result = {
        "state_bytes": storage_bytes(weight, weight.grad, *state),
        "peak_bytes": peak,
        "columns": int(weight.shape[1]),
        "step_seconds": times[1:],
    }
    Path(out, f"{mode}-{classes}-{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def measure(out: Path, mode: str, classes: int, args: dict[str, Any]) -> dict[str, Any]:
    """Spawn the processes of one configuration and fold their results into one row."""
    nprocs = WORLD if mode == "sharded" else 1
    ctx = mp.start_processes(run_case, args=(str(out), mode, classes, args), nprocs=nprocs, join=False)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{mode} C={classes} still running after {DEADLINE_S} s")
    finally:
        for process in ctx.processes:
            if process.is_alive():
                process.kill()
    ranks = [json.loads((out / f"{mode}-{classes}-{r}.json").read_text()) for r in range(nprocs)]
    slowest = [max(step) for step in zip(*(r["step_seconds"] for r in ranks), strict=True)]
    return {
        "mode": mode,
        "classes": classes,
        "ranks": nprocs,
        "measured": True,
        "columns_rank0": ranks[0]["columns"],
        "state_bytes": ranks[0]["state_bytes"],
        "peak_bytes": max(r["peak_bytes"] for r in ranks),
        "step_seconds": statistics.median(slowest),
        "step_seconds_all": slowest,
    }


def computed(mode: str, classes: int) -> dict[str, Any]:
    """A row whose state bytes are computed: W, gradient and momentum of rank 0's columns in fp32."""
    ranks = WORLD if mode == "sharded" else 1
    start, stop = shard_range(classes, ranks, 0)
    return {
        "mode": mode,
        "classes": classes,
        "ranks": ranks,
        "measured": False,
        "columns_rank0": stop - start,
        "state_bytes": 3 * DIM * (stop - start) * FP32_BYTES,
        "peak_bytes": None,
        "step_seconds": None,
        "step_seconds_all": [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="measure 10k and 100k, compute 1M's state bytes")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: needs 2 GPUs (NCCL)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads a rank (the full process: 2x)")
    parser.add_argument("--batch", type=int, default=128, help="global batch (each rank: half)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5, quick 3)")
    parser.add_argument(
        "--classes", type=int, nargs="+", default=list(CLASSES), help="class counts (default 10k 100k 1M)"
    )
    parser.add_argument("--sample-rate", type=float, default=1.0, help="partial FC's sampled fraction of columns")
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < WORLD:
        parser.error(f"--device cuda needs {WORLD} GPUs for the sharded ranks, found {torch.cuda.device_count()}")
    steps = args.steps or (3 if args.quick else 5)
    case_args = {
        "device": args.device,
        "threads": args.threads,
        "batch": args.batch,
        "steps": steps,
        "sample_rate": args.sample_rate,
    }
    rows = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-partial-fc-") as tmp:
        for classes in args.classes:
            for mode in ("full", "sharded"):
                if args.quick and classes >= CLASSES[-1]:
                    rows.append(computed(mode, classes))
                else:
                    rows.append(measure(Path(tmp), mode, classes, case_args))
    by = {(r["mode"], r["classes"]): r for r in rows}
    ratios = {str(c): by["sharded", c]["state_bytes"] / by["full", c]["state_bytes"] for c in args.classes}
    speed = {
        str(c): by["full", c]["step_seconds"] / by["sharded", c]["step_seconds"]
        for c in args.classes
        if by["full", c]["step_seconds"] and by["sharded", c]["step_seconds"]
    }
    formula_ok = all(r["state_bytes"] == computed(r["mode"], r["classes"])["state_bytes"] for r in rows)
    figures = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name(),
        "threads_per_rank": args.threads,
        "embedding_size": DIM,
        "global_batch": args.batch,
        "steps": steps,
        "sample_rate": args.sample_rate,
        "quick": args.quick,
        "rows": rows,
        "memory_ratio": ratios,
        "memory_ratio_1M": ratios.get(str(CLASSES[-1])),
        "speedup_full_over_sharded": speed,
        "state_bytes_formula_holds": formula_ok,
        "wall_seconds": time.monotonic() - began,
        "load_average": list(os.getloadavg()),
        "torch": torch.__version__,
    }
    print(
        f"bench/partial_fc.py on {args.device} ({figures['device_name']}), d={DIM}, global batch {args.batch}, "
        f"{steps} steps (median), {args.threads} thread(s) a rank, sample rate {args.sample_rate}"
    )
    print(f"  {'classes':>9} {'mode':<8} {'ranks':>5} {'cols/rank':>9} {'state MiB':>10} {'peak MiB':>9} {'step s':>8}")
    for r in rows:
        peak = f"{r['peak_bytes'] / 2**20:9.1f}" if r["peak_bytes"] is not None else f"{'-':>9}"
        step = f"{r['step_seconds']:8.3f}" if r["step_seconds"] is not None else f"{'-':>8}"
        mark = "" if r["measured"] else "  (computed)"
        print(
            f"  {r['classes']:>9} {r['mode']:<8} {r['ranks']:>5} {r['columns_rank0']:>9} "
            f"{r['state_bytes'] / 2**20:10.1f} {peak} {step}{mark}"
        )
    ratio_text = ", ".join(f"{c}: {r:.4f}" for c, r in ratios.items())
    print(f"  memory ratio (sharded rank-0 state bytes / full; 1M ideal 0.5, target <= 0.55): {ratio_text}")
    print(f"  state bytes = 3 x d x C_rank x 4 on every row: {formula_ok}")
    print(f"  step time full / sharded: {', '.join(f'{c}: {s:.2f}x' for c, s in speed.items())}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
