"""The small callback object that long `ml` functions report through.

The worker's JobContext has the same shape, so a job runner passes its context straight in; tests
and notebooks use `LocalCallbacks`, which keeps everything in memory or in a folder. Nothing here
imports the platform.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ml.core.errors import Stopped
from ml.core.safe_load import load_checkpoint_bytes


@runtime_checkable
class Callbacks(Protocol):
    """What a long-running `ml` function may call while it works."""

    def progress(self, step: int, total: int, **metrics: float) -> None:
        """Report `step` of `total`; metrics (loss terms, accuracy) become the dashboard's curves."""

    def log(self, message: str) -> None:
        """A line for the job's event log."""

    def should_stop(self) -> bool:
        """True when the function must checkpoint and return early (cancel, lost lease, SIGTERM)."""

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Persist `state` (tensors, optimiser state, RNG, step) atomically."""

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last saved state, or None when starting fresh."""

    def preview(self, name: str, png: bytes) -> None:
        """Replace the live preview image `name` (PNG bytes)."""


class LocalCallbacks:
    """In-process callbacks for tests, notebooks and benchmarks.

    Args:
        checkpoint_dir: where checkpoints go (`checkpoint.pt`); None keeps them in memory.
        stop_after_checkpoints: ask the function to stop right after this many checkpoints were
            saved, which is how tests simulate a worker killed mid-run.
        raise_on_stop: raise `ml.core.errors.Stopped` from `save_checkpoint` instead of answering
            `should_stop()`, for code paths that must be interrupted abruptly.
    """

    def __init__(
        self,
        checkpoint_dir: str | Path | None = None,
        stop_after_checkpoints: int | None = None,
        raise_on_stop: bool = False,
    ) -> None:
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.stop_after_checkpoints = stop_after_checkpoints
        self.raise_on_stop = raise_on_stop
        self.steps: list[tuple[int, int, dict[str, float]]] = []
        self.messages: list[str] = []
        self.previews: dict[str, bytes] = {}
        self.preview_count = 0
        self.checkpoints_saved = 0
        self._checkpoint_bytes: bytes | None = None

    def progress(self, step: int, total: int, **metrics: float) -> None:
        self.steps.append((step, total, {k: float(v) for k, v in metrics.items()}))

    def log(self, message: str) -> None:
        self.messages.append(message)

    def should_stop(self) -> bool:
        return self.stop_after_checkpoints is not None and self.checkpoints_saved >= self.stop_after_checkpoints

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.checkpoint_dir / "checkpoint.pt.tmp"
            tmp.write_bytes(data)
            tmp.replace(self.checkpoint_dir / "checkpoint.pt")
        else:
            self._checkpoint_bytes = data
        self.checkpoints_saved += 1
        if self.raise_on_stop and self.should_stop():
            raise Stopped(f"stopped after {self.checkpoints_saved} checkpoints", self.checkpoints_saved)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, read as data only (`ml.core.safe_load`: it may have been written by anyone)."""
        if self.checkpoint_dir is not None:
            path = self.checkpoint_dir / "checkpoint.pt"
            if not path.exists():
                return None
            data = path.read_bytes()
        elif self._checkpoint_bytes is None:
            return None
        else:
            data = self._checkpoint_bytes
        return load_checkpoint_bytes(data, "checkpoint.pt")

    def preview(self, name: str, png: bytes) -> None:
        self.previews[name] = png
        self.preview_count += 1

    def resume(self) -> LocalCallbacks:
        """A fresh callbacks object that sees this one's last checkpoint (a new attempt)."""
        nxt = LocalCallbacks(self.checkpoint_dir)
        nxt._checkpoint_bytes = self._checkpoint_bytes
        return nxt
