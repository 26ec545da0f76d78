"""TorchScript "generators" that do more than compute: they read, write and run code at load time.

Each one honours the generator contract (z (N, 8) -> (N, 1, 4, 4) images in [-1, 1]), so without
the op allowlist it would pass every check and run: that is what makes the tests that refuse them
meaningful (tests/security/test_torchscript.py shows each one working when unguarded).
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

LATENT_DIM = 8
SECRET = b"pg-password:hunter"  # 18 bytes; the reader turns the first 16 into a 4x4 image


class FileReader(nn.Module):
    """Pixels are the first 16 bytes of `path` (`aten::from_file`), scaled to [-1, 1]."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        data = torch.from_file(self.path, False, 16, dtype=torch.uint8)
        image = data.float().div(127.5).sub(1.0).reshape(1, 1, 4, 4)
        return image.expand(z.shape[0], 1, 4, 4) + 0.0 * z.sum()


class FileWriter(nn.Module):
    """Maps `path` shared (`from_file(shared=True)` creates it if absent) and fills it with b'X'."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        target = torch.from_file(self.path, True, 16, dtype=torch.uint8)
        target.fill_(88)
        # The written tensor feeds the output, so TorchScript cannot drop the write as dead code.
        return torch.tanh(z[:, :1, None, None].expand(-1, 1, 4, 4)) + 0.0 * target.float().sum()


class LoadTimeWriter(nn.Module):
    """Writes `path` from `__setstate__`, which `torch.jit.load` runs before anyone sees a graph."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.seen = torch.zeros(1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z[:, :1, None, None].expand(-1, 1, 4, 4))

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.path, self.seen, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.path = state[0]
        self.training = state[2]
        target = torch.from_file(self.path, True, 16, dtype=torch.uint8)
        target.fill_(88)
        self.seen = target.float().sum().reshape(1)


class Plain(nn.Module):
    """A legitimate program: tanh of the latent's first coordinate."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z[:, :1, None, None].expand(-1, 1, 4, 4))


def scripted(module: nn.Module) -> bytes:
    """`torch.jit.save(torch.jit.script(module))` as bytes."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        torch.jit.save(torch.jit.script(module.eval()), buffer)
    return buffer.getvalue()


def save(data: bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rewrite(
    archive: bytes, replace: dict[str, bytes | None] | None = None, add: dict[str, bytes] | None = None
) -> bytes:
    """A copy of a zip with entries replaced or removed (`replace`: names below the root folder) and
    entries added (`add`: whole names, so they can also be hostile ones)."""
    replace, add = replace or {}, add or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        root = src.namelist()[0].split("/", 1)[0]
        for info in src.infolist():
            rel = info.filename.split("/", 1)[1]
            if rel in replace:
                if replace[rel] is not None:
                    dst.writestr(info.filename, replace[rel])
            else:
                dst.writestr(info, src.read(info))
        for name, data in add.items():
            dst.writestr(name.format(root=root), data)
    return out.getvalue()


CODE = "code/__torch__/tests/security/programs.py"  # where torch.jit.save puts this module's classes
SOURCE = """class Plain(Module):
  __parameters__ = []
  __buffers__ = []
  training : bool
  _is_full_backward_hook : Optional[bool]
  def forward(self: __torch__.Plain,
    z: Tensor) -> Tensor:
    {body}
"""


def with_source(body: str, head: str = "") -> bytes:
    """The `Plain` archive with its forward's body replaced by hand-written serialized source."""
    return rewrite(scripted(Plain()), {CODE: (head + SOURCE.format(body=body)).encode()})
