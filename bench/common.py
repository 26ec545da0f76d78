"""What the bench scripts share: the `--device` option, the CPU's name, and a device sync for timing."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

DEVICES = ("cpu", "cuda")


def default_device() -> str:
    """cuda where torch sees a GPU, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device_arg(parser: argparse.ArgumentParser, multiple: bool = False) -> None:
    """`--device cpu|cuda` (default: cuda if available, else cpu); `multiple`: repeatable, a list."""
    help_ = "where models and tensors live (default: cuda if torch sees a GPU, else cpu)"
    if multiple:
        parser.add_argument("--device", choices=DEVICES, action="append", help=help_ + "; repeat to time several")
    else:
        parser.add_argument("--device", choices=DEVICES, default=default_device(), help=help_)


def device_from(name: str) -> torch.device:
    """The torch.device of a `--device` value, refusing cuda where there is none (no silent CPU run)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device cuda, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's, for a bench's table and JSON."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work so a timer reads finished work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
