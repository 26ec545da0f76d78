"""The two signals every `ml` function raises to its caller, importable before torch.

- `InputError`: the config or the data cannot be used (a bad hyperparameter, an empty dataset, a
  checkpoint of another run). Every such error in `ml` subclasses it (`TrainConfigError`,
  `DatasetError`, `GANConfigError`, `InversionError`, `EmbedSettingsError`...), so a caller maps
  them to "bad input" with one `except InputError`. It is a `ValueError`, as they all were.
- `Stopped`: the function saved its checkpoint and returned early because `callbacks.should_stop()`
  answered True; calling it again with the same checkpoint store resumes.

This module imports nothing heavy: the worker's outcome mapping imports it before torch is loaded.
"""

from __future__ import annotations

__all__ = ["InputError", "Stopped", "stop_message"]


class InputError(ValueError):
    """The config or the data cannot be used; the message says what was wrong and what to do."""


class Stopped(Exception):
    """A run saved its checkpoint and stopped early because `callbacks.should_stop()` answered True.

    Args:
        message: what stopped where, e.g. "training stopped after epoch 2 (checkpoint saved)".
        step: how many units (epochs, steps, chunks) are done and saved; a new run starts after them.
        total: how many units the whole run has, when known.
    """

    def __init__(self, message: str, step: int, total: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.total = total


def stop_message(what: str, unit: str, done: int, total: int) -> str:
    """The message of a `Stopped`: what stopped, after which unit, and what to do."""
    return f"{what} stopped after {unit} {done} of {total} (checkpoint saved); run again to resume"
