"""Sharded ArcFace loss ("partial FC") on `torch.distributed`: gloo on CPU, NCCL on GPU.

Each rank holds the columns `shard_range(C, world_size, rank)` of the class-weight matrix W (d, C),
pytorch-metric-learning's `ArcFaceLoss.W` layout, and only their optimiser state. A step:

1. all-gathers the embeddings of every rank's batch (autograd-aware: the gradient of each rank's
   columns flows back and is summed onto the rank that owns the embedding);
2. computes the cosine logits of the global batch against the local columns only;
3. applies the additive angular margin where the target class is a local column, with PML's exact
   formula (angle from the clamped cosine, margin in degrees, `cos(theta) - m sin(m)` past pi - m);
4. takes the softmax normaliser from all-reduced row maxima and sums, so no rank ever holds the
   (N, C) logits.

The loss is the mean over the global batch, the same value on every rank, and equals PML's
`ArcFaceLoss(C, d, margin, scale)` on the gathered batch and the joined W. Its gradient is exact
on each rank's own embeddings and own columns; a DDP backbone that averages gradients over ranks
therefore gets the true gradient divided by world_size (scale the learning rate accordingly).

With `sample_rate` < 1 each rank keeps the local columns of every class in the global batch plus
a random subset of its other columns, `max(1, int(sample_rate * C_local))` in all (insightface's
partial FC); the draw is seeded by (seed, step, rank), so a resumed run replays it. The sampled
local indices come back with the loss so the optimiser can update only those columns
(`ml.arcface.shards.sgd_step_columns_`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, cast

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn
from torch.distributed import ProcessGroup

from ml.arcface.shards import shard_range
from ml.core.errors import InputError


class PartialFCError(InputError):
    """A batch the sharded loss cannot take (shapes, labels out of range, uneven rank batches)."""


class PartialFCOutput(NamedTuple):
    """The loss (same on every rank) and the local column indices that took part in the step."""

    loss: torch.Tensor
    columns: torch.Tensor


def world_of(group: ProcessGroup | None) -> tuple[int, int]:
    """(world_size, rank) of `group`, or (1, 0) without an initialised process group."""
    if not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def arcface_target_logits(cosine: torch.Tensor, margin_radians: float) -> torch.Tensor:
    """PML `ArcFaceLoss.modify_cosine_of_target_classes`: cos(theta + m), kept monotone past pi - m."""
    angles = torch.acos(torch.clamp(cosine, -1, 1))
    return torch.where(
        angles <= math.pi - margin_radians,
        torch.cos(angles + margin_radians),
        torch.cos(angles) - margin_radians * math.sin(margin_radians),
    )


class _ShardedSoftmaxCE(torch.autograd.Function):
    """Mean cross-entropy of logits split by columns over ranks, normaliser all-reduced.

    Backward needs no collective: d loss / d local logit = (softmax - one_hot) / N uses the
    global normaliser saved in forward, and every rank holds exactly its columns' part.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        distributed = world_of(group)[0] > 1
        ctx.input_dtype = logits.dtype
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # a sum of C exponentials needs more than a half's precision
        with torch.no_grad():
            row_max = logits.max(dim=1).values
            if distributed:
                dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            shifted = logits - row_max.unsqueeze(1)
            exp = shifted.exp()
            denom = exp.sum(dim=1)
            rows = torch.nonzero(target >= 0).squeeze(1)
            target_logit = torch.zeros_like(denom)
            target_logit[rows] = shifted[rows, target[rows]]
            if distributed:
                # One all_reduce for both: each row's target lives on exactly one rank.
                both = torch.stack([denom, target_logit])
                dist.all_reduce(both, op=dist.ReduceOp.SUM, group=group)
                denom, target_logit = both[0], both[1]
            loss = (denom.log() - target_logit).mean()
            ctx.save_for_backward(exp.div_(denom.unsqueeze(1)), target, rows)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        softmax, target, rows = ctx.saved_tensors
        scale = grad_loss / softmax.shape[0]
        grad = softmax * scale
        grad[rows, target[rows]] -= scale
        return grad.to(ctx.input_dtype), None, None


class PartialFCLoss(nn.Module):
    """ArcFace over W sharded by columns across the ranks of `group` (see the module docstring).

    Args:
        num_classes: C, classes over all ranks.
        embedding_size: d.
        margin: additive angular margin in degrees (PML's `ArcFaceLoss` default 28.6).
        scale: logit scale s (PML's default 64).
        sample_rate: fraction of each rank's columns used per step; 1.0 is the exact full loss.
        seed: base of the per-step sampling seed.
        group: the process group (default: the world); without one, a single-rank loss.
        weight: this rank's (d, C_local) shard to start from (e.g. `shard_columns(W, ws, rank)`);
            default: PML's initialisation, N(0, 1), from torch's global generator.
        device: where a default weight is created.
        dtype: dtype of a default weight.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 28.6,
        scale: float = 64.0,
        sample_rate: float = 1.0,
        seed: int = 0,
        group: ProcessGroup | None = None,
        weight: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise PartialFCError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.num_classes, self.embedding_size = num_classes, embedding_size
        self.margin_degrees, self.scale, self.sample_rate = margin, scale, sample_rate
        self.margin = math.radians(margin)
        self.seed, self.group = seed, group
        self.world_size, self.rank = world_of(group)
        self.start, self.stop = shard_range(num_classes, self.world_size, self.rank)
        num_local = self.stop - self.start
        if weight is None:
            weight = torch.empty(embedding_size, num_local, device=device, dtype=dtype)
            nn.init.normal_(weight)
        elif tuple(weight.shape) != (embedding_size, num_local):
            raise PartialFCError(
                f"rank {self.rank} of {self.world_size} holds columns [{self.start}, {self.stop}) of "
                f"{num_classes}: its weight must be ({embedding_size}, {num_local}), got {tuple(weight.shape)}"
            )
        self.weight = nn.Parameter(weight.detach().clone())
        self.num_sample = max(1, int(sample_rate * num_local))
        self._calls = 0

    def extra_repr(self) -> str:
        """Shown by print(module)."""
        return (
            f"classes={self.num_classes}, local=[{self.start}, {self.stop}), d={self.embedding_size}, "
            f"margin={self.margin_degrees}deg, scale={self.scale}, sample_rate={self.sample_rate}"
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, step: int | None = None) -> PartialFCOutput:
        """The loss of this rank's batch (every rank calls it with a batch of the same size).

        Args:
            embeddings: (n, d) this rank's embeddings.
            labels: (n,) their global class indices in [0, C).
            step: the training step, seeding the negative sampling; default: calls so far.

        Raises:
            PartialFCError: on every rank alike (shapes and labels are checked after gathering).
        """
        if step is None:
            step = self._calls
        self._calls += 1
        all_emb, all_labels = self._gather(embeddings, labels)
        index = self._sample(all_labels, step)
        num_local = self.stop - self.start
        local = (all_labels >= self.start) & (all_labels < self.stop)
        offset = (all_labels - self.start).clamp(0, num_local - 1)
        weight: torch.Tensor = self.weight
        if index.numel() == num_local:
            target = torch.where(local, offset, -1)
        else:
            # Position of each local column among the sampled ones; -1 where not sampled (never
            # for a positive, which sampling always keeps).
            position = torch.full((num_local,), -1, dtype=torch.long, device=index.device)
            position[index] = torch.arange(index.numel(), device=index.device)
            weight, target = self.weight[:, index], torch.where(local, position[offset], -1)
        # Dividing the (N, C_local) product by the column norms equals normalising W's columns
        # first (PML), without a normalised (d, C_local) copy of W and its backward temporaries.
        inv_norm = weight.norm(dim=0).clamp_min(1e-12).reciprocal()
        cosine = (F.normalize(all_emb, dim=1) @ weight) * inv_norm
        rows = torch.nonzero(target >= 0).squeeze(1)
        cols = target[rows]
        cos_t = cosine[rows, cols]
        # PML adds (modified - cosine) at the target rather than overwriting it; same here.
        logits = cosine.index_put((rows, cols), cos_t + (arcface_target_logits(cos_t, self.margin) - cos_t))
        loss = _ShardedSoftmaxCE.apply(logits * self.scale, target, self.group)
        return PartialFCOutput(loss, index)

    def _gather(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch, after checks every rank makes on the same gathered shapes."""
        rows, width = (embeddings.shape[0], embeddings.shape[-1]) if embeddings.dim() else (0, 0)
        shape = torch.tensor([embeddings.dim(), rows, width, labels.numel()], device=embeddings.device)
        shapes = [shape] if self.world_size == 1 else [torch.empty_like(shape) for _ in range(self.world_size)]
        if self.world_size > 1:
            dist.all_gather(shapes, shape, group=self.group)
        for rank, (ndim, n, d, n_labels) in enumerate(s.tolist() for s in shapes):
            if ndim != 2 or d != self.embedding_size or n_labels != n:
                raise PartialFCError(
                    f"rank {rank} sent embeddings of {ndim} dims, width {d}, with {n_labels} labels for {n} "
                    f"rows: each rank needs (n, {self.embedding_size}) embeddings and n labels"
                )
            if n == 0:
                raise PartialFCError(f"rank {rank} sent an empty batch: every rank needs at least one row")
            if n != shapes[0][1].item():
                raise PartialFCError(f"ranks sent batches of {[s[1].item() for s in shapes]} rows: use one batch size")
        labels = labels.reshape(-1).to(device=embeddings.device, dtype=torch.long)
        if self.world_size == 1:
            all_emb, all_labels = embeddings, labels
        else:
            all_emb = funcol.all_gather_single_autograd(embeddings, 0, self._process_group())
            all_emb = funcol.wait_tensor(all_emb)
            parts = [torch.empty_like(labels) for _ in range(self.world_size)]
            dist.all_gather(parts, labels, group=self.group)
            all_labels = torch.cat(parts)
        if all_labels.numel() and (all_labels.min() < 0 or all_labels.max() >= self.num_classes):
            bad = all_labels[(all_labels < 0) | (all_labels >= self.num_classes)][:5].tolist()
            raise PartialFCError(f"labels {bad} are outside [0, {self.num_classes}): check the dataset's classes")
        return all_emb, all_labels

    def _process_group(self) -> ProcessGroup:
        """The group collectives run on: the one given, else the default (world) group."""
        return self.group if self.group is not None else cast(ProcessGroup, dist.group.WORLD)

    def _sample(self, all_labels: torch.Tensor, step: int) -> torch.Tensor:
        """Sorted local column indices of this step: every local positive, then random negatives."""
        num_local = self.stop - self.start
        device = self.weight.device
        if self.num_sample >= num_local:
            return torch.arange(num_local, device=device)
        local = all_labels[(all_labels >= self.start) & (all_labels < self.stop)]
        positives = torch.unique(local - self.start).cpu()
        if positives.numel() >= self.num_sample:
            return positives.to(device)
        generator = torch.Generator().manual_seed(_step_seed(self.seed, step, self.rank))
        score = torch.rand(num_local, generator=generator)
        score[positives] = 2.0  # above every draw, so topk keeps all positives
        return torch.topk(score, self.num_sample).indices.sort().values.to(device)


def _step_seed(seed: int, step: int, rank: int) -> int:
    """A seed for (seed, step, rank): each rank draws its own columns, reproducibly per step."""
    return ((seed * 1_000_003 + step) * 10_007 + rank) & ((1 << 63) - 1)
