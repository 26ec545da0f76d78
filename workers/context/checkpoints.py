"""Checkpoints: one complete `checkpoint.pt` per job in the store, its key and step in the job row."""

from __future__ import annotations

import io
from typing import Any

from jobs.errors import JobInputError
from jobs.store import join_key
from workers.context.base import ContextBase


class Checkpoints(ContextBase):
    """Save the runner's state and load the last one saved by any attempt of this job."""

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write `checkpoint.pt` as one complete object, then record its key and step in the job row."""
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        key = join_key(f"jobs/{self.job_id}", "checkpoint.pt")
        self.store.put_bytes(key, buf.getvalue(), "application/octet-stream")
        step = state.get("step", state.get("epoch"))
        self.checkpoint_key = key
        self._fenced(checkpoint_key=key, checkpoint_step=int(step) if step is not None else None)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state of the last checkpoint of this job (from any earlier attempt), or None.

        Raises:
            JobInputError: the stored checkpoint holds code or is not a checkpoint (the job fails).
        """
        if not self.checkpoint_key:
            return None
        from ml.core.safe_load import UnsafeFileError, load_checkpoint_bytes

        data = self.store.get_bytes(self.checkpoint_key)
        try:
            # Read as data only: an object in the store is not proof that this platform wrote it.
            state = load_checkpoint_bytes(data, self.checkpoint_key)
        except UnsafeFileError as exc:
            raise JobInputError(f"cannot resume from the checkpoint: {exc}") from None
        self.log(f"resumed from checkpoint at step {state.get('step', state.get('epoch'))}")
        return state
