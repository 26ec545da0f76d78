"""How recognisable inverted MNIST digits are, as the iterations grow (run once, e.g. on a GPU).

    python bench/invert_quality.py --iterations 2000 [--model DIR] [--mnist DIR] [--device cpu|cuda] [--quick]
        [--images-per-class 4] [--eval-every 100] [--set key=value ...] [--sweep FILE] [--workers N]
        [--json PATH]

1. The model: `--model DIR` (a trained-model folder: backbone.pt, arcface.pt, config.json), or
   else se_resnet18 trained with ArcFace on MNIST with the recipe of `tests/ml/conftest.py`.
2. An independent reference classifier (LeNet-5: a different architecture, trained here on MNIST
   for a few epochs, never shown the inverted model).
3. `ml.invert.inversion` on every digit; at every checkpoint (`--eval-every`) the images are scored:
   (a) the fraction the inverted model assigns to their target class, and its mean target
   probability; (b) the fraction LeNet assigns to their target class.

`--set key=value` overrides `InversionConfig` fields (JSON values); `--sweep FILE` runs every
override dict of a JSON list (in `--workers` processes) and ranks them by (b); a dict may set
"iterations" too. Prints a line per finished run and writes every figure to the JSON after each
run; every scored checkpoint is also appended to `--work`/curve_<i>.jsonl as it happens, so a run
cut short by a time limit keeps its curve (point `--work` at a folder that comes back).

`--quick` checks that the whole path runs (a minute or two on a CPU), not the quality: the model
trains one epoch on 2,048 images, LeNet one epoch, and one image per digit is inverted for 100
iterations (unless --iterations, --images-per-class, --eval-every or --lenet-epochs say otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_device_arg, device_from, device_name
from ml.arcface.model import Normalization, load_trained
from ml.core.callbacks import LocalCallbacks
from ml.data import load_mnist
from ml.invert.inversion import InversionConfig, invert

# The recipe of tests/ml/conftest.py's `mnist_arcface` fixture.
RECIPE: dict[str, Any] = {
    "backbone": "se_resnet18",
    "backbone_kwargs": {"base_width": 16},
    "embedding_size": 128,
    "image_size": 32,
    "in_channels": 1,
    "scale": 32.0,
    "optimizer": "sgd",
    "lr": 0.1,
    "schedule": "cosine",
    "epochs": 12,
    "batch_size": 128,
    "augment_shift": 2,
    "split_by": "sample",
    "test_fraction": 0.25,
    "seed": 0,
}
DEFAULTS: dict[str, Any] = {"flip": False}  # mirrored digits are other glyphs


def lenet() -> nn.Module:
    """LeNet-5 for 32x32 grey images (inputs in [-1, 1])."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


def train_lenet(images: torch.Tensor, labels: torch.Tensor, epochs: int, device: torch.device) -> nn.Module:
    """LeNet trained on [0, 1] images (the first 7/8), seeded; returns it in eval mode."""
    torch.manual_seed(0)
    model = lenet().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = (images.to(device) - 0.5) / 0.5, labels.to(device)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx.to(device)]), y[idx.to(device)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class ScoringCallbacks(LocalCallbacks):
    """Scores the images of every checkpoint with the inverted model and the reference classifier."""

    def __init__(self, score: Any, log_path: Path) -> None:
        super().__init__()
        self.score = score
        self.curve: list[dict[str, float]] = []
        self.t0 = time.perf_counter()
        self.log_path = log_path

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        point = {"step": state["step"], "seconds": time.perf_counter() - self.t0, **self.score(state["images"])}
        self.curve.append(point)
        with self.log_path.open("a") as f:  # survives a run cut short
            f.write(json.dumps(point) + "\n")


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One inversion (in a worker process in sweeps): its curve of (a), (b) and the final figures."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    backbone, weight, config = load_trained(job["model"], device)
    norm = Normalization.from_json(config["normalize"])
    clf = lenet().to(device)
    clf.load_state_dict(torch.load(job["lenet"], map_location=device, weights_only=True))
    clf.eval()
    weight_n = F.normalize(weight.float(), dim=0)
    labels = torch.arange(weight.shape[1], device=device).repeat_interleave(job["images_per_class"])
    scale = float(config.get("scale") or 64.0)

    @torch.no_grad()
    def score(x_model: torch.Tensor) -> dict[str, float]:
        x_model = x_model.to(device)
        cos = F.normalize(backbone(x_model), dim=1) @ weight_n
        prob = torch.softmax(cos * scale, 1).gather(1, labels[:, None]).mean()
        pixels = norm.undo(x_model).clamp(0, 1)
        return {
            "a_accuracy": float((cos.argmax(1) == labels).float().mean()),
            "a_target_prob": float(prob),
            "b_lenet_accuracy": float((clf((pixels - 0.5) / 0.5).argmax(1) == labels).float().mean()),
        }

    overrides = {**DEFAULTS, **job["overrides"]}
    settings: dict[str, Any] = {
        "images_per_class": job["images_per_class"],
        "iterations": job["iterations"],
        "checkpoint_every": job["eval_every"],
        "preview_every": 0,
        "progress_every": max(job["eval_every"], 20),
        "margin_degrees": float(config.get("margin") or 28.6),
        "scale": scale,
        **overrides,
    }
    if "images_per_class" in overrides:
        labels = torch.arange(weight.shape[1], device=device).repeat_interleave(settings["images_per_class"])
    cfg = InversionConfig(**settings)
    log_path = Path(job["work"]) / f"curve_{job['index']}.jsonl"
    log_path.write_text(json.dumps({"overrides": overrides}) + "\n")
    cb = ScoringCallbacks(score, log_path)
    result = invert(backbone, weight, cfg, normalize=norm, device=device, callbacks=cb)
    final = score(norm.apply(result.images.to(device)))
    cb.curve.append({"step": result.step, "seconds": result.metrics["seconds"], **final})
    return {"overrides": overrides, "curve": cb.curve, "final": final, "seconds": result.metrics["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, 100 iterations: the path, not quality")
    parser.add_argument("--iterations", type=int, default=None, help="default 2000 (quick 100)")
    parser.add_argument("--images-per-class", type=int, default=None, help="default 4 (quick 1)")
    parser.add_argument("--eval-every", type=int, default=None, help="default 100 (quick 50)")
    parser.add_argument("--model", type=Path, help="trained model folder (default: train the test recipe)")
    parser.add_argument("--mnist", type=Path, default=None, help="MNIST IDX folder (default: the shared data)")
    add_device_arg(parser)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="InversionConfig override")
    parser.add_argument("--sweep", type=Path, help="JSON list of override dicts")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--lenet-epochs", type=int, default=None, help="default 8 (quick 1)")
    parser.add_argument("--work", type=Path, default=Path("bench/results/invert_quality"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    quick = {"iterations": 100, "images_per_class": 1, "eval_every": 50, "lenet_epochs": 1}
    full = {"iterations": 2000, "images_per_class": 4, "eval_every": 100, "lenet_epochs": 8}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    recipe = {**RECIPE, "epochs": 1, "max_train_samples": 2048} if args.quick else RECIPE
    device = device_from(args.device)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.mnist is None:
        from jobs.settings import get_settings

        args.mnist = get_settings().data_dir / "mnist"
    data = load_mnist(args.mnist, 32)
    n_train = len(data.labels) * 7 // 8

    t0 = time.perf_counter()
    model_dir = args.model
    if model_dir is None:
        from ml.arcface.train import TrainConfig, save_trained, train_embedding

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the fixture does: the trained model depends on the thread count
        try:
            trained = train_embedding(data, TrainConfig(**recipe), LocalCallbacks(), device=device)
        finally:
            torch.set_num_threads(threads)
        model_dir = args.work / "model"
        save_trained(model_dir, trained.backbone, trained.arcface_weight, trained.config, trained.class_names)
    model_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    clf = train_lenet(data.images[:n_train], data.labels[:n_train], args.lenet_epochs, device)
    with torch.no_grad():
        held = (data.images[n_train:].to(device) - 0.5) / 0.5
        lenet_acc = float((clf(held).argmax(1).cpu() == data.labels[n_train:]).float().mean())
    lenet_path = args.work / "lenet.pt"
    torch.save(clf.state_dict(), lenet_path)
    lenet_seconds = time.perf_counter() - t0

    sweeps = json.loads(args.sweep.read_text()) if args.sweep else [{}]
    fixed = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    threads = max(1, torch.get_num_threads() // max(1, args.workers))
    jobs = [
        {
            "model": str(model_dir), "lenet": str(lenet_path), "device": args.device, "threads": threads,
            "images_per_class": args.images_per_class, "iterations": args.iterations,
            "eval_every": args.eval_every, "overrides": {**fixed, **o}, "work": str(args.work), "index": i,
        }
        for i, o in enumerate(sweeps)
    ]  # fmt: skip
    print(
        f"model: {model_dir} ({model_seconds:.0f} s); LeNet held-out accuracy {lenet_acc:.4f} ({lenet_seconds:.0f} s)"
    )
    payload: dict[str, Any] = {
        "benchmark": "invert_quality",
        "device": args.device,
        "device_name": device_name(device),
        "quick": args.quick,
        "iterations": args.iterations,
        "images_per_class": args.images_per_class,
        "lenet_heldout_accuracy": lenet_acc,
        "model_seconds": model_seconds,
        "lenet_seconds": lenet_seconds,
        "runs": [],
    }
    runs: list[dict[str, Any]] = payload["runs"]
    with ProcessPoolExecutor(max(1, args.workers), mp_context=get_context("spawn")) as pool:
        for run in (f.result() for f in as_completed([pool.submit(run_one, j) for j in jobs])):
            f = run["final"]
            run["first_step_b_ge_0.8"] = next((c["step"] for c in run["curve"] if c["b_lenet_accuracy"] >= 0.8), None)
            print(
                f"{json.dumps(run['overrides']):70.70} (a) {f['a_accuracy']:.3f} p={f['a_target_prob']:.3f} "
                f"(b) {f['b_lenet_accuracy']:.3f}  b>=0.8 at {run['first_step_b_ge_0.8']}  {run['seconds']:.0f}s"
            )
            runs.append(run)
            if args.json:  # after every run, so a cut-short sweep keeps what finished
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(payload, indent=2))
    runs.sort(key=lambda r: -r["final"]["b_lenet_accuracy"])
    best = runs[0]
    print("ranked by (b); curve of the best (step:(a)/(b)):")
    print(" ".join(f"{c['step']}:{c['a_accuracy']:.2f}/{c['b_lenet_accuracy']:.2f}" for c in best["curve"]))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
