"""A TorchScript archive is a program: check what it may do before torch ever opens it (stdlib only).

`torch.jit.load` compiles the archive's serialized source (`<root>/code/__torch__/**.py`, plain
Python syntax) and unpickles `data.pkl`, calling every `__setstate__` method it defines: code runs
at load time, before any graph can be inspected. So this module reads the zip as data and refuses,
with a message naming each refused operation:

- `__setstate__` methods, the only archive code `torch.jit.load` runs (a generator needs none);
- anything outside the archive layout torch writes (paths with `..`, absolute or backslash names,
  several roots, unexpected files, pickles other than data/constants/traced_inputs/debug info);
- pickles whose globals are not tensor rebuilders, plain containers or the archive's own classes;
- source that does not parse, imports, nested functions, unknown global names;
- every operation reference (`torch.<op>` is `aten::<op>`, `ops.<ns>.<op>` is `<ns>::<op>`,
  methods and attributes on values) outside `jobs.torchscript_ops.ALLOWED_OPS`.

Operators written as syntax (`a + b`, `x[i] = y`) compile to arithmetic and indexing ops that
this check cannot name without torch; the graph check names them exactly.

The API runs it at upload and the worker again before loading (the store may hold a file that
never passed the API). It is the first of two checks: `ml.gan.script_guard` walks the loaded
graphs with the same allowlist before the first forward pass.
"""

from __future__ import annotations

import io
import pickletools
import re
import zipfile
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from jobs.torchscript_ops import ALLOWED_OPS
from jobs.torchscript_source import check_sources

MAX_ENTRIES = 100_000
# A few MB of code and pickles describe even a big network (DCGAN's: 40 KB); tensors live in data/N,
# which is never read. The totals bound what a small zip that inflates hugely can cost the API.
MAX_SOURCE_BYTES = 4 * 1024 * 1024  # one code file
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # one pickle
MAX_TOTAL_SOURCE_BYTES = 16 * 1024 * 1024  # all code, kept in memory until parsed
MAX_TOTAL_READ_BYTES = 256 * 1024 * 1024  # everything inflated, code and pickles
MAX_REPORTED = 20

_PICKLES = re.compile(r"^(?:data|constants|traced_inputs)\.pkl$|^code/__torch__(?:/\w+)*\.py\.debug_pkl$")
_SOURCE = re.compile(r"^code/__torch__(?:/\w+)*\.py$")
_OTHER = re.compile(
    r"^(?:version|byteorder|\.data/version|\.data/serialization_id|(?:data|constants|traced_inputs)/\d+"
    r"|extra/[\w.-]+(?:/[\w.-]+)*)$"
)
_PICKLE_GLOBALS = re.compile(
    r"^(?:torch\._utils _rebuild_tensor_v2|torch [A-Z][A-Za-z]*Storage|collections OrderedDict"
    r"|torch\.jit\._pickle (?:build_(?:intlist|tensorlist|doublelist|boollist|genericlist)|restore_type_tag)"
    r"|__torch__(?:\.\w+)* \w+)$"
)
_CUSTOM_CLASSES = "__torch__.torch.classes"  # C++ classes registered by extensions: native code
_FORBIDDEN_OPCODES = frozenset({"STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4", "PERSID"})


class NotTorchScriptError(ValueError):
    """The file is not a TorchScript archive at all (a state_dict zip, a pickle, random bytes)."""


class UnsafeTorchScriptError(ValueError):
    """The archive could do more than compute on tensors.

    Attributes:
        refused: each refused operation or construct, with where it was found.
    """

    def __init__(self, refused: list[str]) -> None:
        self.refused = refused
        shown = "; ".join(refused[:MAX_REPORTED]) + (
            f"; and {len(refused) - MAX_REPORTED} more" if len(refused) > MAX_REPORTED else ""
        )
        super().__init__(
            "the TorchScript program uses what an uploaded model may not (only pure tensor operations are "
            f"allowed: no files, threads, printing, raw memory or custom classes): {shown}. Export a generator "
            "that maps z to images with tensor operations only (torch.jit.script or torch.jit.trace of an "
            "nn.Module) and save it with torch.jit.save"
        )


@dataclass
class _Archive:
    root: str
    sources: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    source_bytes: int = 0
    read_bytes: int = 0


def check_torchscript_archive(source: str | Path | bytes | BinaryIO, allowed: Collection[str] = ALLOWED_OPS) -> None:
    """Refuse a TorchScript archive that could do more than pure tensor computation.

    Args:
        source: the archive's path, bytes or a binary file object.
        allowed: the `namespace::name` operations allowed (default: `ALLOWED_OPS`).

    Raises:
        NotTorchScriptError: not a zip, or a zip without TorchScript code (e.g. a `torch.save` file).
        UnsafeTorchScriptError: anything outside the layout, the pickle globals or the op allowlist.
    """
    data: str | BinaryIO = (
        str(source) if isinstance(source, Path) else source if not isinstance(source, bytes) else io.BytesIO(source)
    )
    try:
        zf = zipfile.ZipFile(data)
    except Exception as exc:  # BadZipFile, LargeZipFile, OSError, struct errors: all mean "not a zip"
        raise NotTorchScriptError(f"not a zip archive ({type(exc).__name__})") from None
    with zf:
        archive = _read_archive(zf)
    refused = archive.refused + check_sources(archive.sources, frozenset(allowed))
    if refused:
        raise UnsafeTorchScriptError(sorted(set(refused), key=refused.index))


def _read_archive(zf: zipfile.ZipFile) -> _Archive:
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise UnsafeTorchScriptError([f"{len(infos)} zip entries (at most {MAX_ENTRIES})"])
    roots = {i.filename.split("/", 1)[0] for i in infos}
    if not any(i.filename.split("/", 1)[-1].startswith("code/") for i in infos):
        raise NotTorchScriptError("the zip holds no TorchScript code (code/__torch__/...)")
    archive = _Archive(root=sorted(roots)[0])
    if len(roots) != 1:
        archive.refused.append(f"several top-level folders {sorted(roots)[:5]} (torch.jit.save writes one)")
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if name.startswith("/") or "\\" in name or ":" in name or ".." in parts or "" in parts[:-1]:
            archive.refused.append(f"entry {name!r} (absolute, parent or backslash path)")
            continue
        rel = name.split("/", 1)[1] if "/" in name else ""
        if info.is_dir():
            continue
        if _SOURCE.match(rel):
            text = _read(zf, info, MAX_SOURCE_BYTES, archive)
            if text is not None:
                archive.source_bytes += len(text)
                if archive.source_bytes > MAX_TOTAL_SOURCE_BYTES:
                    raise UnsafeTorchScriptError([*archive.refused, f"code past {MAX_TOTAL_SOURCE_BYTES} bytes in all"])
                try:
                    archive.sources[rel] = text.decode("utf-8")
                except UnicodeDecodeError:
                    archive.refused.append(f"{rel} (source that is not UTF-8)")
        elif _PICKLES.match(rel):
            raw = _read(zf, info, MAX_PICKLE_BYTES, archive)
            if raw is not None:
                archive.refused += _check_pickle(rel, raw)
        elif rel.endswith((".pkl", ".py")) or not _OTHER.match(rel):
            archive.refused.append(f"entry {name!r} (not part of a TorchScript archive)")
    if "data.pkl" not in {i.filename.split("/", 1)[-1] for i in infos}:
        archive.refused.append("no data.pkl (torch.jit.save writes one)")
    return archive


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, archive: _Archive) -> bytes | None:
    """At most `limit` bytes of one entry, read in a bounded way (a small zip may inflate to gigabytes)."""
    try:
        with zf.open(info) as fh:
            raw = fh.read(limit + 1)
    except Exception as exc:  # a hostile entry can fail inside any decompressor (zlib, bz2, lzma, CRC)
        archive.refused.append(f"{info.filename} (unreadable: {exc})")
        return None
    if len(raw) > limit:
        archive.refused.append(f"{info.filename} (larger than {limit} bytes)")
        return None
    archive.read_bytes += len(raw)
    if archive.read_bytes > MAX_TOTAL_READ_BYTES:
        # Stop reading at once: the rest could inflate without bound.
        raise UnsafeTorchScriptError(
            [*archive.refused, f"code and pickles inflating past {MAX_TOTAL_READ_BYTES} bytes"]
        )
    return raw


def _check_pickle(rel: str, raw: bytes) -> list[str]:
    """Each global a pickle would look up must be a tensor rebuilder, OrderedDict or an archive class."""
    refused: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(raw):
            if opcode.name in _FORBIDDEN_OPCODES:
                refused.append(f"{rel}: pickle opcode {opcode.name}")
            elif opcode.name == "GLOBAL":
                target = str(arg)
                if not _PICKLE_GLOBALS.match(target) or target.startswith(_CUSTOM_CLASSES):
                    refused.append(f"{rel}: pickle global {target.replace(' ', '.')}")
    except Exception as exc:  # pickletools raises ValueError and others on malformed input
        refused.append(f"{rel}: unreadable pickle ({type(exc).__name__}: {exc})")
    return refused
