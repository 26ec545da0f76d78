"""ArcFace training on N ranks: the backbone in DDP, W sharded (partial FC), a resumable shard sampler.

`train_embedding_ddp(dataset, config, callbacks, options)` runs in the job's process (the host)
and spawns `options.world_size` ranks (`ml.core.distributed.run_ranks`: gloo on CPU, NCCL with
rank r on cuda:r). The host runs no rank: rank 0 sends progress, log lines, checkpoints and the
result over a queue and the host replays them to `callbacks` (the job context); the host polls
`callbacks.should_stop()` and every rank sees the stop at its next step.

The same run as `ml.arcface.train.train_embedding` with one rank, spread over N:
- `config.batch_size` is the global batch; rank r takes its r-th slice of every global batch,
  with the same shuffle and augmentation draws (seeded by (seed, epoch)) as one rank, so N ranks
  and one see the same samples step by step;
- the backbone starts from the same seeded weights on every rank; W from the same full N(0, 1)
  draw as pytorch-metric-learning's, each rank keeping its columns (`shard_range`) and their
  optimiser state;
- the loss is the global batch's mean (`PartialFCLoss`); backward scales it by N so DDP's
  gradient average is the sum, and W's local gradient is scaled back;
- precision and stepping come from `LoopPolicy.for_device` (bf16 autocast on CUDA where
  supported, else fp16 with a grad scaler; fp32 on CPU; channels_last on CUDA), with
  `config.accumulate` micro-batches per optimiser step (DDP syncs on the last), gradient clipping,
  lr scaled linearly with the global batch (`lr_reference_batch`) and a linear warmup;
- `config.sample_rate` < 1: partial FC's negative sampling, the head stepped by `ColumnSGD`
  (only the sampled columns of W and of their momentum move);
- one unit of the loop is one (micro-)step, so a checkpoint can fall mid-epoch: it holds the model and
  its optimiser (the same on every rank), every rank's W shard and optimiser shard
  (`ShardedHead`), the sampler's position and the epoch's running sums; it resumes on any world
  size (the head is re-sharded on load);
- every step's progress carries each rank's samples/s (its rows over its time inside steps this
  attempt, checkpoints excluded) and, on CUDA, its peak allocated memory: `rank{r}/samples_per_s`,
  `rank{r}/gpu_mem_mb` (`ml.core.distributed.rank_metrics`, one small all_gather a step).
The saved result is `TrainedEmbedding` with the full (d, C) W, as one rank's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ml.arcface.config import TrainConfig, TrainConfigError, TrainedEmbedding, validate_config
from ml.arcface.partial_fc import PartialFCLoss
from ml.arcface.prepare import Prepared, finish, prepare, train_tensors
from ml.arcface.ranks import AveragedModel, ColumnSGD, RankCallbacks, make_optimizers
from ml.arcface.sampler import ShardSampler
from ml.arcface.shards import ShardedHead, gather_columns, shard_columns
from ml.arcface.train import _augment
from ml.backbones import BackboneError, create_backbone
from ml.core.callbacks import Callbacks, LocalCallbacks
from ml.core.distributed import (
    RankChannel,
    RankFailed,
    average_buffers,
    exit_with_parent,
    init_rank,
    rank_metrics,
    run_ranks,
)  # fmt: skip
from ml.core.errors import InputError, Stopped
from ml.core.fingerprint import fingerprint
from ml.core.loop import LoopPolicy, ResumableLoop, scaled_lr, warmup_factor
from ml.core.safe_load import load_checkpoint_bytes
from ml.core.seeding import epoch_seed, seed_everything
from ml.core.state import Stateful

__all__ = ["CHECKPOINT_KIND", "DistributedOptions", "RankFailed", "ShardSampler", "train_embedding_ddp"]

CHECKPOINT_KIND = "train_embedding_ddp"


@dataclass
class DistributedOptions:
    """How the ranks run.

    Attributes:
        world_size: ranks (GPUs on CUDA, gloo processes on CPU).
        device_type: "cpu" or "cuda" (rank r on cuda:r).
        timeout_s: collective timeout of the process group, and the host's grace before it ends
            the other ranks after one died.
        checkpoint_every: steps between checkpoints (0: at every epoch's end).
        threads: torch threads per rank (0: the host's CPUs divided by world_size, at least 1).
        die_at: (rank, step): that rank kills itself (SIGKILL) before that step; for tests.
    """

    world_size: int = 2
    device_type: str = "cpu"
    timeout_s: float = 120.0
    checkpoint_every: int = 0
    threads: int = 0
    die_at: tuple[int, int] | None = None


class _DDPLoop(ResumableLoop):
    """One unit is one step of the global batch; see the module docstring."""

    kind = CHECKPOINT_KIND
    unit = "step"
    mismatch_error = TrainConfigError

    def __init__(self, cb: Callbacks, config: TrainConfig, parts: dict[str, Any], policy: LoopPolicy,
                 key: str, options: DistributedOptions) -> None:  # fmt: skip
        self.steps_per_epoch = parts["sampler"].steps
        every = options.checkpoint_every or self.steps_per_epoch
        super().__init__(cb, config.epochs * self.steps_per_epoch, key, policy, checkpoint_every=every)
        self.config, self.options, self.p = config, options, parts
        self.sums = [0.0, 0.0, 0.0]  # the epoch's loss x rows, hits, rows so far
        self.busy = [0.0, 0.0]  # this attempt's seconds inside steps and this rank's rows in them

    def stateful(self) -> dict[str, Stateful]:
        p = self.p
        return {
            "model": AveragedModel(p["backbone"]),
            "optimizer": p["opt"],
            "scheduler": p["sched"],
            "head": p["head"],
            "head_scheduler": p["head_sched"],
            "sampler": p["sampler"],
        }

    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history, "epoch_sums": list(self.sums), "world_size": self.policy.world_size}

    def load_extra(self, state: Any) -> None:
        self.history = list(state["history"])
        self.sums = [float(v) for v in state["epoch_sums"]]

    def step(self, index: int) -> None:
        p, policy, config = self.p, self.policy, self.config
        started = time.perf_counter()
        epoch, position = divmod(index, self.steps_per_epoch)
        if self.options.die_at == (policy.rank, index):
            os.kill(os.getpid(), signal.SIGKILL)
        if position == 0:
            self.sums = [0.0, 0.0, 0.0]
        idx, offsets, flips = p["sampler"].take(epoch, position)
        idx = idx.to(policy.device)
        xb = _augment(
            p["x01"][idx],
            config.augment_shift,
            None if offsets is None else offsets.to(policy.device),
            None if flips is None else flips.to(policy.device),
        )
        yb = p["y"][idx]
        torch.manual_seed(epoch_seed(config.seed, index) * 64 + policy.rank)  # dropout: (seed, step, rank)
        p["ddp"].train()
        last_micro = (index + 1) % policy.accumulate == 0
        sync = contextlib.nullcontext() if last_micro else p["ddp"].no_sync()  # all-reduce once per step
        with sync:
            with policy.autocast():
                emb = p["ddp"](policy.layout(p["norm"].apply(xb)))
                loss, columns = p["pfc"](emb, yb, step=index)
            if isinstance(p["head_opt"], ColumnSGD):
                p["head_opt"].take(columns)  # sample_rate < 1: only these columns step
            # DDP averages the backbone's gradients: x N makes that the sum of every rank's part (W's
            # own gradient is scaled back by the hook in `_train_rank`).
            policy.backward(loss * policy.world_size)
        optimizers = [p["opt"], p["head_opt"]]
        factor = warmup_factor(index // policy.accumulate, p["warmup_steps"])
        for group in (g for opt in optimizers for g in opt.param_groups):
            group["lr"] *= factor
        policy.step(optimizers, index)
        for group in (g for opt in optimizers for g in opt.param_groups):
            group["lr"] /= factor
        loss_value, hits, rows = float(loss.detach()), self._hits(emb.detach().float(), yb), p["sampler"].batch
        if not torch.isfinite(torch.tensor(loss_value)):
            raise FloatingPointError(f"the ArcFace loss became {loss_value} at step {index + 1}; lower lr")
        self.sums = [self.sums[0] + loss_value * rows, self.sums[1] + hits, self.sums[2] + rows]
        # The loss's float() above waited for the device, so this is the step's real time.
        self.busy = [self.busy[0] + time.perf_counter() - started, self.busy[1] + idx.numel()]
        per_rank = rank_metrics(self.busy[1] / max(self.busy[0], 1e-9), policy.device)
        if self.callbacks is not None:
            self.callbacks.progress(index + 1, self.total, loss=loss_value, acc=hits / rows, **per_rank)
        if position + 1 == self.steps_per_epoch:
            total_loss, total_hits, seen = self.sums
            self.history.append(
                {"epoch": epoch + 1, "loss": total_loss / seen, "acc": total_hits / seen,
                 "lr": p["opt"].param_groups[0]["lr"]}
            )  # fmt: skip
            p["sched"].step()
            p["head_sched"].step()
            if self.callbacks is not None:
                self.callbacks.log(
                    f"epoch {epoch + 1}/{config.epochs}: loss {total_loss / seen:.4f}, "
                    f"train acc {total_hits / seen:.4f} ({policy.world_size} ranks)"
                )

    def _hits(self, emb: torch.Tensor, labels: torch.Tensor) -> int:
        """Rows of the global batch whose nearest column of the updated W is their class."""
        pfc: PartialFCLoss = self.p["pfc"]
        world = self.policy.world_size
        parts = [torch.empty_like(emb) for _ in range(world)]
        label_parts = [torch.empty_like(labels) for _ in range(world)]
        dist.all_gather(parts, emb.contiguous())
        dist.all_gather(label_parts, labels.contiguous())
        all_emb, all_labels = torch.cat(parts), torch.cat(label_parts)
        cosine = F.normalize(all_emb, dim=1) @ F.normalize(pfc.weight.detach(), dim=0)
        best, where = cosine.max(dim=1)
        top = best.clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX)
        hits = ((best == top) & (where + pfc.start == all_labels)).sum().float()
        dist.all_reduce(hits)
        return int(hits.item())


def _train_rank(rank: int, channel: RankChannel, dataset: Any, config: TrainConfig,
                checkpoint: dict[str, Any] | None, options: DistributedOptions) -> bytes | None:  # fmt: skip
    world = options.world_size
    device = torch.device("cuda", rank) if options.device_type == "cuda" else torch.device("cpu")
    prep: Prepared = prepare(dataset, config)
    seed_everything(config.seed)
    try:
        backbone = create_backbone(config.backbone, **prep.resolved["backbone_kwargs"]).to(device)
    except BackboneError as exc:
        raise TrainConfigError(f"invalid training config: {exc}") from exc
    num_classes = prep.train_ds.num_classes
    full = torch.empty(config.embedding_size, num_classes)
    nn.init.normal_(full)  # pytorch-metric-learning's ArcFaceLoss init, drawn after the backbone's, as one rank
    pfc = PartialFCLoss(num_classes, config.embedding_size, margin=config.margin, scale=config.scale,
                        seed=config.seed, sample_rate=config.sample_rate,
                        weight=shard_columns(full, world, rank).to(device))  # fmt: skip
    del full
    x01, y = train_tensors(prep, config, device)
    n = int(x01.shape[0])
    batch = min(config.batch_size, n)
    if batch % world:
        raise TrainConfigError(f"batch_size {batch} must be a multiple of gpus ({world}): it is the global batch")
    lr = scaled_lr(config.lr, batch * config.accumulate, config.lr_reference_batch)
    opt, sched, head_opt, head_sched = make_optimizers(dataclasses.replace(config, lr=lr), backbone, pfc)
    pfc.weight.register_hook(lambda grad: grad / world)  # the loss is scaled by N for DDP; W's gradient is not averaged
    policy = LoopPolicy.for_device(
        device, config.mixed_precision, rank=rank, world_size=world, accumulate=config.accumulate,
        clip_grad_norm=config.clip_grad_norm,
    )  # fmt: skip
    if policy.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    # Each rank's batch norm tracks its own slice (no forward broadcast); averaged at each checkpoint and the end.
    ddp = DistributedDataParallel(
        backbone, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False
    )
    parts = {
        "backbone": backbone, "ddp": ddp, "pfc": pfc, "opt": opt, "sched": sched, "head_opt": head_opt,
        "head_sched": head_sched, "head": ShardedHead(pfc.weight, head_opt, num_classes),
        "sampler": ShardSampler(n, batch, world, rank, config), "x01": x01, "y": y, "norm": prep.norm,
        "warmup_steps": config.warmup_epochs * max(1, n // batch) // config.accumulate,
    }  # fmt: skip
    key = fingerprint(config.to_json(), dataset.source, len(dataset), n)
    loop = _DDPLoop(RankCallbacks(channel, rank, checkpoint), config, parts, policy, key, options)
    started = time.monotonic()
    loop.run()
    weight = gather_columns(pfc.weight.detach(), num_classes)
    average_buffers(backbone)
    if rank != 0:
        return None
    # Plain tensors and numbers, sent as a torch file and read as data (`weights_only`): the host
    # evaluates and builds the result (`_result`), so no object of a rank is ever unpickled.
    state = {"backbone": backbone.cpu().state_dict(), "weight": weight.cpu(), "history": loop.history,
             "seconds": time.monotonic() - started}  # fmt: skip
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _rank_main(rank: int, world_size: int, port: int, channel: RankChannel, dataset: Any, config: TrainConfig,
               checkpoint: bytes | None, options: DistributedOptions) -> None:  # fmt: skip
    """One spawned rank: join the group, train, send rank 0's result; any error exits non-zero."""
    exit_with_parent()
    threads = options.threads or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(threads)
    device = torch.device("cuda", rank) if options.device_type == "cuda" else torch.device("cpu")
    code = 0
    try:
        init_rank(rank, world_size, port, device, options.timeout_s)
        state = None if checkpoint is None else load_checkpoint_bytes(checkpoint, "checkpoint.pt")
        result = _train_rank(rank, channel, dataset, config, state, options)
        if rank == 0:
            channel.send("result", result)
    except Stopped as exc:
        if rank == 0:
            channel.send("stopped", str(exc), (exc.step, exc.total))
    except BaseException as exc:  # reported to the host, which raises it or RankFailed
        # Only the class name and text travel; the host re-raises input errors by name (`_reraisable`).
        channel.send("error", rank, f"{type(exc).__name__}: {exc}", (type(exc).__name__, str(exc)))
        code = 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    channel.messages.close()
    channel.messages.join_thread()  # the host has the messages before this rank's exit code
    if code:
        os._exit(code)


def train_embedding_ddp(
    dataset: Any,
    config: TrainConfig,
    callbacks: Callbacks | None = None,
    options: DistributedOptions | None = None,
) -> TrainedEmbedding:
    """`train_embedding` on `options.world_size` ranks (see the module docstring).

    Raises:
        TrainConfigError, DatasetError: bad settings or data (raised by rank 0, or here before spawning).
        Stopped: `callbacks.should_stop()`; the ranks saved a checkpoint first.
        RankFailed: a rank died or failed; resume from the last checkpoint with a new attempt.
    """
    cb: Callbacks = callbacks if callbacks is not None else LocalCallbacks()
    opts = options or DistributedOptions()
    validate_config(config)
    if opts.world_size < 1:
        raise TrainConfigError(f"gpus must be >= 1, got {opts.world_size}")
    prep = prepare(dataset, config)  # data errors here, before any rank starts
    box: dict[str, Any] = {}

    def on_message(message: tuple[Any, ...]) -> bool:
        what = message[0]
        if what == "progress":
            cb.progress(message[1], message[2], **message[3])
        elif what == "log":
            cb.log(message[1])
        elif what == "checkpoint":
            cb.save_checkpoint(load_checkpoint_bytes(message[1], "checkpoint.pt"))
            return True  # a stop asked for now is seen at the next step
        elif what == "result":
            box["result"] = load_checkpoint_bytes(message[1], "the result of rank 0")
        elif what == "stopped":
            box["stopped"] = (message[1], message[2])
        elif what == "error":
            box.setdefault("errors", []).append((message[1], message[2], _reraisable(*message[3])))
        return False

    # The checkpoint goes to the ranks as bytes, each loading its own copy: tensors handed over as
    # they are would be one shared-memory storage in every rank, and optimisers update their state
    # in place (every rank's step would land on the same momentum buffers).
    state = cb.load_checkpoint()
    blob = None
    if state is not None:
        buf = io.BytesIO()
        torch.save(state, buf)
        blob = buf.getvalue()
    args = (dataset, config, blob, opts)
    try:
        run_ranks(_rank_main, opts.world_size, args, on_message, cb.should_stop, grace_s=opts.timeout_s)
    except RankFailed as exc:
        errors = box.get("errors", [])
        for _, _, kept in errors:
            if kept is not None:
                raise kept from exc
        detail = "; ".join(f"rank {r}: {text}" for r, text, _ in errors)
        raise RankFailed(f"{exc}{': ' + detail if detail else ''}") from exc
    if "stopped" in box:
        message, numbers = box["stopped"]
        raise Stopped(message, *numbers)
    return _result(prep, config, box["result"], opts)


def _result(prep: Prepared, config: TrainConfig, sent: dict[str, Any], opts: DistributedOptions) -> TrainedEmbedding:
    """Rank 0's trained weights, evaluated here on the held-out part, as a 1-rank run's result."""
    backbone = create_backbone(config.backbone, **prep.resolved["backbone_kwargs"])
    backbone.load_state_dict(sent["backbone"])
    device = torch.device("cuda", 0) if opts.device_type == "cuda" else torch.device("cpu")
    return finish(prep, config, backbone.to(device), sent["weight"], sent["history"], device, sent["seconds"])


def _input_errors(cls: type[BaseException]) -> dict[str, type[BaseException]]:
    found = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        found.update(_input_errors(sub))
    return found


def _reraisable(name: str, text: str) -> BaseException | None:
    """A rank's input error (or float error) rebuilt from its class name and text; None for any other."""
    cls = {**_input_errors(InputError), "FloatingPointError": FloatingPointError}.get(name)
    try:
        return cls(text) if cls is not None else None
    except TypeError:  # a subclass whose constructor takes other arguments: reported as text only
        return None
