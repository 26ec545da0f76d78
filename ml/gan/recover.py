"""Latent recovery: find z with G(z) close to a target image.

Methods:
- `gradient` (Lipton & Tripathi 2017): z0 from the prior, minimise the per-image L1 distance
  |G(z) - x|_1 with Adam (lr 0.01, 200 iterations by default). With `clip=c`, stochastic
  clipping: after every step each coordinate of z outside [-c, c] is replaced, in place, by an
  independent draw from U(-c, c). (The public code clipped a copy, so z was never clipped.)
- `encoder`: one forward pass of a trained encoder, z = E(x).
- `encoder+refine`: `gradient` started from E(x) instead of the prior.

Every image of a batch is recovered in parallel: the loss is the sum of per-image losses, so each
z gets exactly its own image's gradient, and Adam's state is per coordinate, so the images do not
interact (a batch gives the same z as recovering each image alone). The z returned for an image is
the best one seen (lowest L1), which for plain Adam is almost always the last one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ml.core.callbacks import Callbacks
from ml.core.errors import Stopped
from ml.gan.common import GANConfigError
from ml.gan.generator import sample_latent

METHODS = ("gradient", "encoder", "encoder+refine")
StepHook = Callable[[int, torch.Tensor], None]


class RecoveryError(GANConfigError):
    """A recovery cannot run as asked (unknown method, missing encoder, shapes that do not match)."""


@dataclass
class Recovery:
    """The result of one method on a batch of targets.

    Attributes:
        method: the method's name ("gradient", "gradient+clip", "encoder", "encoder+refine").
        z: (N, latent_dim) recovered latents, CPU.
        images: (N, C, H, W) G(z) in [-1, 1], CPU.
        l1: (N,) final per-image mean absolute error in [-1, 1] units.
        seconds: wall-clock seconds for the whole batch (device synchronised).
        iterations: gradient steps taken per image (0 for `encoder`).
    """

    method: str
    z: torch.Tensor
    images: torch.Tensor
    l1: torch.Tensor
    seconds: float
    iterations: int

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, self.z.shape[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stochastic_clip_(z: torch.Tensor, c: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace, in place, every coordinate of `z` outside [-c, c] by an independent draw from U(-c, c).

    Args:
        z: the latents being optimised (a leaf tensor; modified under no_grad).
        c: the clipping bound (> 0).
        generator: a generator on z's device for the draws (reproducible runs).

    Returns:
        The boolean mask of the coordinates that were redrawn.
    """
    if not c > 0:
        raise RecoveryError(f"the stochastic clipping bound must be > 0, got {c}")
    with torch.no_grad():
        outside = z.abs() > c
        draws = torch.rand(z.shape, generator=generator, device=z.device, dtype=z.dtype) * (2 * c) - c
        z.copy_(torch.where(outside, draws, z))
    return outside


def _per_image_l1(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (recon - target).abs().flatten(1).mean(1)


def gradient_recover(
    generator: nn.Module,
    targets: torch.Tensor,
    z0: torch.Tensor,
    iterations: int = 200,
    lr: float = 0.01,
    clip: float | None = None,
    seed: int = 0,
    step_hook: StepHook | None = None,
    callbacks: Callbacks | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on z from `z0` minimising the summed per-image L1 to `targets` (all on their device).

    Args:
        generator: z -> images in [-1, 1] (its parameters are not updated).
        targets: (N, C, H, W) in [-1, 1].
        z0: (N, latent_dim) starting latents.
        iterations, lr: Adam's steps and learning rate.
        clip: stochastic clipping bound c (None: no clipping).
        seed: seeds the clipping draws.
        step_hook: called as hook(step, z) after every step (and its clipping), for inspection.
        callbacks: `should_stop()` is polled every 10 steps; a stop raises `ml.core.errors.Stopped`.

    Returns:
        (best z per image, its per-image L1), both on the targets' device.
    """
    if iterations < 0 or not lr > 0:
        raise RecoveryError(f"iterations must be >= 0 and lr > 0, got {iterations} and {lr}")
    device = targets.device
    z = z0.detach().clone().to(device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    draws = torch.Generator(device=device).manual_seed(int(seed)) if clip else None
    best_z = z.detach().clone()
    best_l1 = torch.full((z.shape[0],), float("inf"), device=device)
    for step in range(1, iterations + 1):
        per_image = _per_image_l1(generator(z), targets)
        with torch.no_grad():
            better = per_image.detach() < best_l1
            best_l1 = torch.where(better, per_image.detach(), best_l1)
            best_z = torch.where(better[:, None], z.detach(), best_z)
        opt.zero_grad(set_to_none=True)
        per_image.sum().backward()
        opt.step()
        if clip:
            stochastic_clip_(z, clip, draws)
        if step_hook is not None:
            step_hook(step, z.detach())
        if callbacks is not None and step % 10 == 0 and step < iterations and callbacks.should_stop():
            raise Stopped(
                f"latent recovery stopped at step {step} of {iterations}; run again to resume", step, iterations
            )
    with torch.no_grad():
        last = _per_image_l1(generator(z), targets)
        better = last < best_l1
        best_l1 = torch.where(better, last, best_l1)
        best_z = torch.where(better[:, None], z.detach(), best_z)
    return best_z, best_l1


def encode(encoder: nn.Module, targets: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """E(x) for [-1, 1] targets, in chunks, without gradients."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        z = torch.cat([encoder(targets[i : i + batch_size]) for i in range(0, targets.shape[0], batch_size)])
    encoder.train(was_training)
    return z


def recover_latent(
    generator: nn.Module,
    targets: torch.Tensor,
    method: str = "gradient",
    latent_dim: int | None = None,
    prior: str = "normal",
    iterations: int = 200,
    lr: float = 0.01,
    clip: float | None = None,
    encoder: nn.Module | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    step_hook: StepHook | None = None,
    callbacks: Callbacks | None = None,
    name: str | None = None,
) -> Recovery:
    """Recover the latents of `targets` ((N, C, H, W) in [-1, 1]) with one method, all images at once.

    Args:
        generator: the contract's z -> image module (eval mode).
        targets: the images to invert.
        method: "gradient", "encoder" or "encoder+refine".
        latent_dim, prior: of the generator (z0 for "gradient" is drawn from the prior, seeded).
        iterations, lr, clip: the gradient steps (ignored by "encoder"); `clip` enables stochastic
            clipping for "gradient" and "encoder+refine".
        encoder: the trained encoder (images in [-1, 1] -> z), for the encoder methods.
        seed: seeds z0 and the clipping draws.
        device: where to run.
        step_hook, callbacks: see `gradient_recover`.
        name: the name recorded in the result (default: method, with "+clip" when clipping).

    The timing (`Recovery.seconds`, device synchronised) covers finding z: drawing z0 or running
    E(x), and the Adam steps with their final best-z pass; rendering G(z) for the result is not timed.

    Raises:
        RecoveryError: unknown method, missing encoder or latent_dim.
    """
    if method not in METHODS:
        raise RecoveryError(f"unknown recovery method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "gradient" and encoder is None:
        raise RecoveryError(f"method {method!r} needs a trained encoder")
    if method == "gradient" and latent_dim is None:
        raise RecoveryError("method 'gradient' needs the generator's latent_dim")
    device = torch.device(device)
    x = targets.to(device).float()
    flags = [p.requires_grad for p in generator.parameters()]
    for p in generator.parameters():  # gradients flow to z only; saves the weight gradients
        p.requires_grad_(False)
    try:
        _sync(device)
        started = time.perf_counter()
        if method == "gradient":
            gen = torch.Generator().manual_seed(int(seed))
            z0 = sample_latent(x.shape[0], int(latent_dim or 0), prior, gen, device)
        else:
            z0 = encode(cast(nn.Module, encoder), x)  # refused above when missing
        l1: torch.Tensor | None = None
        if method == "encoder":
            z, steps = z0, 0
        else:
            z, l1 = gradient_recover(generator, x, z0, iterations, lr, clip, seed, step_hook, callbacks)
            steps = iterations
        _sync(device)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            images = generator(z)
            if l1 is None:
                l1 = _per_image_l1(images, x)
    finally:
        for p, flag in zip(generator.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    label = name or (method + ("+clip" if clip and method == "gradient" else ""))
    return Recovery(label, z.detach().cpu(), images.detach().cpu(), l1.detach().cpu(), seconds, steps)
