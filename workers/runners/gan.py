"""The GAN inverse-mapping kinds: train_generator, train_encoder, recover_latent (`ml.gan`)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.errors import JobInputError
from jobs.params.gan import RecoverLatentParams, TrainEncoderParams, TrainGeneratorParams
from jobs.torchscript_check import NotTorchScriptError, UnsafeTorchScriptError, check_torchscript_archive
from jobs.torchscript_ops import ALLOWED_OPS
from workers.runners import Preempted, ml_config, params_as

if TYPE_CHECKING:
    from workers.context import JobContext


def _dataset_folder(ctx: JobContext, ref: str) -> Path | None:
    """The local folder of `ref` (builtin:digits needs none)."""
    return None if ref == "builtin:digits" else Path(ctx.open_dataset(ref))


def _check_generator_archive(file: Path) -> None:
    """The static check of a generator file before `torch.jit.load` runs any of its code.

    Every generator is checked, a `job:` artifact too: the store may hold a file that never passed
    `POST /models` (written there directly), and the check costs milliseconds.
    """
    from ml.gan.generator import GeneratorContractError

    try:
        check_torchscript_archive(file)
    except NotTorchScriptError as exc:
        raise GeneratorContractError(
            f"{file.name} is not a TorchScript module ({exc}); export the generator with torch.jit.script(model) "
            "or torch.jit.trace(model, z) and torch.jit.save, not torch.save"
        ) from exc
    except UnsafeTorchScriptError as exc:
        raise GeneratorContractError(f"{file.name}: {exc}") from exc


def _load_generator(ctx: JobContext, p: TrainEncoderParams | RecoverLatentParams) -> tuple[Any, Any]:
    """The job's generator, refused before it runs if it could do more than compute on tensors."""
    from ml.gan.generator import GeneratorContractError, load_generator

    try:
        return load_generator(
            ctx.open_model(p.generator),
            ctx.device,
            latent_dim=p.latent_dim,
            prior=p.prior,
            check_archive=_check_generator_archive,
            allowed_ops=ALLOWED_OPS,
        )
    except GeneratorContractError as exc:
        raise JobInputError(f"generator {p.generator}: {exc}") from exc


def _put_json(ctx: JobContext, name: str, data: Any) -> None:
    ctx.put_artifact(name, json.dumps(data, indent=2, default=str).encode(), "application/json")


def run_train_generator(ctx: JobContext) -> dict[str, Any]:
    """Train a DCGAN; artifacts: generator.pt, generator.json (the contract), samples.png, config.json."""
    from ml.core.errors import Stopped
    from ml.data import DatasetError
    from ml.gan.common import GANConfigError
    from ml.gan.data import load_gan_images
    from ml.gan.train_gan import DCGANConfig, export_dcgan, train_dcgan

    p = params_as(ctx, TrainGeneratorParams)
    try:
        images = load_gan_images(
            p.dataset, _dataset_folder(ctx, p.dataset), p.channels, p.max_images, resize_if_mixed=p.image_size
        )
    except DatasetError as exc:
        raise JobInputError(f"dataset {p.dataset}: {exc}") from exc
    channels = {"grey": 1, "rgb": 3}.get(p.channels or "", int(images.shape[1]))
    config = ml_config(DCGANConfig, p, channels=channels)
    ctx.log(f"train_generator: {images.shape[0]} images of {p.dataset}, DCGAN {p.image_size}x{p.image_size}")
    try:
        trained = train_dcgan(images, config, ctx, ctx.device, source=p.dataset)
    except GANConfigError as exc:
        raise JobInputError(f"train_generator: {exc}") from exc
    except Stopped as exc:
        raise Preempted(str(exc)) from exc
    paths = export_dcgan(trained, ctx.workdir / "generator")
    ctx.put_artifact("generator.pt", paths["generator.pt"], "application/octet-stream")
    ctx.put_artifact("generator.json", paths["generator.json"], "application/json")
    _put_json(ctx, "config.json", dict(trained.config, history=trained.history, seconds=trained.seconds))
    samples = _samples_png(trained.generator, config)
    ctx.put_artifact("samples.png", samples, "image/png")
    last = trained.history[-1]
    return {
        "latent_dim": config.latent_dim,
        "prior": config.prior,
        "image_size": config.image_size,
        "channels": channels,
        "epochs": len(trained.history),
        "d_loss": last["d_loss"],
        "g_loss": last["g_loss"],
        "train_images": int(trained.config["train_images"]),
        "seconds": trained.seconds,
    }


def _samples_png(generator: Any, config: Any) -> bytes:
    import torch

    from ml.core.images import grid_png
    from ml.gan.common import to_unit
    from ml.gan.generator import sample_latent

    z = sample_latent(64, config.latent_dim, config.prior, torch.Generator().manual_seed(config.seed))
    with torch.no_grad():
        images = to_unit(generator(z))
    return grid_png(images, 8, upscale=max(1, 64 // config.image_size))


def run_train_encoder(ctx: JobContext) -> dict[str, Any]:
    """Train a latent encoder for a generator; artifacts: encoder.pt, config.json, reconstructions.png."""
    from ml.core.errors import Stopped
    from ml.data import DatasetError
    from ml.gan.common import GANConfigError, fit_images, to_signed
    from ml.gan.data import load_gan_images
    from ml.gan.encoder import save_encoder
    from ml.gan.perceptual import PerceptualLoss, load_face_network
    from ml.gan.train_encoder import EncoderConfig, train_encoder

    p = params_as(ctx, TrainEncoderParams)
    generator, info = _load_generator(ctx, p)
    perceptual = None
    if p.w_perc > 0 and p.perceptual_model:
        try:
            face = load_face_network(ctx.open_model(p.perceptual_model), p.perceptual_layers, ctx.device)
        except GANConfigError as exc:
            raise JobInputError(f"perceptual_model {p.perceptual_model}: {exc}") from exc
        perceptual = PerceptualLoss(face)
    real = None
    if p.real_dataset and p.real_steps > 0:
        try:
            images = load_gan_images(
                p.real_dataset, _dataset_folder(ctx, p.real_dataset), None, p.max_real_images, info.image_size[0]
            )
        except DatasetError as exc:
            raise JobInputError(f"real_dataset {p.real_dataset}: {exc}") from exc
        real = to_signed(fit_images(images, info.channels, info.image_size))
    config = ml_config(EncoderConfig, p)
    try:
        trained = train_encoder(
            generator, info.latent_dim, info.prior, config, ctx, ctx.device, perceptual, real, p.generator
        )
    except GANConfigError as exc:
        raise JobInputError(f"train_encoder: {exc}") from exc
    except Stopped as exc:
        raise Preempted(str(exc)) from exc
    cfg = dict(trained.config, perceptual_model=p.perceptual_model, real_dataset=p.real_dataset)
    paths = save_encoder(trained.encoder, ctx.workdir / "encoder", info.image_size, cfg)
    ctx.put_artifact("encoder.pt", paths["encoder.pt"], "application/octet-stream")
    _put_json(ctx, "config.json", dict(cfg, history=trained.history, seconds=trained.seconds))
    return {"steps": p.steps + p.real_steps, **trained.metrics, "seconds": trained.seconds}


def run_recover_latent(ctx: JobContext) -> dict[str, Any]:
    """Compare recovery methods on targets; artifacts: z.npy, reconstructions.png, metrics.json."""
    import numpy as np
    import torch

    from ml.core.errors import Stopped
    from ml.data import DatasetError
    from ml.gan.common import GANConfigError, fit_images, to_signed
    from ml.gan.compare import evaluate, method_specs, reconstructions_png, run_method
    from ml.gan.data import load_gan_images
    from ml.gan.encoder import load_encoder
    from ml.gan.generator import sample_latent
    from ml.gan.perceptual import load_face_network
    from ml.gan.recover import Recovery

    p = params_as(ctx, RecoverLatentParams)
    generator, info = _load_generator(ctx, p)
    encoder = None
    try:
        if p.encoder:
            encoder, header = load_encoder(ctx.open_model(p.encoder), ctx.device)
            if encoder.latent_dim != info.latent_dim or tuple(header["image_size"]) != tuple(info.image_size):
                raise JobInputError(
                    f"encoder {p.encoder} maps {tuple(header['image_size'])} images to {encoder.latent_dim}-d z, "
                    f"the generator makes {info.image_size} images from {info.latent_dim}-d z"
                )
        face = load_face_network(ctx.open_model(p.face_model), None, ctx.device) if p.face_model else None
        names: list[str] = list(p.methods or []) or (
            ["gradient", "gradient+clip"] + (["encoder", "encoder+refine"] if encoder else [])
        )
        specs = method_specs(names, info.prior, p.iterations, p.refine_iterations, p.clip)
    except GANConfigError as exc:
        raise JobInputError(f"recover_latent: {exc}") from exc

    true_z = None
    if p.dataset:
        try:
            images = load_gan_images(
                p.dataset, _dataset_folder(ctx, p.dataset), None, p.num_targets, info.image_size[0]
            )
        except DatasetError as exc:
            raise JobInputError(f"dataset {p.dataset}: {exc}") from exc
        targets = to_signed(fit_images(images, info.channels, info.image_size))
    else:
        true_z = sample_latent(p.num_targets, info.latent_dim, info.prior, torch.Generator().manual_seed(p.seed))
        with torch.no_grad():
            targets = torch.cat(
                [generator(true_z[i : i + 256].to(ctx.device)).cpu() for i in range(0, p.num_targets, 256)]
            )

    state = ctx.load_checkpoint() or {}
    done: dict[str, dict[str, Any]] = dict(state.get("done", {})) if state.get("kind") == "recover_latent" else {}
    recoveries, metrics = [], {}
    for i, spec in enumerate(specs):
        if spec.name in done:
            recovery = Recovery(**done[spec.name])
        else:
            try:
                recovery = run_method(
                    generator,
                    targets,
                    spec,
                    info.latent_dim,
                    info.prior,
                    encoder,
                    lr=p.lr,
                    seed=p.seed,
                    batch_size=p.batch_size,
                    device=ctx.device,
                    callbacks=ctx,
                )
            except Stopped as exc:
                raise Preempted(f"{spec.name}: {exc}") from exc
            done[spec.name] = dict(vars(recovery))  # tensors and numbers only: a plain checkpoint
            ctx.save_checkpoint({"kind": "recover_latent", "done": done})
        recoveries.append(recovery)
        metrics[spec.name] = evaluate(recovery, targets, true_z, face, ctx.device)
        ctx.progress(i + 1, len(specs), psnr=metrics[spec.name]["psnr"]["mean"])
        ctx.log(
            f"{spec.name}: PSNR {metrics[spec.name]['psnr']['mean']:.2f} dB, "
            f"SSIM {metrics[spec.name]['ssim']['mean']:.4f}, {recovery.seconds_per_image:.4f} s/image"
        )
        if i + 1 < len(specs) and ctx.should_stop():
            raise Preempted(f"stopped after method {spec.name} (checkpoint saved)")

    buf = io.BytesIO()
    np.save(buf, torch.stack([r.z for r in recoveries]).numpy().astype(np.float32))
    ctx.put_artifact("z.npy", buf.getvalue(), "application/octet-stream")
    if true_z is not None:
        buf = io.BytesIO()
        np.save(buf, true_z.numpy().astype(np.float32))
        ctx.put_artifact("true_z.npy", buf.getvalue(), "application/octet-stream")
    ctx.put_artifact("reconstructions.png", reconstructions_png(targets, recoveries), "image/png")
    summary = {
        "methods": [s.name for s in specs],
        "z_layout": "z.npy is (methods, targets, latent_dim) in the order of 'methods'",
        "targets": p.dataset or "generated",
        "num_targets": int(targets.shape[0]),
        "settings": {s.name: {"iterations": s.iterations, "clip": s.clip, "lr": p.lr} for s in specs},
        "results": metrics,
    }
    _put_json(ctx, "metrics.json", summary)
    return {
        name: {
            k: (m[k]["mean"] if isinstance(m.get(k), dict) else m.get(k))
            for k in ("psnr", "ssim", "latent_cosine", "embedding_cosine", "seconds_per_image")
            if k in m
        }
        for name, m in metrics.items()
    }
