"""Benchmark of multi-rank ArcFace training: samples/s of 1 and N ranks at the same per-rank batch.

    python bench/ddp.py [--quick] [--json PATH] [--device cpu|cuda] [--ranks N] [--backbone NAME]

Runs `ml.arcface.ddp.train_embedding_ddp` (the `train_embedding` job's multi-rank path: spawned
ranks, DDP backbone, sharded partial-FC head) on random images of --classes identities, once with
1 rank and once with N, each rank taking --batch images a step (so N ranks train on N x --batch a
step). Throughput is the global samples a second over the steps after the first --warmup, from
the progress times rank 0 reports (spawn, data preparation and evaluation are excluded).
`scaling_efficiency` = samples/s of N ranks / (N x samples/s of 1 rank): 1.0 is perfect scaling.

On the CPU (gloo, --threads torch threads a rank) it shows that the path is correct and what the
collectives cost; on a host with N GPUs (NCCL, one GPU a rank) it measures the real scaling, with
`--backbone iresnet50 --image-size 112 --batch 128` as in insightface's arcface_torch. `--quick`:
a narrow se_resnet18 at 16x16, a few steps (about a minute on 2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from bench.common import cpu_name  # noqa: E402
from ml.arcface.config import TrainConfig  # noqa: E402
from ml.arcface.ddp import DistributedOptions, train_embedding_ddp  # noqa: E402
from ml.core.callbacks import LocalCallbacks  # noqa: E402
from ml.data import ImageDataset  # noqa: E402


class TimedCallbacks(LocalCallbacks):
    """LocalCallbacks that note when each step's progress arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def progress(self, step: int, total: int, **metrics: float) -> None:
        self.times.append(time.perf_counter())
        super().progress(step, total, **metrics)


def synthetic(classes: int, per_class: int, size: int, channels: int) -> ImageDataset:
    gen = torch.Generator().manual_seed(0)
    n = classes * per_class
    images = torch.rand(n, channels, size, size, generator=gen)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return ImageDataset(images, labels, [str(i) for i in range(classes)], source="synthetic")


def measure(args: argparse.Namespace, ranks: int) -> dict[str, Any]:
    steps = args.warmup + args.steps
    per_class = max(4, -(-steps * args.batch * ranks // args.classes) * 2)  # 2x: half is held out
    data = synthetic(args.classes, per_class, args.image_size, 3 if args.device == "cuda" else 1)
    config = TrainConfig(
        backbone=args.backbone, backbone_kwargs={"base_width": args.width}, embedding_size=64 if args.quick else 512,
        image_size=args.image_size, epochs=1, batch_size=args.batch * ranks, split_by="sample", test_fraction=0.5,
        max_pairs=100, folds=2, max_train_samples=steps * args.batch * ranks,
    )  # fmt: skip
    cb = TimedCallbacks()
    started = time.perf_counter()
    opts = DistributedOptions(world_size=ranks, device_type=args.device, threads=args.threads, timeout_s=300)
    train_embedding_ddp(data, config, cb, opts)
    wall = time.perf_counter() - started
    t = cb.times[args.warmup - 1 :]
    rate = (len(t) - 1) * args.batch * ranks / (t[-1] - t[0])
    return {"ranks": ranks, "steps": len(cb.times), "samples_per_s": rate, "samples_per_s_per_rank": rate / ranks,
            "wall_s": wall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a narrow se_resnet18 at 16x16, few steps")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ranks", type=int, default=2, help="N (GPUs on cuda)")
    parser.add_argument("--backbone", default=None, help="default: iresnet50 on cuda, se_resnet18 on cpu")
    parser.add_argument("--width", type=int, default=None, help="base width (default 64; quick 8)")
    parser.add_argument("--image-size", type=int, default=None, help="default 112 on cuda, 32 on cpu, 16 quick")
    parser.add_argument("--batch", type=int, default=None, help="images a rank a step (default 128 cuda, 32 cpu)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30, quick 8)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads a rank on the CPU")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.backbone = args.backbone or ("iresnet50" if cuda else "se_resnet18")
    args.width = args.width or (8 if args.quick else 64)
    args.image_size = args.image_size or (16 if args.quick else 112 if cuda else 32)
    args.batch = args.batch or (128 if cuda else 32)
    args.steps = args.steps or (8 if args.quick else 30)
    one, many = measure(args, 1), measure(args, args.ranks)
    efficiency = many["samples_per_s"] / (args.ranks * one["samples_per_s"])
    print(f"{args.backbone} w{args.width} {args.image_size}px, {args.batch} a rank, {args.device}")
    print(f"{'ranks':>5} {'samples/s':>10} {'per rank':>9} {'wall s':>7}")
    for row in (one, many):
        rate, per_rank = row["samples_per_s"], row["samples_per_s_per_rank"]
        print(f"{row['ranks']:>5} {rate:>10.1f} {per_rank:>9.1f} {row['wall_s']:>7.1f}")
    print(f"scaling_efficiency {efficiency:.3f}")
    figures = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": torch.cuda.get_device_name(0) if cuda else cpu_name(),
        "device": args.device, "backbone": args.backbone, "width": args.width, "image_size": args.image_size,
        "batch_per_rank": args.batch, "classes": args.classes, "quick": args.quick, "threads": args.threads,
        "one_rank": one, "n_ranks": many, "scaling_efficiency": efficiency,
    }  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
