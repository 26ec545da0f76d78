"""Benchmark of latent recovery: four methods on the same generated targets, next to the published table.

    python bench/recover.py [--quick] [--json PATH] [--device cpu|cuda] [--generator DIR] [--encoder DIR]

Unless given a generator (a folder or file in the `ml.gan` contract) and an encoder (encoder.pt
of `train_encoder`), it first trains both on MNIST (the shared IDX folder, `--mnist`; sklearn's
digits where it is absent):

- full: the DCGAN paper's 64x64 network (widths 64, latent 100, normal prior), 10 epochs over
  8,000 images; encoder 3,000 steps of 64 at the default Adam 2e-4 (latent + pixel losses);
- `--quick`: 32x32, generator width 32, discriminator width 16, latent 16, 2 epochs; encoder
  150 steps of 16 at lr 1e-3 (about a minute on a CPU core; use `--threads 1` on a busy machine).

Then, on the same targets (50; 10 with --quick) generated from latents drawn with a fixed seed:

- `gradient`: `ml.gan` batched Adam from the prior, 200 steps, lr 0.01;
- `gradient+clip`: the same with stochastic clipping (c = 1 for a uniform prior, 3 for normal);
- `encoder`: one forward pass; `encoder+refine`: Adam from E(x), 100 steps;
- `plain`: the baseline loop, gradient recovery one image at a time (the same z0 as `gradient`,
  a `.item()` per step), which is how the published code ran.

It prints PSNR, SSIM, latent cosine and seconds per image for each, the published figures as a
reference column (ProGAN-128 on CelebA, latent 512, RTX 2080 Ti: not the same model, data or
hardware), and speed ratios; every printed figure goes to the JSON. Runs unchanged on CPU and CUDA.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_device_arg, device_from, device_name, sync
from ml.core.callbacks import LocalCallbacks
from ml.gan.compare import MethodSpec, evaluate, method_specs, run_method
from ml.gan.encoder import load_encoder
from ml.gan.generator import load_generator, sample_latent
from ml.gan.recover import Recovery
from ml.gan.train_encoder import EncoderConfig, train_encoder
from ml.gan.train_gan import DCGANConfig, export_dcgan, train_dcgan

# The published table: 50 generated faces, ProGAN-128 CelebA, RTX 2080 Ti; seconds for all 50.
PUBLISHED = {
    "gradient": {"label": "Adam", "psnr": 18.41, "seconds_50": 1144.0},
    "gradient+clip": {"label": "stochastic clipping", "psnr": 19.06, "seconds_50": 1135.0},
    "encoder": {"label": "pixel-loss encoder", "psnr": 11.06, "seconds_50": 3.3},
    "encoder (pixel+perceptual)": {"label": "pixel+perceptual encoder", "psnr": 16.30, "seconds_50": 4.0},
}
PUBLISHED_NOTE = (
    "published: ProGAN-128 on CelebA (latent 512) on an RTX 2080 Ti, 50 targets; ours: a DCGAN on MNIST "
    "(see 'setup'): the numbers are a reference, not a like-for-like comparison"
)


def default_mnist() -> Path:
    root = os.environ.get("FACEJOBS_DATA_DIR")
    base = Path(root) if root else Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return base / "mnist"


def training_images(mnist: Path) -> tuple[torch.Tensor, str]:
    from ml.data import DatasetNotFoundError, load_digits, load_mnist

    try:
        return load_mnist(mnist, 28).images, f"MNIST ({mnist})"
    except DatasetNotFoundError:
        return load_digits(32).images, "sklearn digits (MNIST not found)"


def plain_gradient(
    generator: torch.nn.Module,
    targets: torch.Tensor,
    z0: torch.Tensor,
    iterations: int,
    lr: float,
    device: torch.device,
) -> tuple[torch.Tensor, float]:
    """The baseline: each image alone, Adam on its z, L1 loss, the loss read back every step."""
    for p in generator.parameters():
        p.requires_grad_(False)
    found = []
    sync(device)
    started = time.perf_counter()
    for i in range(targets.shape[0]):
        x = targets[i : i + 1].to(device)
        z = z0[i : i + 1].clone().to(device).requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(iterations):
            loss = (generator(z) - x).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # what a logging loop does every step (a device sync)
        found.append(z.detach())
    sync(device)
    return torch.cat(found).cpu(), time.perf_counter() - started


def setup_models(args: argparse.Namespace, device: torch.device, work: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    setup: dict[str, Any] = {}
    if args.generator:
        generator, info = load_generator(args.generator, device)
        setup["generator"] = str(args.generator)
    else:
        images, source = training_images(args.mnist)
        if args.quick:
            cfg = DCGANConfig(latent_dim=16, image_size=32, g_width=32, d_width=16, epochs=2, batch_size=64)
        else:
            cfg = DCGANConfig(latent_dim=100, image_size=64, g_width=64, d_width=64, epochs=10, batch_size=64)
        started = time.perf_counter()
        trained = train_dcgan(images, cfg, LocalCallbacks(), device, source=source)
        setup["generator_train_seconds"] = time.perf_counter() - started
        export_dcgan(trained, work / "generator")
        generator, info = load_generator(work / "generator", device)
        setup["generator"] = {
            "trained_on": source,
            "images": int(images.shape[0]),
            "dcgan": {k: getattr(cfg, k) for k in ("image_size", "g_width", "d_width", "latent_dim", "epochs")},
        }
    if args.encoder:
        encoder, _ = load_encoder(args.encoder, device)
        setup["encoder"] = str(args.encoder)
    else:
        if args.quick:
            ecfg = EncoderConfig(steps=150, batch_size=16, lr=1e-3, checkpoint_every=10**9, preview_every=0)
        else:
            ecfg = EncoderConfig(steps=3000, batch_size=64, lr=2e-4, checkpoint_every=10**9, preview_every=0)
        started = time.perf_counter()
        te = train_encoder(generator, info.latent_dim, info.prior, ecfg, LocalCallbacks(), device)
        setup["encoder_train_seconds"] = time.perf_counter() - started
        encoder = te.encoder.to(device)
        setup["encoder"] = {
            "steps": ecfg.steps,
            "batch_size": ecfg.batch_size,
            "lr": ecfg.lr,
            "losses": "latent + pixel",
            "held_out": te.metrics,
        }
    setup["latent_dim"], setup["prior"], setup["image_size"] = info.latent_dim, info.prior, list(info.image_size)
    return generator, info, encoder, setup


def table_row(
    rec: Recovery, targets: torch.Tensor, true_z: torch.Tensor, clip: float | None, device: torch.device
) -> dict[str, Any]:
    m = evaluate(rec, targets, true_z, None, device)
    return {
        "psnr": m["psnr"]["mean"],
        "psnr_median": m["psnr"]["median"],
        "ssim": m["ssim"]["mean"],
        "latent_cosine": m["latent_cosine"]["mean"],
        "latent_cosine_share_0.9": m["latent_cosine_share_0.9"],
        "seconds_per_image": rec.seconds_per_image,
        "seconds_total": rec.seconds,
        "iterations": rec.iterations,
        "clip": clip,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small models and 10 targets (about a minute on a CPU)")
    ap.add_argument("--json", type=Path, help="write every printed figure here")
    add_device_arg(ap)
    ap.add_argument("--generator", type=Path, help="a generator in the contract (skips DCGAN training)")
    ap.add_argument("--encoder", type=Path, help="encoder.pt of a train_encoder job (skips encoder training)")
    ap.add_argument("--mnist", type=Path, default=default_mnist(), help="MNIST IDX folder for training")
    ap.add_argument("--targets", type=int, help="number of generated targets (default 50, 10 with --quick)")
    ap.add_argument("--iterations", type=int, default=200, help="Adam steps of gradient recovery")
    ap.add_argument("--refine-iterations", type=int, default=100, help="Adam steps of encoder+refine")
    ap.add_argument("--clip", type=float, help="stochastic clipping bound (default from the prior)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = device_from(args.device)
    torch.manual_seed(args.seed)
    n = args.targets or (10 if args.quick else 50)

    with tempfile.TemporaryDirectory() as tmp:
        generator, info, encoder, setup = setup_models(args, device, Path(tmp))
    true_z = sample_latent(n, info.latent_dim, info.prior, torch.Generator().manual_seed(123))
    with torch.no_grad():
        targets = generator(true_z.to(device)).cpu()
    names = ["gradient", "gradient+clip", "encoder", "encoder+refine"]
    specs = method_specs(names, info.prior, args.iterations, args.refine_iterations, args.clip)
    for warm in (MethodSpec("warm-up", "gradient", 5, None), MethodSpec("warm-up", "encoder", 0, None)):
        run_method(generator, targets[:2], warm, info.latent_dim, info.prior, encoder, device=device)
    rows: dict[str, dict[str, Any]] = {}
    for spec in specs:
        # One encoder pass takes milliseconds: best of 3, so a scheduler hiccup does not decide it.
        rec = min(
            (
                run_method(
                    generator,
                    targets,
                    spec,
                    info.latent_dim,
                    info.prior,
                    encoder,
                    seed=args.seed,
                    batch_size=n,
                    device=device,
                )
                for _ in range(3 if spec.method == "encoder" else 1)
            ),
            key=lambda r: r.seconds,
        )
        rows[spec.name] = table_row(rec, targets, true_z, spec.clip, device)
    # The baseline, from the same z0 as `gradient` (recover_latent draws them from Generator(seed)).
    z0 = sample_latent(n, info.latent_dim, info.prior, torch.Generator().manual_seed(args.seed))
    z_plain, seconds = plain_gradient(generator, targets, z0, args.iterations, 0.01, device)
    with torch.no_grad():
        images = generator(z_plain.to(device)).cpu()
    l1 = (images - targets).abs().flatten(1).mean(1)
    plain = Recovery("plain (unbatched gradient)", z_plain, images, l1, seconds, args.iterations)
    rows[plain.method] = table_row(plain, targets, true_z, None, device)
    grad_s = rows["gradient"]["seconds_per_image"]
    ratios = {
        "gradient_batched_vs_plain": rows["plain (unbatched gradient)"]["seconds_per_image"] / grad_s,
        "encoder_vs_gradient": grad_s / rows["encoder"]["seconds_per_image"],
        "encoder+refine_vs_gradient": grad_s / rows["encoder+refine"]["seconds_per_image"],
        "encoder_vs_plain": rows["plain (unbatched gradient)"]["seconds_per_image"]
        / rows["encoder"]["seconds_per_image"],
    }
    print_table(rows, ratios, setup, device, n)
    if args.json:
        result = {
            "device": str(device),
            "device_name": device_name(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "quick": args.quick,
            "targets": n,
            "setup": setup,
            "results": rows,
            "speed_ratios": ratios,
            "encoder_speedup": ratios["encoder_vs_gradient"],  # the figure bench/notes/recover.md names
            "published": PUBLISHED,
            "published_note": PUBLISHED_NOTE,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))


def print_table(
    rows: dict[str, dict[str, Any]], ratios: dict[str, float], setup: dict[str, Any], device: torch.device, n: int
) -> None:
    print(f"latent recovery on {n} generated targets, {device}; setup: {json.dumps(setup, default=str)}")
    head = f"{'method':<28}{'iters':>6}{'PSNR':>8}{'median':>8}{'SSIM':>8}{'lat.cos':>9}{'>=0.9':>7}"
    head += f"{'s/image':>11}"
    head += f"{'pub. PSNR':>11}{'pub. s/50':>11}"
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        pub = PUBLISHED.get(name, {})
        line = f"{name:<28}{r['iterations']:>6}{r['psnr']:>8.2f}{r['psnr_median']:>8.2f}{r['ssim']:>8.4f}"
        line += f"{r['latent_cosine']:>9.4f}"
        line += f"{r['latent_cosine_share_0.9']:>7.0%}{r['seconds_per_image']:>11.5f}"
        line += f"{pub.get('psnr', float('nan')):>11.2f}{pub.get('seconds_50', float('nan')):>11.1f}"
        print(line)
    pub = PUBLISHED["encoder (pixel+perceptual)"]
    blank = f"{'':>6}{'':>8}{'':>8}{'':>8}{'':>9}{'':>7}{'':>11}"
    print(f"{'(pub.) pixel+perceptual enc.':<28}{blank}{pub['psnr']:>11.2f}{pub['seconds_50']:>11.1f}")
    print(PUBLISHED_NOTE)
    for k, v in ratios.items():
        print(f"speed ratio {k}: {v:.1f}x")


if __name__ == "__main__":
    main()
