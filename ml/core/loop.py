"""The one resumable loop: restore, run the units of work, checkpoint, stop, report.

A trainer subclasses `ResumableLoop` and supplies its step (one unit of work: an epoch of ArcFace
or GAN training, one optimiser step of the encoder or of an inversion) and the dict of stateful
objects it is made of; the loop owns the rest, once for every trainer:

- restore: `callbacks.load_checkpoint()`; a checkpoint of another `kind` is ignored, one of this
  kind with another fingerprint is refused (`accept`); each object gets its state back and
  optimisers are fitted to their parameters' device and layout (`fit_optimizer_state`);
- the units `range(done, total)`, each run by `step(index)`;
- after each unit: a checkpoint when one is due (every `checkpoint_every` units, and after the last
  one when `checkpoint_at_end`), then `callbacks.should_stop()` (before the due checkpoint when
  `poll_stop_first`); a stop saves a checkpoint if this unit has none yet and raises `Stopped`;
- the checkpoint: `kind`, `fingerprint`, the unit counter, every object's `state_dict()` and
  `extra_state()`, in the portable form (`portable`: CPU, contiguous) so any worker resumes it.

Room for what comes next, in `LoopPolicy` (recorded, documented, used where shown):
- device and precision: `autocast()` enters `torch.autocast` when `autocast_dtype` is set, and a
  `scaler` (`torch.amp.GradScaler`) is saved and restored with the other state;
- distribution: `rank` and `world_size`; every rank builds the checkpoint's state (sharded objects
  gather there), only rank 0 writes it (`is_main`);
- precision per device (`for_device`: bf16 autocast on CUDA where supported, else fp16 with a
  scaler; fp32 on the CPU), channels_last on CUDA (`layout`), gradient accumulation, clipping and
  the scaler's unscale/step/update (`backward`, `step`), for a trainer's step to call;
- a sampler that resumes mid-epoch: make the unit a step and put the sampler (anything with
  `state_dict` / `load_state_dict`) in `stateful()`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ml.core.callbacks import Callbacks
from ml.core.device_state import fit_optimizer_state, portable
from ml.core.errors import InputError, Stopped, stop_message
from ml.core.fingerprint import resumable
from ml.core.state import Stateful

__all__ = ["LoopPolicy", "ResumableLoop", "scaled_lr", "warmup_factor"]


@dataclass
class LoopPolicy:
    """How the loop runs: device, precision and distribution (most fields are room for what comes next).

    Attributes:
        device: where the step runs.
        autocast_dtype: None for full precision; torch.float16 / bfloat16 for `autocast()`.
        scaler: a `torch.amp.GradScaler` for float16 steps; saved and restored as "scaler".
        rank: this process's rank; only rank 0 writes checkpoints.
        world_size: processes training together.
        accumulate: micro-batches per optimiser step.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None
    scaler: Stateful | None = None
    rank: int = 0
    world_size: int = 1
    accumulate: int = 1
    clip_grad_norm: float | None = None
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device | str, mixed_precision: bool = True, **kw: Any) -> LoopPolicy:
        """The precision a device trains in: on CUDA bf16 autocast where supported, else fp16 with a
        grad scaler, and channels_last; fp32 on the CPU (and anywhere with `mixed_precision` False)."""
        device = torch.device(device)
        if device.type != "cuda" or not mixed_precision:
            return cls(device=device, **kw)
        if torch.cuda.is_bf16_supported():
            return cls(device=device, autocast_dtype=torch.bfloat16, channels_last=True, **kw)
        scaler = torch.amp.GradScaler("cuda")
        return cls(device=device, autocast_dtype=torch.float16, scaler=scaler, channels_last=True, **kw)

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints and reports."""
        return self.rank == 0

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d batch in the memory format the step computes in (channels_last on CUDA)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch: the loss divided by `accumulate`, scaled when a scaler is set."""
        loss = loss / self.accumulate
        if self.scaler is not None:
            loss = self.scaler.scale(loss)  # type: ignore[attr-defined]
        loss.backward()

    def step(self, optimizers: Sequence[torch.optim.Optimizer], micro: int) -> bool:
        """After micro-batch `micro` (0-based, counted over the run): at the end of each group of
        `accumulate`, unscale, clip every optimiser's gradients to `clip_grad_norm` (one norm over
        all of them), step and zero them. Returns whether it stepped.

        A scaler skips the step of a batch whose gradients overflowed (`GradScaler.step`).
        """
        if (micro + 1) % self.accumulate:
            return False
        scaler = self.scaler
        if self.clip_grad_norm is not None:
            if scaler is not None:
                for opt in optimizers:
                    scaler.unscale_(opt)  # type: ignore[attr-defined]
            params = [p for opt in optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        for opt in optimizers:
            if scaler is not None:
                scaler.step(opt)  # type: ignore[attr-defined]
            else:
                opt.step()
        if scaler is not None:
            scaler.update()  # type: ignore[attr-defined]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        return True

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision context a step runs its forward pass in."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int | None) -> float:
    """Linear scaling (Goyal et al.): `base_lr` is for `reference_batch`; None keeps it as given."""
    return base_lr if reference_batch is None else base_lr * global_batch / reference_batch


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The lr factor of optimiser step `step` (0-based) under a linear warmup of `warmup_steps`: (step + 1) / warmup."""
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


class ResumableLoop:
    """Base of every resumable trainer: subclasses supply `stateful()` and `step()`.

    Class attributes a subclass sets:
        kind: the checkpoint kind (kept stable: old checkpoints load by it).
        unit: what one step is ("epoch" or "step"); also the checkpoint key of the unit counter.
        what: the run's name in messages ("training", "encoder training").
        mismatch_error: the `InputError` subclass raised for a checkpoint of another run.
        mismatch_message: its message.

    Args:
        callbacks: progress, log, checkpoints and stop requests; None runs without any of them.
        total: units in the whole run.
        key: the run's fingerprint (`ml.core.fingerprint.fingerprint`).
        policy: device, precision and distribution.
        checkpoint_every: units between checkpoints (0: only when stopping and at the end).
        checkpoint_at_end: also save after the last unit.
        poll_stop_first: ask `should_stop()` before the unit's due checkpoint rather than after it.
    """

    kind: ClassVar[str] = ""
    unit: ClassVar[str] = "epoch"
    what: ClassVar[str] = "training"
    mismatch_error: ClassVar[type[InputError]] = InputError
    mismatch_message: ClassVar[str] = "the checkpoint found belongs to a different config or dataset; cannot resume"

    def __init__(
        self,
        callbacks: Callbacks | None,
        total: int,
        key: str = "",
        policy: LoopPolicy | None = None,
        checkpoint_every: int = 1,
        checkpoint_at_end: bool = True,
        poll_stop_first: bool = False,
    ) -> None:
        self.callbacks = callbacks
        self.total = total
        self.fingerprint = key
        self.policy = policy or LoopPolicy()
        self.checkpoint_every = checkpoint_every
        self.checkpoint_at_end = checkpoint_at_end
        self.poll_stop_first = poll_stop_first
        self.done = 0
        self.resumed = False
        self.checkpoints = 0
        self.checkpoint_seconds = 0.0
        self.history: list[dict[str, Any]] = []  # one row per epoch or report, saved with the state

    # Hooks ------------------------------------------------------------------------------------

    def stateful(self) -> dict[str, Stateful]:
        """The objects saved and restored, by checkpoint key (models, optimisers, schedulers, RNG)."""
        raise NotImplementedError

    def step(self, index: int) -> None:
        """Run unit `index` (0-based): train, and report through `self.callbacks` as often as it likes."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Plain values saved beside the objects: the history by default (add timings, counters)."""
        return {"history": self.history}

    def load_extra(self, state: Mapping[str, Any]) -> None:
        """Take back what `extra_state` saved."""
        self.history = list(state["history"])

    def accept(self, state: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The checkpoint to resume, None to start afresh; raises `mismatch_error` for another run's."""
        return resumable(state, self.kind, self.fingerprint, self.mismatch_error, self.mismatch_message)

    def resumed_message(self) -> str:
        """The log line of a resume."""
        return f"resumed from the checkpoint of {self.unit} {self.done}"

    # The loop ---------------------------------------------------------------------------------

    def objects(self) -> dict[str, Stateful]:
        """`stateful()` plus the policy's grad scaler."""
        objects = self.stateful()
        if self.policy.scaler is not None:
            objects["scaler"] = self.policy.scaler
        return objects

    def restore(self) -> int:
        """Load the last checkpoint of this run, if any; returns the units it had done."""
        if self.callbacks is None:
            return 0
        state = self.accept(self.callbacks.load_checkpoint())
        if state is None:
            return 0
        for name, obj in self.objects().items():
            obj.load_state_dict(state[name])
            if isinstance(obj, torch.optim.Optimizer):
                fit_optimizer_state(obj)  # the checkpoint may come from another device or layout
        self.load_extra(state)
        self.done, self.resumed = int(state[self.unit]), True
        self.callbacks.log(self.resumed_message())
        return self.done

    def save(self) -> None:
        """Write this run's checkpoint (portable form) through the callbacks; only rank 0 writes.

        With several ranks every rank builds the state (an object's `state_dict` may be a
        collective, as a sharded one gathering every rank's shard) and rank 0 writes it.
        """
        if self.callbacks is None or (not self.policy.is_main and self.policy.world_size == 1):
            return
        started = time.perf_counter()
        state: dict[str, Any] = {"kind": self.kind}
        if self.fingerprint:
            state["fingerprint"] = self.fingerprint
        state[self.unit] = self.done
        state.update({name: obj.state_dict() for name, obj in self.objects().items()})
        state.update(self.extra_state())
        if not self.policy.is_main:
            return
        self.callbacks.save_checkpoint(portable(state))
        self.checkpoints += 1
        self.checkpoint_seconds += time.perf_counter() - started

    def run(self) -> None:
        """Restore, then run every remaining unit with its checkpoint and stop check.

        Raises:
            Stopped: `callbacks.should_stop()` answered True before the last unit; its checkpoint is saved.
        """
        self.restore()
        for index in range(self.done, self.total):
            self.step(index)
            self.done = index + 1
            self._after_unit()

    def _after_unit(self) -> None:
        cb, done = self.callbacks, self.done
        if cb is None:
            return
        every = self.checkpoint_every
        due = (every > 0 and done % every == 0 and done < self.total) or (done == self.total and self.checkpoint_at_end)
        stop = self.poll_stop_first and done < self.total and cb.should_stop()
        if due:
            self.save()
        stop = stop or (not self.poll_stop_first and done < self.total and cb.should_stop())
        if stop:
            if not due:
                self.save()
            raise Stopped(stop_message(self.what, self.unit, done, self.total), done, self.total)
