"""Hostile torch files for the untrusted-file tests: real pickles that would create a canary file.

`Payload(canary)` pickles as `os.system("touch <canary>")`: loading it with a plain unpickler (or
`torch.load(..., weights_only=False)`) runs the command, so a canary that stays absent proves the
file was read as data. `test_the_payload_runs_under_a_plain_load` checks that it really would.
"""

from __future__ import annotations

import io
import os
import shlex
from pathlib import Path
from typing import Any

import torch

from ml.arcface.model import save_trained
from ml.backbones import create_backbone
from tests.support import model_config

TINY_KWARGS: dict[str, Any] = {"base_width": 4, "embedding_size": 8, "in_channels": 1, "input_size": [16, 16]}
CLASS_NAMES = ["zero", "one", "two"]


class Payload:
    """Pickles as a call of `os.system` that touches `canary`."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.canary))}",)


def tiny_model(folder: Path) -> dict[str, Path]:
    """A real trained-model folder (backbone.pt, arcface.pt, config.json) as `save_trained` writes it."""
    torch.manual_seed(0)
    backbone = create_backbone("se_resnet18", **TINY_KWARGS)
    config = model_config(TINY_KWARGS, 16)
    return save_trained(folder, backbone, torch.randn(8, len(CLASS_NAMES)), config, CLASS_NAMES)


def saved(obj: Any, protocol: int = 2, legacy: bool = False) -> bytes:
    """`obj` as `torch.save` writes it (zip format, or the legacy one), with pickle `protocol`."""
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def with_payload(path: Path, canary: Path, protocol: int = 2, legacy: bool = False) -> bytes:
    """The torch file at `path` with a `Payload` added beside its real content (what an attacker sends)."""
    blob = torch.load(path, weights_only=True)
    blob["note"] = Payload(canary)
    return saved(blob, protocol, legacy)
