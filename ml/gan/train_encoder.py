"""Training the latent encoder E on (z, G(z)) pairs drawn on the fly, then optionally on real images.

Loss of a generated batch (x = G(z), z from the generator's prior, G frozen):

    w_z * |E(x) - z|_1 + w_perc * perceptual(G(E(x)), x) + w_pix * |G(E(x)) - x|_1

A weight of 0 turns its term off and skips its computation (with w_perc = w_pix = 0 the generator
never runs backwards). The optional second phase (`real_steps`) trains on real images, where z is
unknown: pixel + perceptual terms only. Adam (lr 2e-4, beta1 0.5) for the whole run.

Resume is exact: the latents (and real-image indices) of step s are drawn from a generator seeded
by (seed, s) alone; a checkpoint every `checkpoint_every` steps holds the encoder, Adam's state
and the history (on the CPU, fitted to the resuming attempt's device on load), so a killed and
resumed run ends with the same weights as an uninterrupted one. The loop reads the device only
every `log_every` steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ml.core.callbacks import Callbacks, LocalCallbacks
from ml.core.defaults import shared_defaults
from ml.core.device_state import to_device
from ml.core.fingerprint import fingerprint
from ml.core.images import grid_png
from ml.core.loop import LoopPolicy, ResumableLoop
from ml.core.seeding import derived_seed
from ml.core.state import Stateful
from ml.gan.common import GANConfigError, to_unit
from ml.gan.encoder import LatentEncoder
from ml.gan.generator import check_prior, sample_latent
from ml.gan.metrics import cosine, psnr
from ml.gan.perceptual import PerceptualLoss

CHECKPOINT_KIND = "train_encoder"


# The settings a job's params also expose take their one default from ml/gan/defaults.json.
_SHARED = shared_defaults("gan", "EncoderConfig")


@dataclass
class EncoderConfig:
    """Hyperparameters of `train_encoder`.

    Attributes:
        steps: optimiser steps on generated pairs.
        real_steps: further steps on real images (pixel + perceptual terms; needs real images).
        batch_size: images per step.
        lr, beta1, beta2: Adam.
        w_z, w_perc, w_pix: loss weights (0 turns a term off).
        checkpoint_every: steps between checkpoints (one is always written at the end).
        preview_every: steps between target | reconstruction preview grids (0: at the end only).
        log_every: steps between progress reports (each syncs the device).
        eval_images: generated images held out (fixed latents) for the final metrics and previews.
        seed: seeds the initial weights and every draw.
    """

    steps: int = _SHARED["steps"]
    real_steps: int = _SHARED["real_steps"]
    batch_size: int = _SHARED["batch_size"]
    lr: float = _SHARED["lr"]
    beta1: float = _SHARED["beta1"]
    beta2: float = _SHARED["beta2"]
    w_z: float = _SHARED["w_z"]
    w_perc: float = _SHARED["w_perc"]
    w_pix: float = _SHARED["w_pix"]
    checkpoint_every: int = _SHARED["checkpoint_every"]
    preview_every: int = _SHARED["preview_every"]
    log_every: int = 10
    eval_images: int = 64
    seed: int = _SHARED["seed"]

    def validate(self, has_perceptual: bool, has_real: bool) -> None:
        """Raise `GANConfigError` for values the trainer cannot use."""
        if self.steps < 0 or self.real_steps < 0 or self.steps + self.real_steps < 1:
            raise GANConfigError("steps and real_steps must be >= 0 with at least one step in all")
        if self.batch_size < 2:
            raise GANConfigError("batch_size must be >= 2 (the encoder has batch norm)")
        if min(self.w_z, self.w_perc, self.w_pix) < 0:
            raise GANConfigError("the loss weights w_z, w_perc and w_pix must be >= 0")
        if self.w_z + self.w_perc + self.w_pix == 0:
            raise GANConfigError("all loss weights are 0: set at least one of w_z, w_perc, w_pix")
        if self.w_perc > 0 and not has_perceptual:
            raise GANConfigError("w_perc > 0 needs a perceptual network (facenet weights or a trained backbone)")
        if self.real_steps > 0 and not has_real:
            raise GANConfigError("real_steps > 0 needs real images (a dataset)")
        if self.real_steps > 0 and self.w_perc + self.w_pix == 0:
            raise GANConfigError("the real-image phase uses only w_pix and w_perc; both are 0")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise GANConfigError("checkpoint_every and log_every must be >= 1")
        if not (self.lr > 0 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise GANConfigError("lr must be > 0 and the Adam betas in [0, 1)")


@dataclass
class TrainedEncoder:
    """What `train_encoder` returns: the encoder (CPU, eval), resolved config, curves and metrics."""

    encoder: LatentEncoder
    config: dict[str, Any]
    history: list[dict[str, float]]
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _loss_terms(
    encoder: nn.Module,
    generator: nn.Module,
    x: torch.Tensor,
    z: torch.Tensor | None,
    config: EncoderConfig,
    perceptual: PerceptualLoss | None,
) -> dict[str, torch.Tensor]:
    """The weighted loss and its unweighted terms; z None (real images) drops the latent term."""
    z_hat = encoder(x)
    terms: dict[str, torch.Tensor] = {}
    if z is not None and config.w_z > 0:
        terms["l_z"] = F.l1_loss(z_hat, z)
    if config.w_pix > 0 or (config.w_perc > 0 and perceptual is not None):
        recon = generator(z_hat)
        if config.w_pix > 0:
            terms["l_pix"] = F.l1_loss(recon, x)
        if config.w_perc > 0 and perceptual is not None:
            terms["l_perc"] = perceptual(recon, x)
    weights = {"l_z": config.w_z, "l_pix": config.w_pix, "l_perc": config.w_perc}
    terms["loss"] = torch.stack([weights[k] * v for k, v in terms.items()]).sum()
    return terms


def _eval(
    encoder: nn.Module, generator: nn.Module, x: torch.Tensor, z: torch.Tensor
) -> tuple[dict[str, float], torch.Tensor]:
    encoder.eval()
    with torch.no_grad():
        z_hat = encoder(x)
        recon = generator(z_hat)
    encoder.train()
    metrics = {
        "latent_cosine": float(cosine(z_hat, z).mean()),
        "psnr": float(psnr(to_unit(recon), to_unit(x)).mean()),
        "l1_z": float((z_hat - z).abs().mean()),
    }
    return metrics, recon


class _EncoderLoop(ResumableLoop):
    """Encoder training as a resumable loop: one unit is an optimiser step; the state is E and Adam."""

    kind = CHECKPOINT_KIND
    unit = "step"
    what = "encoder training"
    mismatch_error = GANConfigError
    mismatch_message = "the checkpoint found belongs to a different config or generator; cannot resume"

    def __init__(
        self,
        cb: Callbacks,
        config: EncoderConfig,
        parts: tuple[LatentEncoder, nn.Module, torch.optim.Optimizer],
        latent: tuple[int, str],
        held_out: tuple[torch.Tensor, torch.Tensor],
        perceptual: PerceptualLoss | None,
        real_images: torch.Tensor | None,
        key: str,
        device: torch.device,
    ) -> None:
        # A stop on a step between checkpoints saves that step (polled before the due checkpoint).
        super().__init__(
            cb,
            config.steps + config.real_steps,
            key,
            LoopPolicy(device=device),
            checkpoint_every=config.checkpoint_every,
            poll_stop_first=True,
        )
        self.cb, self.config, self.perceptual, self.real_images = cb, config, perceptual, real_images
        self.encoder, self.generator, self.opt = parts
        self.eval_x, self.eval_z = held_out
        self.latent_dim, self.prior = latent
        self.sums: dict[str, torch.Tensor] = {}

    def stateful(self) -> dict[str, Stateful]:
        return {"encoder": self.encoder, "optimizer": self.opt}

    def preview(self) -> None:
        show = min(8, self.eval_x.shape[0])
        _metrics, recon = _eval(self.encoder, self.generator, self.eval_x[:show], self.eval_z[:show])
        self.cb.preview("reconstructions", grid_png(to_unit(torch.cat([self.eval_x[:show], recon])), show))

    def step(self, index: int) -> None:
        config, device, total, step = self.config, self.policy.device, self.total, index + 1
        self.encoder.train()
        rng = torch.Generator().manual_seed(derived_seed(config.seed, 1, step))
        # Draws on the CPU generator (the same on every device), copied without waiting for the device.
        if step <= config.steps:
            z = to_device(sample_latent(config.batch_size, self.latent_dim, self.prior, rng), device)
            with torch.no_grad():
                x = self.generator(z)
            terms = _loss_terms(self.encoder, self.generator, x, z, config, self.perceptual)
        else:
            if self.real_images is None:  # validate() refuses this; the check keeps the type narrow
                raise GANConfigError("real_steps > 0 needs real images (a dataset)")
            idx = to_device(torch.randint(0, self.real_images.shape[0], (config.batch_size,), generator=rng), device)
            terms = _loss_terms(self.encoder, self.generator, self.real_images[idx], None, config, self.perceptual)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.opt.step()
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, torch.zeros((), device=device)) + v.detach()
        if step % config.log_every == 0 or step == total:
            count = (step - 1) % config.log_every + 1
            values = torch.stack(list(self.sums.values())).tolist()  # one read of the device per report
            means = {k: v / count for k, v in zip(self.sums, values, strict=True)}
            if not all(math.isfinite(v) for v in values):
                raise FloatingPointError(f"the encoder loss became NaN/inf at step {step}; lower lr")
            self.history.append({"step": step, "phase": 0 if step <= config.steps else 1, **means})
            self.cb.progress(step, total, **means)
            self.sums = {}
        if config.preview_every and step % config.preview_every == 0:
            self.preview()


def train_encoder(
    generator: nn.Module,
    latent_dim: int,
    prior: str,
    config: EncoderConfig,
    callbacks: Callbacks | None = None,
    device: torch.device | str = "cpu",
    perceptual: PerceptualLoss | None = None,
    real_images: torch.Tensor | None = None,
    generator_id: str = "",
) -> TrainedEncoder:
    """Train a `LatentEncoder` for `generator` (frozen, eval mode, on `device`).

    Args:
        generator: the contract's z -> [-1, 1] image module.
        latent_dim, prior: the generator's.
        config: see `EncoderConfig`.
        callbacks: progress/preview/checkpoint/stop hooks; None uses an in-memory `LocalCallbacks`.
        device: where to train.
        perceptual: the perceptual loss (needed when w_perc > 0).
        real_images: (N, C, H, W) in [-1, 1] at the generator's size, for the real-image phase.
        generator_id: recorded in the config and the resume fingerprint.

    Raises:
        GANConfigError: bad config (before any training).
        Stopped: `callbacks.should_stop()`; the checkpoint of that step was saved.
    """
    cb: Callbacks = callbacks if callbacks is not None else LocalCallbacks()
    device = torch.device(device)
    check_prior(prior)
    config.validate(perceptual is not None, real_images is not None)
    for p in generator.parameters():
        p.requires_grad_(False)
    eval_z = sample_latent(
        config.eval_images, latent_dim, prior, torch.Generator().manual_seed(derived_seed(config.seed, 9)), device
    )
    with torch.no_grad():
        eval_x = generator(eval_z)
    channels, size = int(eval_x.shape[1]), (int(eval_x.shape[2]), int(eval_x.shape[3]))
    if real_images is not None:
        if tuple(real_images.shape[1:]) != (channels, *size):
            raise GANConfigError(
                f"real images of shape {tuple(real_images.shape[1:])} do not match the generator's "
                f"output {(channels, *size)}: resize them first"
            )
        real_images = real_images.to(device)

    torch.manual_seed(derived_seed(config.seed, 0))  # initial weights: same on every device
    encoder = LatentEncoder(channels, latent_dim).to(device)
    opt = torch.optim.Adam(encoder.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
    n_real = 0 if real_images is None else int(real_images.shape[0])
    resolved = dict(
        asdict(config),
        latent_dim=latent_dim,
        prior=prior,
        channels=channels,
        image_size=list(size),
        generator=generator_id,
        perceptual=getattr(getattr(perceptual, "features", None), "kind", None),
        real_images=n_real,
        architecture="resnet18",
    )
    key = fingerprint(asdict(config), latent_dim, prior, generator_id, n_real)

    parts = (encoder, generator, opt)
    loop = _EncoderLoop(cb, config, parts, (latent_dim, prior), (eval_x, eval_z), perceptual, real_images, key, device)
    started = time.monotonic()
    loop.run()  # raises Stopped when asked to stop (that step's checkpoint is saved first)
    history = loop.history

    metrics, _recon = _eval(encoder, generator, eval_x, eval_z)
    loop.preview()
    resolved["metrics"] = metrics
    cb.log(f"encoder: held-out latent cosine {metrics['latent_cosine']:.4f}, PSNR {metrics['psnr']:.2f} dB")
    return TrainedEncoder(
        encoder=encoder.cpu().eval(),
        config=resolved,
        history=history,
        metrics=metrics,
        seconds=time.monotonic() - started,
    )
