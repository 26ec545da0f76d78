"""Training a DCGAN on a tensor of images, resumable epoch by epoch, exported in the generator contract.

`train_dcgan(images01, config, callbacks, device)`:
1. validates the config (`GANConfigError`) and fits the images to the configured size/channels;
2. trains with Adam (lr 2e-4, beta1 0.5) on the non-saturating BCE loss or the hinge loss,
   one discriminator step then one generator step per batch;
3. after every epoch publishes a preview grid of a fixed set of latents, saves a checkpoint
   (both networks, both optimisers, history) and raises `ml.core.errors.Stopped` if asked to stop.

Resume is exact: the data order and latents of epoch e are drawn from a generator seeded by
(seed, e) alone, so a run killed after k epochs and resumed ends with the same weights as an
uninterrupted one (bit for bit on CPU); checkpoints are saved on the CPU and fitted to the
resuming attempt's device. The loop reads the device only every `log_every` steps (and at the
epoch's end). `export_dcgan` writes the contract's generator.pt/json.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
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
from ml.gan.common import GANConfigError, fit_images, to_signed, to_unit
from ml.gan.dcgan import DCGANDiscriminator, DCGANGenerator, check_dcgan
from ml.gan.generator import PRIORS, sample_latent, save_generator

CHECKPOINT_KIND = "train_generator"
LOSSES = ("bce", "hinge")


# The settings a job's params also expose take their one default from ml/gan/defaults.json.
_SHARED = shared_defaults("gan", "DCGANConfig")


@dataclass
class DCGANConfig:
    """Hyperparameters of `train_dcgan` (defaults: the DCGAN paper's).

    Attributes:
        latent_dim: length of z.
        prior: "normal" (N(0, I)) or "uniform" (U(-1, 1)).
        image_size: output side (16, 32, 64 or 128); 64 is the paper's network.
        channels: 1 or 3; None keeps the data's channel count.
        g_width: base width of the generator (its last hidden layer; x2 per stage inwards).
        d_width: base width of the discriminator (its first layer).
        loss: "bce" (non-saturating) or "hinge".
        epochs, batch_size, lr, beta1, beta2: the optimisation (Adam for both networks).
        seed: seeds initial weights, data order and latents.
        preview_count: latents in the preview grid (fixed for the whole run).
        log_every: report progress every this many steps (each report syncs the device).
    """

    latent_dim: int = _SHARED["latent_dim"]
    prior: str = _SHARED["prior"]
    image_size: int = _SHARED["image_size"]
    channels: int | None = None
    g_width: int = _SHARED["g_width"]
    d_width: int = _SHARED["d_width"]
    loss: str = _SHARED["loss"]
    epochs: int = _SHARED["epochs"]
    batch_size: int = _SHARED["batch_size"]
    lr: float = _SHARED["lr"]
    beta1: float = _SHARED["beta1"]
    beta2: float = _SHARED["beta2"]
    seed: int = _SHARED["seed"]
    preview_count: int = 64
    log_every: int = 10

    def validate(self) -> None:
        """Raise `GANConfigError` for values the trainer cannot use."""
        check_dcgan(self.image_size, self.channels or 1, self.latent_dim, min(self.g_width, self.d_width))
        if self.prior not in PRIORS:
            raise GANConfigError(f"prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        if self.loss not in LOSSES:
            raise GANConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise GANConfigError("epochs must be >= 1 and batch_size >= 2 (batch norm needs 2 images)")
        if not (self.lr > 0 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise GANConfigError("lr must be > 0 and the Adam betas in [0, 1)")


@dataclass
class TrainedGenerator:
    """What `train_dcgan` returns: both networks on the CPU in eval mode, the config and the curves."""

    generator: DCGANGenerator
    discriminator: DCGANDiscriminator
    config: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float


def gan_losses(loss: str, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss on real and fake logits."""
    if loss == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    real = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
    return real + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))


def generator_loss(loss: str, d_fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss on the discriminator's logits of its images (non-saturating for BCE)."""
    if loss == "hinge":
        return -d_fake.mean()
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))


def _preview(cb: Callbacks, gen: nn.Module, z: torch.Tensor) -> None:
    was_training = gen.training
    gen.eval()
    with torch.no_grad():
        images = to_unit(gen(z))
    gen.train(was_training)
    nrow = max(1, round(z.shape[0] ** 0.5))
    cb.preview("samples", grid_png(images, nrow, upscale=max(1, 64 // images.shape[-1])))


class _DCGANLoop(ResumableLoop):
    """DCGAN training as a resumable loop: one unit is an epoch; the state is both networks and optimisers."""

    kind = CHECKPOINT_KIND
    what = "DCGAN training"
    mismatch_error = GANConfigError

    def __init__(
        self,
        cb: Callbacks,
        config: DCGANConfig,
        parts: tuple[DCGANGenerator, DCGANDiscriminator, torch.optim.Optimizer, torch.optim.Optimizer],
        x: torch.Tensor,
        fixed_z: torch.Tensor,
        key: str,
        device: torch.device,
    ) -> None:
        super().__init__(cb, config.epochs, key, LoopPolicy(device=device))
        self.cb, self.config, self.x, self.fixed_z = cb, config, x, fixed_z
        self.gen, self.disc, self.opt_g, self.opt_d = parts
        self.n = int(x.shape[0])
        self.batch = min(config.batch_size, self.n)
        self.steps_per_epoch = self.n // self.batch

    def stateful(self) -> dict[str, Stateful]:
        return {"generator": self.gen, "discriminator": self.disc, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def step(self, epoch: int) -> None:
        config, device, batch, steps = self.config, self.policy.device, self.batch, self.steps_per_epoch
        gen, disc, opt_g, opt_d = self.gen, self.disc, self.opt_g, self.opt_d
        gen.train()
        disc.train()
        rng = torch.Generator().manual_seed(derived_seed(config.seed, 1, epoch))
        order = to_device(torch.randperm(self.n, generator=rng), device)
        sums = torch.zeros(4, device=device)  # d_loss, g_loss, D(x), D(G(z)) summed over steps
        for step in range(steps):
            real = self.x[order[step * batch : (step + 1) * batch]]
            # Drawn on the CPU (the same latents on every device), copied without waiting for the device.
            z = to_device(sample_latent(batch, config.latent_dim, config.prior, rng), device)
            fake = gen(z)
            d_real = disc(real)
            loss_d = gan_losses(config.loss, d_real, disc(fake.detach()))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            d_fake = disc(fake)
            loss_g = generator_loss(config.loss, d_fake)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            with torch.no_grad():
                sums += torch.stack([loss_d, loss_g, d_real.mean(), d_fake.mean()]).detach()
            if (step + 1) % config.log_every == 0 or step + 1 == steps:
                # One read of the device per report: the running sums and this step's two losses.
                *running, d_loss, g_loss = torch.cat([sums, loss_d.detach().view(1), loss_g.detach().view(1)]).tolist()
                if not all(math.isfinite(v) for v in running):
                    raise FloatingPointError(f"the GAN losses became NaN/inf at epoch {epoch + 1}; lower lr")
                self.cb.progress(epoch * steps + step + 1, steps * config.epochs, d_loss=d_loss, g_loss=g_loss)
        means = (sums / steps).tolist()
        self.history.append(
            {"epoch": epoch + 1, "d_loss": means[0], "g_loss": means[1], "d_real": means[2], "d_fake": means[3]}
        )
        self.cb.log(f"epoch {epoch + 1}/{config.epochs}: d_loss {means[0]:.4f}, g_loss {means[1]:.4f}")
        _preview(self.cb, gen, self.fixed_z)


def train_dcgan(
    images01: torch.Tensor,
    config: DCGANConfig,
    callbacks: Callbacks | None = None,
    device: torch.device | str = "cpu",
    source: str = "",
) -> TrainedGenerator:
    """Train a DCGAN on `images01` ((N, C, H, W) in [0, 1], resized and converted as configured).

    Args:
        images01: the training images.
        config: hyperparameters; see `DCGANConfig`.
        callbacks: progress/preview/checkpoint/stop hooks; None uses an in-memory `LocalCallbacks`.
        device: where to train.
        source: the dataset reference, recorded in the config (and the resume fingerprint).

    Raises:
        GANConfigError: bad config or too few images (before any training).
        Stopped: `callbacks.should_stop()` after an epoch's checkpoint.
    """
    cb: Callbacks = callbacks if callbacks is not None else LocalCallbacks()
    device = torch.device(device)
    if images01.ndim != 4 or images01.shape[0] < 2:
        raise GANConfigError(f"need at least 2 images of shape (N, C, H, W), got {tuple(images01.shape)}")
    channels = config.channels or int(images01.shape[1])
    config = DCGANConfig(**{**asdict(config), "channels": channels})
    config.validate()
    size = (config.image_size, config.image_size)
    x = to_signed(fit_images(images01, channels, size)).to(device)
    n = int(x.shape[0])

    # Initialise on the CPU from the seed so every device starts from the same weights.
    torch.manual_seed(derived_seed(config.seed, 0))
    gen = DCGANGenerator(config.latent_dim, channels, config.image_size, config.g_width).to(device)
    disc = DCGANDiscriminator(channels, config.image_size, config.d_width).to(device)
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(gen.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=betas)
    fixed_z = sample_latent(
        config.preview_count, config.latent_dim, config.prior, torch.Generator().manual_seed(config.seed), device
    )
    resolved = dict(asdict(config), source=source, train_images=n, architecture="dcgan")
    key = fingerprint(asdict(config), source, n)

    loop = _DCGANLoop(cb, config, (gen, disc, opt_g, opt_d), x, fixed_z, key, device)
    started = time.monotonic()
    loop.run()  # raises Stopped when asked to stop after an epoch's checkpoint
    history = loop.history

    return TrainedGenerator(
        generator=gen.cpu().eval(),
        discriminator=disc.cpu().eval(),
        config=resolved,
        history=history,
        seconds=time.monotonic() - started,
    )


def export_dcgan(trained: TrainedGenerator, folder: str | Path) -> dict[str, Path]:
    """Write the trained generator in the contract (generator.pt + generator.json) into `folder`."""
    cfg = trained.config
    extra = {"training": cfg, "history": trained.history}
    return save_generator(trained.generator, folder, int(cfg["latent_dim"]), str(cfg["prior"]), extra=extra)
