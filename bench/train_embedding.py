"""Benchmark of ArcFace training through the job path against the same loop written plainly.

    python bench/train_embedding.py [--quick] [--json PATH] [--backbone NAME ...] [--threads N]

Data: the shared MNIST folder (8,000 images; `settings.data_dir`/mnist) at 32x32 grey, or sklearn's
digits upsampled to 32x32 where it is missing. Both paths train the same network (`ml.backbones`,
base width 16 by default, 128-d), with pytorch-metric-learning's ArcFaceLoss (margin 28.6 deg, scale
64), SGD (lr 0.1, momentum 0.9, weight decay 5e-4, W in the same optimizer), a cosine schedule per
epoch, batch 128, no augmentation, on the same training images (the seeded 75% split by sample,
capped at --samples):

- `plain`: the loop below: build model, loss and optimizer, normalise the images once, shuffle,
  forward/backward/step, `loss.item()` per step, one `torch.save` of the model and W at the end;
  no checkpoints, no progress reports, no platform;
- `platform`: `ml.arcface.train.train_embedding` called with a real `workers.context.JobContext`
  (an embedded-stack SQLite database and local store in a temporary folder, a claimed job, the
  worker's heartbeat thread renewing the lease): config and data validation, the split, per-step
  progress (throttled database writes) with training accuracy, a full checkpoint (model, W,
  optimizer, scheduler, RNG) written to the store and recorded in the job row after every epoch.
  Timed from the call to the return of the last epoch's checkpoint (the held-out evaluation that
  follows is not training and is left out).

Runs alternate (plain, platform, plain, ...) and each path's best of --repeats counts, so a
neighbour's load on a shared machine hurts both alike. `overhead_ratio` = platform seconds / plain
seconds (wall clock) summed over the backbones (target < 1.05); per backbone too.
`overhead_ratio_cpu` is the same ratio of process CPU seconds (every thread, the heartbeat's
too), which a crowded machine barely moves: where the wall ratio swings from run to run, it says
whether the platform does extra work. On a shared CPU pass `--threads 1`: two OpenMP threads that
wait on each other make a small network many times slower and the timings meaningless. Prints a
table and writes every printed figure to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from pytorch_metric_learning.losses import ArcFaceLoss

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import add_device_arg, device_from, device_name, sync  # noqa: E402
from ml.arcface.train import TrainConfig, train_embedding  # noqa: E402
from ml.backbones import create_backbone  # noqa: E402
from ml.data import ImageDataset, load_digits, load_mnist, make_split  # noqa: E402

BACKBONES = ("se_resnet18", "iresnet18")
SIDE, EMBEDDING, BATCH, SEED = 32, 128, 128, 0


def load_data() -> ImageDataset:
    """MNIST from the shared data folder at 32x32, or sklearn's digits where it is missing."""
    try:
        from jobs.settings import get_settings

        mnist = Path(get_settings().data_dir) / "mnist"
    except Exception:  # the bench also runs where only `ml` and its packages are installed
        mnist = ROOT.parent / "shared" / "data" / "mnist"
    if mnist.exists():
        return load_mnist(mnist, SIDE)
    print(f"(no MNIST at {mnist}: using builtin:digits)")
    return load_digits(SIDE)


def make_config(backbone: str, base_width: int, epochs: int, samples: int) -> TrainConfig:
    return TrainConfig(
        backbone=backbone,
        backbone_kwargs={"base_width": base_width},
        embedding_size=EMBEDDING,
        image_size=SIDE,
        in_channels=1,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        epochs=epochs,
        batch_size=BATCH,
        split_by="sample",
        test_fraction=0.25,
        seed=SEED,
        max_train_samples=samples,
        max_pairs=200,
    )


def train_images(dataset: ImageDataset, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The training images and labels `train_embedding` uses for `config` (same split, same cap)."""
    import numpy as np

    idx = make_split(dataset.labels, config.split_by, config.test_fraction, config.seed).train
    cap = config.max_train_samples
    if cap is not None and idx.numel() > cap:
        pick = np.random.default_rng(config.seed).choice(idx.numel(), cap, replace=False)
        idx = idx[torch.from_numpy(np.sort(pick))]
    sub = dataset.subset(idx, relabel=True)
    return sub.images, sub.labels, sub.num_classes


def plain_run(
    images: torch.Tensor, labels: torch.Tensor, classes: int, config: TrainConfig, device: torch.device, out: Path
) -> tuple[float, float]:
    """The plain script: (wall, CPU) seconds from building the model to the saved model."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    torch.manual_seed(config.seed)
    model = create_backbone(
        config.backbone,
        embedding_size=config.embedding_size,
        in_channels=1,
        input_size=SIDE,
        **config.backbone_kwargs,
    ).to(device)
    loss_fn = ArcFaceLoss(classes, config.embedding_size, margin=config.margin, scale=config.scale).to(device)
    opt = torch.optim.SGD(
        [{"params": model.parameters()}, {"params": loss_fn.parameters()}],
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    x = ((images - 0.5) / 0.5).to(device)
    y = labels.to(device)
    n = x.shape[0]
    losses = []
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(n, device=device)
        for i in range(n // config.batch_size):
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
    torch.save({"model": model.state_dict(), "W": loss_fn.W.detach().cpu()}, out / "plain.pt")
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def platform_run(dataset: ImageDataset, config: TrainConfig, device: torch.device, home: Path) -> dict[str, Any]:
    """`train_embedding` with a real JobContext of a claimed job; seconds to the last checkpoint."""
    from jobs.db import session_scope
    from jobs.keys import create_key
    from jobs.migrate import upgrade
    from jobs.models import Job
    from jobs.params.embedding import TrainEmbeddingParams
    from jobs.settings import Settings
    from jobs.states import claim
    from jobs.store import LocalStore
    from workers.context import JobContext
    from workers.heartbeat import renewing
    from workers.runner import worker_identity

    home.mkdir(parents=True, exist_ok=True)
    settings = Settings(home=home, database_url="", store_backend="local", env="dev")
    db = settings.resolved_database_url
    upgrade(db)
    params = TrainEmbeddingParams(
        dataset="builtin:mnist",
        backbone=config.backbone,
        base_width=int(config.backbone_kwargs["base_width"]),
        embedding_size=config.embedding_size,
        image_size=SIDE,
        epochs=config.epochs,
        batch_size=config.batch_size,
        split_by="sample",
        max_train_samples=config.max_train_samples,
        seed=config.seed,
    )
    node, owner = worker_identity("bench@local")
    with session_scope(db) as s:
        key, _ = create_key(s, "bench", settings)
        job = Job(kind="train_embedding", params=params.model_dump(), queue="gpu", owner_id=key.id)
        s.add(job)
        s.flush()
        attempt = claim(s, job.id, owner, settings.lease_seconds)
        assert attempt == 1
        s.expunge(job)
    workdir = home / "work"
    workdir.mkdir(exist_ok=True)
    ctx = JobContext(job, attempt, owner, params, settings, LocalStore(settings.resolved_store_dir), device, workdir)
    saved: list[tuple[float, float]] = []
    save = ctx.save_checkpoint

    def timed_save(state: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        save(state)
        saved.append((time.perf_counter(), time.process_time()))
        checkpoint_seconds.append(saved[-1][0] - t0)

    checkpoint_seconds: list[float] = []
    ctx.save_checkpoint = timed_save  # type: ignore[method-assign]
    with renewing(ctx, node):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = train_embedding(dataset, config, callbacks=ctx, device=device)
    with session_scope(db) as s:
        row = s.get(Job, job.id)
        assert row is not None and row.checkpoint_step == config.epochs, "the job row lacks the last checkpoint"
    return {
        "seconds": saved[-1][0] - start,
        "cpu_seconds": saved[-1][1] - cpu_start,
        "checkpoint_seconds": sum(checkpoint_seconds) / len(checkpoint_seconds),
        "final_train_loss": result.history[-1]["loss"],
    }


def bench_backbone(
    dataset: ImageDataset, backbone: str, args: argparse.Namespace, device: torch.device, tmp: Path
) -> dict[str, Any]:
    config = make_config(backbone, args.base_width, args.epochs, args.samples)
    images, labels, classes = train_images(dataset, config)
    n = images.shape[0]
    trained = (n // BATCH) * BATCH * config.epochs  # both loops drop the last partial batch
    # Warm-up: a one-epoch, few-step plain run (thread pools, allocator, first-call kernels).
    warm = make_config(backbone, args.base_width, 1, 2 * BATCH)
    plain_run(images[: 2 * BATCH], labels[: 2 * BATCH], classes, warm, device, tmp)
    plain_s: list[float] = []
    platform_s: list[float] = []
    plain_cpu: list[float] = []
    platform_cpu: list[float] = []
    extra: dict[str, Any] = {}
    for r in range(args.repeats):
        wall, cpu = plain_run(images, labels, classes, config, device, tmp)
        plain_s.append(wall)
        plain_cpu.append(cpu)
        out = platform_run(dataset, config, device, tmp / f"{backbone}-{r}")
        platform_s.append(out["seconds"])
        platform_cpu.append(out["cpu_seconds"])
        extra = out
    plain, plat = min(plain_s), min(platform_s)
    return {
        "backbone": backbone,
        "base_width": args.base_width,
        "train_images": n,
        "epochs": config.epochs,
        "samples_trained": trained,
        "plain_seconds": plain,
        "platform_seconds": plat,
        "plain_seconds_all": plain_s,
        "platform_seconds_all": platform_s,
        "plain_samples_per_s": trained / plain,
        "platform_samples_per_s": trained / plat,
        "overhead_ratio": plat / plain,
        "plain_cpu_seconds": min(plain_cpu),
        "platform_cpu_seconds": min(platform_cpu),
        "plain_cpu_seconds_all": plain_cpu,
        "platform_cpu_seconds_all": platform_cpu,
        "overhead_ratio_cpu": min(platform_cpu) / min(plain_cpu),
        "checkpoint_seconds": extra["checkpoint_seconds"],
        "final_train_loss": extra["final_train_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,048 images, 1 epoch, 1 repeat (about a minute)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--backbone", action="append", choices=BACKBONES, help="default: both")
    add_device_arg(parser)
    parser.add_argument("--base-width", type=int, default=16, help="first-stage width (64 in the papers)")
    parser.add_argument("--samples", type=int, default=None, help="training images (default 6000, quick 2048)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 2, quick 1)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each path (default 2, quick 1)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default torch's; 1 on a crowded machine)"
    )
    args = parser.parse_args()
    args.samples = args.samples or (2048 if args.quick else 6000)
    args.epochs = args.epochs or (1 if args.quick else 2)
    args.repeats = args.repeats or (1 if args.quick else 2)
    device = device_from(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("FACEJOBS_ENV", "dev")
    dataset = load_data()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_backbone(dataset, b, args, device, Path(tmp)) for b in args.backbone or BACKBONES]
    plain_total = sum(r["plain_seconds"] for r in rows)
    platform_total = sum(r["platform_seconds"] for r in rows)
    plain_cpu = sum(r["plain_cpu_seconds"] for r in rows)
    platform_cpu = sum(r["platform_cpu_seconds"] for r in rows)
    figures = {
        "benchmark": "train_embedding",
        "device": str(device),
        "device_name": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "dataset": dataset.source,
        "image_size": [SIDE, SIDE],
        "batch_size": BATCH,
        "embedding_size": EMBEDDING,
        "quick": args.quick,
        "repeats": args.repeats,
        "plain_seconds": plain_total,
        "platform_seconds": platform_total,
        "overhead_ratio": platform_total / plain_total,
        "plain_cpu_seconds": plain_cpu,
        "platform_cpu_seconds": platform_cpu,
        "overhead_ratio_cpu": platform_cpu / plain_cpu,
        "load_average": list(os.getloadavg()),
        "rows": rows,
        "torch": torch.__version__,
    }
    print(
        f"bench/train_embedding.py on {figures['device']} ({figures['device_name']}, {figures['torch_threads']} "
        f"threads), {dataset.source} {SIDE}x{SIDE}, batch {BATCH}, best of {args.repeats}"
    )
    print(
        f"  {'backbone':<12} {'width':>5} {'images':>6} {'epochs':>6} {'plain s':>8} {'plain img/s':>11} "
        f"{'platform s':>10} {'platform img/s':>14} {'ratio':>6} {'cpu ratio':>9} {'ckpt ms':>8}"
    )
    for r in rows:
        print(
            f"  {r['backbone']:<12} {r['base_width']:>5} {r['train_images']:>6} {r['epochs']:>6} "
            f"{r['plain_seconds']:8.2f} {r['plain_samples_per_s']:11.1f} {r['platform_seconds']:10.2f} "
            f"{r['platform_samples_per_s']:14.1f} {r['overhead_ratio']:6.3f} {r['overhead_ratio_cpu']:9.3f} "
            f"{r['checkpoint_seconds'] * 1e3:8.1f}"
        )
    print(
        f"  overhead_ratio (platform / plain seconds, all backbones): {figures['overhead_ratio']:.3f} "
        f"({platform_total:.2f} s / {plain_total:.2f} s; target < 1.05)"
    )
    print(
        f"  overhead_ratio_cpu (process CPU seconds, blind to neighbours' load): {figures['overhead_ratio_cpu']:.3f} "
        f"({platform_cpu:.2f} s / {plain_cpu:.2f} s); load average {figures['load_average'][0]:.1f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
