"""The resumable loop: state saved and restored in one place, one stop signal, exact resume."""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ml.core.callbacks import LocalCallbacks
from ml.core.errors import InputError, Stopped
from ml.core.fingerprint import fingerprint, resumable
from ml.core.images import grid_png
from ml.core.loop import LoopPolicy, ResumableLoop
from ml.core.seeding import derived_seed, epoch_seed, rng_state, seed_everything, set_rng_state
from ml.core.state import GeneratorState, GlobalRNG, Stateful, TensorState


class ConfigError(InputError):
    """A trainer's own error, raised for a checkpoint of another run."""


class TinyLoop(ResumableLoop):
    """A linear model on fixed data with dropout, SGD with momentum and a step schedule."""

    kind = "tiny"
    mismatch_error = ConfigError

    def __init__(self, cb: LocalCallbacks | None, total: int = 5, key: str = "k", **kwargs: Any) -> None:
        super().__init__(cb, total, key, **kwargs)
        seed_everything(0)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=2, gamma=0.5)
        self.x, self.y = torch.randn(16, 4), torch.randn(16, 1)

    def stateful(self) -> dict[str, Stateful]:
        return {"model": self.model, "optimizer": self.opt, "scheduler": self.sched, "rng": GlobalRNG()}

    def step(self, index: int) -> None:
        # Dropout draws from the global generator: exact resume needs its state in the checkpoint.
        loss = nn.functional.mse_loss(self.model(self.x), self.y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.history.append({"epoch": index + 1, "loss": float(loss.detach())})
        if self.callbacks is not None:
            self.callbacks.progress(index + 1, self.total, loss=self.history[-1]["loss"])


def test_a_stopped_and_resumed_run_ends_with_the_uninterrupted_weights() -> None:
    straight = TinyLoop(LocalCallbacks())
    straight.run()
    killed = LocalCallbacks(stop_after_checkpoints=2)
    with pytest.raises(Stopped, match=r"^training stopped after epoch 2 of 5 \(checkpoint saved\)") as stop:
        TinyLoop(killed).run()
    assert (stop.value.step, stop.value.total, killed.checkpoints_saved) == (2, 5, 2)

    again = killed.resume()
    random.random(), np.random.rand(), torch.rand(3)  # the global generators moved on since
    resumed = TinyLoop(again)
    resumed.run()
    assert again.messages == ["resumed from the checkpoint of epoch 2"]
    assert [s[0] for s in again.steps] == [3, 4, 5]
    assert resumed.history == straight.history
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert resumed.sched.state_dict() == straight.sched.state_dict()


def test_the_checkpoint_holds_every_object_in_portable_form() -> None:
    cb = LocalCallbacks()
    TinyLoop(cb, total=2).run()
    state = cb.load_checkpoint()
    assert state is not None
    assert sorted(state) == ["epoch", "fingerprint", "history", "kind", "model", "optimizer", "rng", "scheduler"]
    assert (state["kind"], state["fingerprint"], state["epoch"], len(state["history"])) == ("tiny", "k", 2, 2)
    assert state["rng"]["numpy"]["keys"].shape == (624,)
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in state["model"].values())


def test_a_checkpoint_of_another_run_is_refused_and_of_another_kind_ignored() -> None:
    cb = LocalCallbacks(stop_after_checkpoints=1)
    with pytest.raises(Stopped):
        TinyLoop(cb).run()
    with pytest.raises(ConfigError, match="belongs to a different config or dataset") as refused:
        TinyLoop(cb.resume(), key="other").run()
    assert isinstance(refused.value, InputError) and isinstance(refused.value, ValueError)

    class OtherKind(TinyLoop):
        kind = "other"

    fresh = cb.resume()
    OtherKind(fresh).run()
    assert fresh.messages == [] and [s[0] for s in fresh.steps] == [1, 2, 3, 4, 5]


def test_checkpoint_cadence_and_where_the_stop_is_polled() -> None:
    # Every 2 steps, stop after 2 checkpoints: polled after the due checkpoint, the run stops at it.
    after = LocalCallbacks(stop_after_checkpoints=2)
    with pytest.raises(Stopped) as stop:
        TinyLoop(after, total=6, checkpoint_every=2).run()
    assert (stop.value.step, after.checkpoints_saved) == (4, 2)
    # Polled first, the stop is seen one step later and that step gets its own checkpoint.
    first = LocalCallbacks(stop_after_checkpoints=2)
    with pytest.raises(Stopped) as stop:
        TinyLoop(first, total=6, checkpoint_every=2, poll_stop_first=True).run()
    assert (stop.value.step, first.checkpoints_saved) == (5, 3)
    # No checkpoint at the end when not asked for; none at all without callbacks.
    end = LocalCallbacks()
    loop = TinyLoop(end, total=6, checkpoint_every=4, checkpoint_at_end=False)
    loop.run()
    assert (end.checkpoints_saved, loop.checkpoints) == (1, 1)
    silent = TinyLoop(None, total=3)
    silent.run()
    assert (silent.done, silent.checkpoints) == (3, 0)


def test_only_rank_zero_writes_checkpoints_and_a_scaler_joins_the_state() -> None:
    cb = LocalCallbacks()
    TinyLoop(cb, total=2, policy=LoopPolicy(rank=1, world_size=2)).run()
    assert cb.checkpoints_saved == 0
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    cb = LocalCallbacks()
    TinyLoop(cb, total=1, policy=LoopPolicy(scaler=scaler)).run()
    state = cb.load_checkpoint()
    assert state is not None and state["scaler"]["scale"] == 8.0
    with LoopPolicy(autocast_dtype=torch.bfloat16).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with LoopPolicy().autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_tensor_and_generator_state_load_in_place() -> None:
    x = torch.zeros(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    TensorState(x).load_state_dict(torch.arange(96.0).view(2, 3, 4, 4))
    assert torch.equal(x, torch.arange(96.0).view(2, 3, 4, 4)) and x.is_contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(3)
    saved = GeneratorState(gen).state_dict().clone()
    expected = torch.rand(4, generator=gen)
    GeneratorState(gen).load_state_dict(saved)
    assert torch.equal(torch.rand(4, generator=gen), expected)


def test_seeds_depend_on_their_parts_only() -> None:
    assert derived_seed(3, 1, 2) == ((3 * 1_000_003 + 17) * 7_919 + 2) * 7_919 + 3
    assert epoch_seed(3, 2) == 3 * 1_000_003 + 2 * 7_919 + 17
    seed_everything(5)
    state = rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_fingerprint_and_the_resume_check() -> None:
    assert fingerprint({"b": 1, "a": 2}, "src", 3) == fingerprint({"a": 2, "b": 1}, "src", 3)
    assert fingerprint(1) != fingerprint(2) and len(fingerprint(1)) == 16
    key = fingerprint(1)
    assert resumable(None, "tiny", key) is None
    assert resumable({"kind": "other", "fingerprint": "x"}, "tiny", key) is None
    assert resumable({"kind": "tiny", "fingerprint": key}, "tiny", key) == {"kind": "tiny", "fingerprint": key}
    with pytest.raises(InputError, match="cannot resume"):
        resumable({"kind": "tiny", "fingerprint": "x"}, "tiny", key)


def test_grid_png_tiles_with_padding() -> None:
    from io import BytesIO

    from PIL import Image

    grid = Image.open(BytesIO(grid_png(torch.rand(4, 1, 8, 8), 2, upscale=2)))
    assert (grid.size, grid.mode) == ((2 + 2 * 18, 2 + 2 * 18), "L")


def test_the_errors_module_imports_without_torch() -> None:
    code = "import sys, ml.core.errors; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
