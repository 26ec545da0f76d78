"""Reading a torch file's object tree without torch: its pickles are parsed as data, never run.

A file saved by `torch.save` is a zip archive holding `<folder>/data.pkl` (the object tree as a
pickle), `<folder>/data/<key>` (one raw storage per key) and a few small records; files of torch
before 1.6 (facenet-pytorch's published weights among them) are five pickles in a row followed by
the raw storages. A pickle may name any importable callable, which `pickle.load` would call; here a
restricted unpickler admits only the globals a plain state dict needs (those torch's
`weights_only=True` admits for one: `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
`torch._utils._rebuild_parameter`, the `torch.*Storage` types and dtypes) and turns each into an
inert placeholder (`TensorInfo`), so nothing of torch is imported and nothing in the file runs.
Anything else is refused with a message naming it. `jobs.weights_file` checks the tree's layout.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# storage type -> (dtype, bytes per element): the dense types torch.save writes for real weights.
STORAGES = {
    "FloatStorage": ("float32", 4), "DoubleStorage": ("float64", 8), "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2), "LongStorage": ("int64", 8), "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2), "CharStorage": ("int8", 1), "ByteStorage": ("uint8", 1), "BoolStorage": ("bool", 1),
}  # fmt: skip
DTYPES = frozenset(dtype for dtype, _ in STORAGES.values())
MAX_PICKLE_BYTES = 16 * 1024 * 1024  # InceptionResnetV1's data.pkl is ~60 KB; a tree this big is not weights
MAX_ENTRIES = 100_000
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER: the first pickle of a legacy file
LEGACY_PROTOCOL = 1001
DATA_PKL = re.compile(r"^[^/]+/data\.pkl$")
TORCHSCRIPT = re.compile(r"^[^/]+/(constants\.pkl|code/)")
STATE_DICT_HINT = "save it with torch.save(model.state_dict(), path)"


class WeightsFileError(ValueError):
    """An uploaded weights file is not plain tensor data of the expected layout.

    Attributes:
        code: `unsafe_weights` when a pickle names a callable or class outside the allowlist (or the
            file is a program), `invalid_weights` for anything else (not a torch file, wrong layout).
    """

    def __init__(self, message: str, code: str = "invalid_weights") -> None:
        super().__init__(message)
        self.code = code


class _Inert:
    """A placeholder a pickle may not alter (pickle's BUILD would otherwise rewrite its fields)."""

    def __setstate__(self, state: Any) -> None:
        raise WeightsFileError("a tensor or storage record carries extra state")


@dataclass(frozen=True)
class TensorInfo(_Inert):
    """What the file says about one tensor (its bytes are never read)."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class StorageType(_Inert):
    dtype: str
    itemsize: int


@dataclass(frozen=True)
class Storage(_Inert):
    dtype: str
    numel: int


@dataclass(frozen=True)
class DType(_Inert):
    name: str


def ints(value: Any, n: int | None = None) -> bool:
    """Whether `value` is a list or tuple of `n` (any number if None) non-negative ints."""
    return (
        isinstance(value, tuple | list)
        and (n is None or len(value) == n)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None
) -> TensorInfo:
    """torch._utils._rebuild_tensor_v2, as data: checks the view fits inside its storage."""
    if not isinstance(storage, Storage) or not ints(size) or not ints(stride, len(size)) or not ints([offset]):
        raise WeightsFileError("a tensor record is malformed (storage, offset, size or stride)")
    if hooks or metadata:
        raise WeightsFileError("a tensor carries backward hooks or metadata; plain weights have none")
    if math.prod(size) and offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) >= storage.numel:
        raise WeightsFileError(f"a tensor of shape {tuple(size)} reaches past its storage of {storage.numel}")
    return TensorInfo(storage.dtype, tuple(size))


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any) -> TensorInfo:
    """torch._utils._rebuild_parameter, as data: a Parameter is its tensor."""
    if not isinstance(data, TensorInfo) or hooks:
        raise WeightsFileError("a parameter record is malformed")
    return data


ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): StorageType(dtype, size) for name, (dtype, size) in STORAGES.items()},
    **{("torch", dtype): DType(dtype) for dtype in DTYPES},
}
StorageFor = Callable[[tuple[Any, ...]], Storage]


class _DataUnpickler(pickle.Unpickler):
    """A pickle reader whose globals are the placeholders above and whose storages are records."""

    def __init__(self, data: bytes, storage: StorageFor | None) -> None:
        super().__init__(io.BytesIO(data))
        self.storage = storage  # None: this pickle may not name storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise WeightsFileError(f"{module}.{name}"[:200], code="unsafe_weights") from None

    def persistent_load(self, pid: Any) -> Any:
        if self.storage is None or not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise WeightsFileError("a storage record is malformed")
        return self.storage(pid)


def _refuse_extensions(data: bytes, name: str) -> None:
    """Refuse copyreg extension codes: pickle resolves a cached one without asking `find_class`."""
    try:
        for op, _arg, _pos in pickletools.genops(data):
            if op.name.startswith("EXT"):
                raise WeightsFileError(f"{name}'s pickle uses an extension code ({op.name})", "unsafe_weights")
    except WeightsFileError:
        raise
    except Exception as exc:  # not a pickle at all
        raise WeightsFileError(f"{name}: the object tree is not a pickle ({str(exc)[:100]})") from None


def load_pickle(data: bytes, name: str, storage: StorageFor | None = None) -> Any:
    """One pickle as placeholders, with the messages a caller reads."""
    _refuse_extensions(data, name)
    try:
        return _DataUnpickler(data, storage).load()
    except WeightsFileError as exc:
        if exc.code == "unsafe_weights":
            raise WeightsFileError(
                f"{name} was refused: its pickle names {exc}, which is not tensor data (a pickled function or "
                f"class can run code): {STATE_DICT_HINT}",
                "unsafe_weights",
            ) from None
        raise WeightsFileError(f"{name}: {exc}") from None
    except Exception as exc:  # a truncated or malformed pickle: bad data, never our fault
        raise WeightsFileError(
            f"{name}: the object tree cannot be read ({type(exc).__name__}): {STATE_DICT_HINT}"
        ) from None


def _zip_storage(sizes: dict[str, int]) -> StorageFor:
    """Storage records of a zip archive, ('storage', type, key, location, numel), checked against its blobs."""

    def storage(pid: tuple[Any, ...]) -> Storage:
        if len(pid) != 5 or not isinstance(pid[1], StorageType) or not isinstance(pid[2], str) or not ints([pid[4]]):
            raise WeightsFileError("a storage record is malformed")
        _, kind, key, _location, numel = pid
        if sizes.get(key) != numel * kind.itemsize:
            raise WeightsFileError(f"storage {key[:50]!r} is missing or not {numel} {kind.dtype} values")
        return Storage(kind.dtype, numel)

    return storage


def _read_zip(path: Path, name: str) -> Any:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise WeightsFileError(f"{name} holds {len(infos)} entries; a weights file has one per tensor")
            if any(TORCHSCRIPT.match(i.filename) for i in infos):
                raise WeightsFileError(
                    f"{name} is a TorchScript archive (a program), not weights: {STATE_DICT_HINT}", "unsafe_weights"
                )
            pkl = [i for i in infos if DATA_PKL.match(i.filename)]
            if len(pkl) != 1:
                raise WeightsFileError(f"{name} is a zip but not a torch.save archive (no one data.pkl)")
            if pkl[0].file_size > MAX_PICKLE_BYTES:
                raise WeightsFileError(f"{name}'s object tree is {pkl[0].file_size} bytes; weights need far less")
            folder = pkl[0].filename.split("/", 1)[0]
            prefix = f"{folder}/data/"
            sizes = {i.filename[len(prefix) :]: i.file_size for i in infos if i.filename.startswith(prefix)}
            with zf.open(pkl[0]) as f:
                data = f.read(MAX_PICKLE_BYTES + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise WeightsFileError(f"{name} is a broken zip archive: {exc}") from None
    return load_pickle(data, name, _zip_storage(sizes))


def _next_pickle(f: IO[bytes], name: str) -> bytes:
    """The bytes of the pickle that starts at `f`'s position (found by parsing it, not by running it)."""
    start = f.tell()
    end = None
    try:
        for op, _arg, _pos in pickletools.genops(f):
            if op.name == "STOP":
                end = f.tell()
                break
            if f.tell() - start > MAX_PICKLE_BYTES:
                raise WeightsFileError(f"{name}'s object tree is over {MAX_PICKLE_BYTES} bytes")
    except WeightsFileError:
        raise
    except Exception as exc:
        raise WeightsFileError(f"{name} is not a torch file ({str(exc)[:100]}): {STATE_DICT_HINT}") from None
    if end is None:
        raise WeightsFileError(f"{name} ends inside a pickle (a truncated file)")
    f.seek(start)
    return f.read(end - start)


def _read_legacy(path: Path, name: str) -> Any:
    """torch's format before 1.6: magic number, protocol, system info, the object tree, its storage
    keys, then each storage as its element count (int64) and its bytes."""
    storages: dict[str, tuple[Storage, int]] = {}

    def storage(pid: tuple[Any, ...]) -> Storage:
        if len(pid) != 6 or not isinstance(pid[1], StorageType) or not isinstance(pid[2], str) or not ints([pid[4]]):
            raise WeightsFileError("a storage record is malformed")
        if pid[5] is not None:  # a view of another storage: torch has not written those since 0.4
            raise WeightsFileError("a storage record is a view; re-save the file with a current torch")
        kind, key, numel = pid[1], pid[2], pid[4]
        storages[key] = (Storage(kind.dtype, numel), kind.itemsize)
        return storages[key][0]

    with path.open("rb") as f:
        magic = load_pickle(_next_pickle(f, name), name)
        if magic != LEGACY_MAGIC or load_pickle(_next_pickle(f, name), name) != LEGACY_PROTOCOL:
            raise WeightsFileError(f"{name} is not a torch file: {STATE_DICT_HINT}")
        info = load_pickle(_next_pickle(f, name), name)
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise WeightsFileError(f"{name} was saved on a big-endian machine; re-save it on a little-endian one")
        tree = load_pickle(_next_pickle(f, name), name, storage)
        keys = load_pickle(_next_pickle(f, name), name)
        if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(storages):
            raise WeightsFileError(f"{name}: its storage list does not match its tensors")
        for key in keys:
            record, itemsize = storages[key]
            if int.from_bytes(f.read(8), "little", signed=True) != record.numel:
                raise WeightsFileError(f"{name}: storage {key[:50]!r} is not {record.numel} {record.dtype} values")
            f.seek(record.numel * itemsize, io.SEEK_CUR)
        if f.tell() > path.stat().st_size:
            raise WeightsFileError(f"{name} ends inside its storages (a truncated file)")
    return tree


def read_tree(path: Path, name: str) -> Any:
    """The object tree of the torch file at `path`, tensors as `TensorInfo`; nothing in it is run.

    Raises:
        WeightsFileError: not a torch file, a TorchScript archive, or a pickle naming anything but
            tensor data; the message names the file (`name`) and what was found.
    """
    if zipfile.is_zipfile(path):
        return _read_zip(path, name)
    with path.open("rb") as f:
        head = f.read(1)
    if head == b"\x80":  # a pickle protocol marker: torch's format before 1.6
        return _read_legacy(path, name)
    raise WeightsFileError(f"{name} is not a torch file (no zip archive): {STATE_DICT_HINT}")
