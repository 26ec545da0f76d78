"""The loss terms of model inversion: BN statistics, ArcFace on fixed class weights, image priors.

Kept apart from the optimisation loop in `ml.invert.inversion` so each term can be tested against a slow,
obvious recomputation (and, for ArcFace, against pytorch-metric-learning itself).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

BNForm = Literal["squared", "l2"]

# Clamp the variance before its square root: a BN1d fed one sample has zero batch variance, and
# d sqrt(v)/dv is infinite there.
_MIN_VAR = 1e-12


class _ChannelVarMean(torch.autograd.Function):
    """Per-channel (population variance, mean) of a (N, C, ...) tensor with a one-pass backward.

    The forward is one fused `torch.var_mean`; the backward writes d/dx = a_c * x + b_c in a single
    `addcmul` (a_c = 2 g_var / n, b_c = g_mean / n - a_c * mean_c), where autograd's own formula for
    var_mean makes several full-size passes. Measured in bench/notes/invert.md.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
        ctx.save_for_backward(x, mean)
        return var, mean

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_var: torch.Tensor | None, grad_mean: torch.Tensor | None) -> torch.Tensor:
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        grad_var = torch.zeros_like(mean) if grad_var is None else grad_var
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        a = grad_var * (2.0 / n)
        b = grad_mean / n - a * mean
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(b.view(shape), x, a.view(shape))


def channel_var_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel population variance and mean over every dimension but 1, differentiable."""
    var, mean = _ChannelVarMean.apply(x)
    return var, mean


class BNStatistics:
    """Forward hooks on every BatchNorm layer of `model` that record its input's batch statistics.

    Each hook computes the per-channel (variance, mean) of the layer's input in one fused
    `torch.var_mean` call with a one-pass backward (`channel_var_mean`; population variance, as BN
    normalises with) and appends them; `loss()`
    then compares all layers at once against the running statistics concatenated in advance, so a
    step adds one small autograd node per layer plus a handful for the whole network.

    Use as a context manager (hooks are removed on exit), or call `close()`.

    Args:
        model: the network; its BN layers must hold running statistics. It should be in eval mode
            so the forward pass itself normalises with the running statistics.
        first_layer_weight: weight of the first BN layer in `model.modules()` order (the stem's, in
            every backbone here) in the loss; the others weigh 1.
    """

    def __init__(self, model: nn.Module, first_layer_weight: float = 1.0) -> None:
        self.layers: list[_BatchNorm] = [
            m for m in model.modules() if isinstance(m, _BatchNorm) and m.running_mean is not None
        ]
        if not self.layers:
            raise ValueError("the model has no BatchNorm layer with running statistics to match")
        self.means: list[torch.Tensor] = []
        self.vars: list[torch.Tensor] = []
        self.enabled = True
        with torch.no_grad():
            rm = torch.cat([m.running_mean for m in self.layers])  # type: ignore[misc]
            rv = torch.cat([m.running_var for m in self.layers])  # type: ignore[misc]
        self.running_mean = rm.detach().float()
        self.running_var = rv.detach().float()
        self.running_std = self.running_var.clamp_min(0).sqrt()
        sizes = [int(m.num_features) for m in self.layers]
        self.layer_index = torch.repeat_interleave(
            torch.arange(len(sizes), device=rm.device), torch.tensor(sizes, device=rm.device)
        )
        # DeepInversion's `first_bn_multiplier`: the stem's BN sees (a convolution of) the pixels
        # themselves, so weighting it up matches image-level statistics (ink, contrast) harder.
        self.first_layer_weight = float(first_layer_weight)
        self.layer_weight = torch.ones(len(sizes), device=rm.device)
        self.layer_weight[0] = self.first_layer_weight
        self.channel_weight = self.layer_weight[self.layer_index]
        self._handles = [m.register_forward_pre_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        if not self.enabled:
            return
        var, mean = channel_var_mean(inputs[0])
        self.vars.append(var)
        self.means.append(mean)

    def clear(self) -> None:
        """Forget the statistics recorded by the last forward pass."""
        self.means.clear()
        self.vars.clear()

    def batch_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(means, variances) of the last forward pass, every layer's channels concatenated."""
        if len(self.means) != len(self.layers):
            raise RuntimeError(
                f"expected statistics from {len(self.layers)} BN layers, got {len(self.means)}: "
                "run exactly one forward pass between clear() and loss()"
            )
        return torch.cat(self.means), torch.cat(self.vars)

    def loss(self, form: BNForm = "squared") -> torch.Tensor:
        """BN-statistics loss of the last forward pass, summed over layers.

        Args:
            form: "squared" is the ArcFace paper's sum of ||mu - running_mean||^2 +
                ||sigma - sqrt(running_var)||^2; "l2" is DeepInversion's sum of
                ||mu - running_mean||_2 + ||var - running_var||_2 (plain norms, variances).
        """
        mean, var = self.batch_statistics()
        weighted = self.first_layer_weight != 1.0
        if form == "squared":
            std = var.clamp_min(_MIN_VAR).sqrt()
            terms = (mean - self.running_mean).square() + (std - self.running_std).square()
            return (terms * self.channel_weight).sum() if weighted else terms.sum()
        if form == "l2":
            per_layer = torch.zeros(len(self.layers), device=mean.device, dtype=mean.dtype)
            dm = per_layer.index_add(0, self.layer_index, (mean - self.running_mean).square())
            dv = per_layer.index_add(0, self.layer_index, (var - self.running_var).square())
            norms = dm.clamp_min(_MIN_VAR).sqrt() + dv.clamp_min(_MIN_VAR).sqrt()
            return (norms * self.layer_weight).sum() if weighted else norms.sum()
        raise ValueError(f"unknown BN loss form {form!r}; use 'squared' or 'l2'")

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> BNStatistics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[_BatchNorm]:
        return iter(self.layers)


def arcface_logits(
    embeddings: torch.Tensor,
    weight_normalized: torch.Tensor,
    labels: torch.Tensor,
    margin_radians: float,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled ArcFace logits (additive angular margin on the target class) and the plain cosines.

    Follows pytorch-metric-learning's `ArcFaceLoss`: cos(theta + m) for the target class while
    theta <= pi - m, else cos(theta) - m sin(m) so the logit keeps decreasing; then times `scale`.

    Args:
        embeddings: (N, d) unnormalised embeddings.
        weight_normalized: (d, C) class weights with unit-norm columns.
        labels: (N,) target class per sample.
        margin_radians: additive angular margin m.
        scale: logit scale s.

    Returns:
        (N, C) margin logits times `scale`, and (N, C) cosines (no margin, no scale).
    """
    cosine = F.normalize(embeddings, dim=1) @ weight_normalized
    target_cos = cosine.gather(1, labels[:, None])
    # acos has an infinite slope at +-1; PML clamps to [-1, 1], we stay a hair inside.
    angles = torch.acos(target_cos.clamp(-1 + 1e-7, 1 - 1e-7))
    with_margin = torch.where(
        angles <= math.pi - margin_radians,
        torch.cos(angles + margin_radians),
        target_cos - margin_radians * math.sin(margin_radians),
    )
    logits = cosine.scatter(1, labels[:, None], with_margin)
    return logits * scale, cosine


def arcface_loss(
    embeddings: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    margin_degrees: float = 28.6,
    scale: float = 64.0,
) -> torch.Tensor:
    """Mean ArcFace cross-entropy of `embeddings` against class weights `weight` (d, C).

    The value equals pytorch-metric-learning's `ArcFaceLoss(C, d, margin_degrees, scale)` with its
    `W` set to `weight` (margin in degrees, as PML takes it).
    """
    logits, _ = arcface_logits(embeddings, F.normalize(weight, dim=0), labels, math.radians(margin_degrees), scale)
    return F.cross_entropy(logits, labels)


def target_probability(cosine: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """(N,) probability of each sample's target class: softmax of scale * cosine (no margin)."""
    return torch.softmax(cosine * scale, dim=1).gather(1, labels[:, None]).squeeze(1)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation per image (sum of |horizontal| and |vertical| neighbour
    differences over channels and pixels), averaged over the batch.

    Per-image sums, like the ArcFace term's per-image mean, keep a pixel's gradient independent of
    the batch size, so one weight suits any number of images.
    """
    n = x.shape[0]
    dh = (x[..., :, 1:] - x[..., :, :-1]).abs().sum()
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs().sum()
    return (dh + dv) / n


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """Squared L2 norm ||x||^2 per image, averaged over the batch."""
    return x.square().sum() / x.shape[0]


def jitter_and_flip(x: torch.Tensor, generator: torch.Generator, jitter: int, flip: bool) -> torch.Tensor:
    """Roll the batch by a random (dy, dx) in [-jitter, jitter] and mirror it with probability 1/2.

    The draws come from `generator` (a CPU generator, so they cost no device sync and are the same
    on every device); the whole batch moves together, as in DeepInversion.
    """
    original = x
    if jitter > 0:
        dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
        if dy or dx:
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        x = torch.flip(x, dims=(3,))
    # Always a fresh tensor: handing the leaf itself to a compiled step would make it recompile.
    return x.clone() if x is original else x
