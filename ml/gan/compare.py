"""Several recovery methods on the same targets, with per-image metrics: the job's and the bench's core.

`method_specs` turns method names into concrete settings:
- "gradient": Adam from the prior, `iterations` steps;
- "gradient+clip": the same with stochastic clipping at c (default: 1 for a uniform prior, the
  prior's support; 3 for a normal prior, where 99.7% of its coordinates lie);
- "encoder": E(x);
- "encoder+refine": Adam from E(x), `refine_iterations` steps (default half of `iterations`).

`compare_methods` runs them batch by batch and `evaluate` scores each: PSNR and SSIM on [0, 1],
latent cosine to the true z (generated targets), embedding cosine through a face network (optional),
seconds per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ml.core.callbacks import Callbacks
from ml.core.images import grid_png
from ml.gan.common import to_unit
from ml.gan.metrics import cosine, psnr, ssim, summarise
from ml.gan.perceptual import FaceFeatures
from ml.gan.recover import Recovery, RecoveryError, recover_latent

METHOD_NAMES = ("gradient", "gradient+clip", "encoder", "encoder+refine")


def default_clip(prior: str) -> float:
    """The stochastic clipping bound used when none is given."""
    return 1.0 if prior == "uniform" else 3.0


@dataclass(frozen=True)
class MethodSpec:
    """One method as run: its display name, the `recover_latent` method, steps and clipping bound."""

    name: str
    method: str
    iterations: int
    clip: float | None


def method_specs(
    names: list[str],
    prior: str,
    iterations: int = 200,
    refine_iterations: int | None = None,
    clip: float | None = None,
) -> list[MethodSpec]:
    """Concrete settings of each named method (see the module docstring)."""
    specs = []
    for name in names:
        if name == "gradient":
            specs.append(MethodSpec(name, "gradient", iterations, None))
        elif name == "gradient+clip":
            specs.append(MethodSpec(name, "gradient", iterations, clip or default_clip(prior)))
        elif name == "encoder":
            specs.append(MethodSpec(name, "encoder", 0, None))
        elif name == "encoder+refine":
            specs.append(MethodSpec(name, "encoder+refine", refine_iterations or max(1, iterations // 2), None))
        else:
            raise RecoveryError(f"unknown method {name!r}; choose among {', '.join(METHOD_NAMES)}")
    return specs


def run_method(
    generator: nn.Module,
    targets: torch.Tensor,
    spec: MethodSpec,
    latent_dim: int,
    prior: str,
    encoder: nn.Module | None = None,
    lr: float = 0.01,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    callbacks: Callbacks | None = None,
) -> Recovery:
    """One method on all `targets` ([-1, 1]), `batch_size` images at a time (batches are independent)."""
    parts = []
    for i, start in enumerate(range(0, targets.shape[0], batch_size)):
        parts.append(
            recover_latent(
                generator,
                targets[start : start + batch_size],
                spec.method,
                latent_dim=latent_dim,
                prior=prior,
                iterations=spec.iterations,
                lr=lr,
                clip=spec.clip,
                encoder=encoder,
                seed=seed + 7919 * i,
                device=device,
                callbacks=callbacks,
                name=spec.name,
            )
        )
    return Recovery(
        spec.name,
        torch.cat([p.z for p in parts]),
        torch.cat([p.images for p in parts]),
        torch.cat([p.l1 for p in parts]),
        sum(p.seconds for p in parts),
        spec.iterations,
    )


def evaluate(
    recovery: Recovery,
    targets: torch.Tensor,
    true_z: torch.Tensor | None = None,
    face: FaceFeatures | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Per-image metrics and their summaries for one method's recovery of [-1, 1] `targets`."""
    x01, r01 = to_unit(targets.cpu()), to_unit(recovery.images)
    per: dict[str, torch.Tensor] = {"psnr": psnr(r01, x01), "ssim": ssim(r01, x01)}
    if true_z is not None:
        per["latent_cosine"] = cosine(recovery.z, true_z.cpu())
    if face is not None:
        with torch.no_grad():
            a = torch.cat([face.embed(targets[i : i + 64].to(device)) for i in range(0, targets.shape[0], 64)])
            b = torch.cat([face.embed(recovery.images[i : i + 64].to(device)) for i in range(0, targets.shape[0], 64)])
        per["embedding_cosine"] = cosine(a.cpu(), b.cpu())
    out: dict[str, Any] = {
        "method": recovery.method,
        "iterations": recovery.iterations,
        "seconds": recovery.seconds,
        "seconds_per_image": recovery.seconds_per_image,
        "l1": summarise(recovery.l1),
        "per_image": {k: [float(v) for v in t] for k, t in per.items()},
    }
    for k, t in per.items():
        out[k] = summarise(t)
    if true_z is not None:
        out["latent_cosine_share_0.9"] = float((per["latent_cosine"] >= 0.9).float().mean())
    return out


def reconstructions_png(targets: torch.Tensor, recoveries: list[Recovery], columns: int = 16) -> bytes:
    """A grid: first row the targets, then one row per method (first `columns` images)."""
    k = min(columns, targets.shape[0])
    rows = [to_unit(targets[:k].cpu())] + [to_unit(r.images[:k]) for r in recoveries]
    upscale = max(1, 64 // int(targets.shape[-1]))
    return grid_png(torch.cat(rows), k, upscale=upscale)
