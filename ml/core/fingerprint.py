"""Which run a checkpoint belongs to: a short hash of what defines the run, and the check on load.

A checkpoint records `kind` (which function wrote it) and `fingerprint` (a hash of the config, the
data and anything else that changes the result). A new attempt resumes a checkpoint only of its own
kind and refuses, with an `InputError`, one of its kind with another fingerprint: silently resuming
another run would mix two runs' state. Torch-free, so the embed pipeline and the loop share it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ml.core.errors import InputError

__all__ = ["fingerprint", "resumable"]


def fingerprint(*items: Any) -> str:
    """Short hash of JSON-able items (in order; dict keys sorted, other objects by `str`)."""
    blob = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resumable(
    state: Mapping[str, Any] | None,
    kind: str,
    key: str,
    error: type[InputError] = InputError,
    message: str = "the checkpoint found belongs to a different config or dataset; cannot resume",
) -> Mapping[str, Any] | None:
    """`state` when it is a checkpoint of this run, None when there is none or one of another kind.

    Args:
        state: what `callbacks.load_checkpoint()` returned.
        kind: the checkpoint kind this function writes.
        key: this run's `fingerprint(...)`.
        error: the `InputError` subclass to raise on a mismatch (the caller's own).
        message: its message.

    Raises:
        InputError: (as `error`) a checkpoint of this kind with another fingerprint.
    """
    if state is None or state.get("kind") != kind:
        return None
    if state.get("fingerprint") != key:
        raise error(message)
    return state
