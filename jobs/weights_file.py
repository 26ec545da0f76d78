"""Checking an uploaded torch weights file without torch: its pickle is read as data, never run.

A file saved by `torch.save` is a zip archive holding `<folder>/data.pkl` (the object tree as a
pickle), `<folder>/data/<key>` (one raw storage per key) and a few small records. A pickle may name
any importable callable, which `pickle.load` would call; here a restricted unpickler admits only
the globals a plain state dict needs (the ones torch's `weights_only=True` admits for them:
`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`,
the `torch.*Storage` types and dtypes) and turns each into an inert placeholder (`TensorInfo`),
so nothing of torch is imported and nothing in the file runs. Anything else is refused with a
message naming it. Legacy (non-zip) torch files are refused: re-saving them is one line.

`check_weights_file(path, kind, name)` then checks the tree against what the worker will load
(`ml/embed_models.py` and `ml/gan/perceptual.py` for `facenet`, `ml/embedding_model.py` for
`backbone`); the worker checks again, with torch, key by key against the network.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# storage type -> (dtype, bytes per element): the dense types torch.save writes for real weights.
STORAGES = {
    "FloatStorage": ("float32", 4), "DoubleStorage": ("float64", 8), "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2), "LongStorage": ("int64", 8), "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2), "CharStorage": ("int8", 1), "ByteStorage": ("uint8", 1), "BoolStorage": ("bool", 1),
}  # fmt: skip
DTYPES = frozenset(dtype for dtype, _ in STORAGES.values())
MAX_PICKLE_BYTES = 16 * 1024 * 1024  # InceptionResnetV1's data.pkl is ~60 KB; a tree this big is not weights
MAX_ENTRIES = 100_000
BACKBONE_FORMAT = "facejobs.embedding/1"  # ml/embedding_model.py FORMAT
WARPS = ("none", "roi_tanh", "roi_tanh_polar", "roi_tanh_circular")  # ml/embedding_model.py WARPS
MAX_IMAGE_SIDE = 1024  # ml/embedding_model.py MAX_IMAGE_SIDE
DATA_PKL = re.compile(r"^[^/]+/data\.pkl$")
TORCHSCRIPT = re.compile(r"^[^/]+/(constants\.pkl|code/)")
STATE_DICT_HINT = "save it with torch.save(model.state_dict(), path)"


class WeightsFileError(ValueError):
    """An uploaded weights file is not plain tensor data of the expected shape.

    Attributes:
        code: `unsafe_weights` when the pickle names a callable or class outside the allowlist,
            `invalid_weights` for anything else (not a torch file, wrong structure).
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

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class _StorageType(_Inert):
    dtype: str
    itemsize: int


@dataclass(frozen=True)
class _Storage(_Inert):
    dtype: str
    numel: int


@dataclass(frozen=True)
class _DType(_Inert):
    name: str


def _ints(value: Any, n: int | None = None) -> bool:
    return (
        isinstance(value, tuple | list)
        and (n is None or len(value) == n)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any, hooks: Any, metadata: Any = None
) -> TensorInfo:
    """torch._utils._rebuild_tensor_v2, as data: checks the view fits inside its storage."""
    if not isinstance(storage, _Storage) or not _ints(size) or not _ints(stride, len(size)) or not _ints([offset]):
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
    **{("torch", name): _StorageType(dtype, size) for name, (dtype, size) in STORAGES.items()},
    **{("torch", dtype): _DType(dtype) for dtype in DTYPES},
}


class _DataUnpickler(pickle.Unpickler):
    """A pickle reader whose globals are the placeholders above, and storages records of the archive."""

    def __init__(self, data: bytes, sizes: dict[str, int]) -> None:
        super().__init__(io.BytesIO(data))
        self.sizes = sizes  # storage key -> bytes stored in the archive

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise WeightsFileError(f"{module}.{name}"[:200], code="unsafe_weights") from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise WeightsFileError("a storage record is malformed")
        _, kind, key, _location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or not _ints([numel]):
            raise WeightsFileError("a storage record is malformed")
        if self.sizes.get(key) != numel * kind.itemsize:
            raise WeightsFileError(f"storage {key[:50]!r} is missing or not {numel} {kind.dtype} values")
        return _Storage(kind.dtype, numel)


def read_tree(path: Path, name: str) -> Any:
    """The object tree of the torch file at `path`, tensors as `TensorInfo`; nothing in it is run.

    Raises:
        WeightsFileError: not a zip-format torch file, or a pickle naming anything but tensor data.
    """
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise WeightsFileError(
                f"{name} is a legacy (non-zip) torch file; facejobs reads only the zip format: load it where "
                "you trust it and re-save it with torch.save(obj, path) (torch 1.6 or later)"
            )
        raise WeightsFileError(f"{name} is not a torch file (no zip archive): {STATE_DICT_HINT}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise WeightsFileError(f"{name} holds {len(infos)} entries; a weights file has one per tensor")
            names = [i.filename for i in infos]
            if any(TORCHSCRIPT.match(n) for n in names):
                raise WeightsFileError(
                    f"{name} is a TorchScript archive (a program), not weights: {STATE_DICT_HINT}", "unsafe_weights"
                )
            pkl = [i for i in infos if DATA_PKL.match(i.filename)]
            if len(pkl) != 1:
                raise WeightsFileError(f"{name} is a zip but not a torch.save archive (no one data.pkl)")
            if pkl[0].file_size > MAX_PICKLE_BYTES:
                raise WeightsFileError(f"{name}'s object tree is {pkl[0].file_size} bytes; weights need far less")
            folder = pkl[0].filename.split("/", 1)[0]
            sizes = {
                i.filename.split("/", 2)[2]: i.file_size for i in infos if i.filename.startswith(f"{folder}/data/")
            }
            with zf.open(pkl[0]) as f:
                data = f.read(MAX_PICKLE_BYTES + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise WeightsFileError(f"{name} is a broken zip archive: {exc}") from None
    _refuse_extensions(data, name)
    try:
        return _DataUnpickler(data, sizes).load()
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


def _refuse_extensions(data: bytes, name: str) -> None:
    """Refuse copyreg extension codes: pickle resolves a cached one without asking `find_class`."""
    try:
        for op, _arg, _pos in pickletools.genops(data):
            if op.name.startswith("EXT"):
                raise WeightsFileError(f"{name}'s pickle uses an extension code ({op.name})", "unsafe_weights")
    except WeightsFileError:
        raise
    except Exception as exc:  # not a pickle at all
        raise WeightsFileError(
            f"{name}: the object tree is not a pickle ({str(exc)[:100]}): {STATE_DICT_HINT}"
        ) from None


def _values(tree: Any) -> Iterator[Any]:
    """Every value reachable from `tree` through dicts, lists and tuples (cycles visited once)."""
    seen: set[int] = set()
    stack = [tree]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        yield value
        if isinstance(value, Mapping):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend(value)


def _tensor_dict(obj: Any, name: str, field: str) -> dict[str, TensorInfo]:
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsFileError(f"{name}: {field} must be a non-empty dict of tensors: {STATE_DICT_HINT}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, TensorInfo):
            raise WeightsFileError(
                f"{name}: {field}[{str(key)[:80]!r}] is a {type(value).__name__}, not a tensor: {STATE_DICT_HINT}"
            )
    return dict(obj)


def _plain_kwarg(value: Any) -> bool:
    """A number, string, bool or None, or a list/tuple of them (what backbone kwargs are)."""
    plain = str | int | float | bool | type(None)
    return isinstance(value, plain) or (isinstance(value, list | tuple) and all(isinstance(v, plain) for v in value))


def _check_backbone(tree: Any, name: str) -> dict[str, TensorInfo]:
    """A facejobs backbone file: the architecture header `ml.embedding_model.save_trained` writes."""
    if not isinstance(tree, Mapping) or "state_dict" not in tree or "backbone" not in tree:
        raise WeightsFileError(
            f"{name} is not a facejobs backbone file: a backbone upload is the backbone.pt a train_embedding job "
            "writes ({format, backbone, backbone_kwargs, state_dict, image_size, in_channels, normalize, warp}), "
            "since a bare state dict does not say which network to build"
        )
    if tree.get("format", BACKBONE_FORMAT) != BACKBONE_FORMAT:
        raise WeightsFileError(f"{name}: format must be {BACKBONE_FORMAT!r}")
    arch, kwargs = tree["backbone"], tree.get("backbone_kwargs", {})
    if not isinstance(arch, str) or not 0 < len(arch) <= 100:
        raise WeightsFileError(f"{name}: backbone must be a registered backbone's name")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) and _plain_kwarg(v) for k, v in kwargs.items()):
        raise WeightsFileError(f"{name}: backbone_kwargs must be a dict of numbers, strings and lists of them")
    size = tree.get("image_size", [1, 1])
    if not (_ints(size, 2) and all(1 <= v <= MAX_IMAGE_SIDE for v in size)):
        raise WeightsFileError(f"{name}: image_size must be [height, width], each 1..{MAX_IMAGE_SIDE}")
    channels = tree.get("in_channels", 1)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise WeightsFileError(f"{name}: in_channels must be 1 or 3")
    norm = tree.get("normalize", {"mean": [0.0] * channels, "std": [1.0] * channels})
    if not isinstance(norm, Mapping) or not all(
        isinstance(norm.get(k), list | tuple) and len(norm[k]) == channels
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in norm[k])
        for k in ("mean", "std")
    ) or any(v <= 0 for v in norm["std"]):  # fmt: skip
        raise WeightsFileError(f"{name}: normalize must be {{mean, std}} with one finite number per channel, std > 0")
    if tree.get("warp", "none") not in WARPS:
        raise WeightsFileError(f"{name}: warp must be one of {', '.join(WARPS)}")
    return _tensor_dict(tree["state_dict"], name, "state_dict")


def _check_facenet(tree: Any, name: str) -> dict[str, TensorInfo]:
    """InceptionResnetV1 weights: a state dict, or {"state_dict": ...} (`ml.safe_load.facenet_state_dict`)."""
    if isinstance(tree, Mapping) and isinstance(tree.get("state_dict"), Mapping):
        tree = tree["state_dict"]
    return _tensor_dict(tree, name, "the state dict")


CHECKS = {"backbone": _check_backbone, "facenet": _check_facenet}


def check_weights_file(path: Path, kind: str, name: str) -> dict[str, TensorInfo]:
    """The tensors (name -> dtype and shape) of an upload of `kind` ("backbone" or "facenet").

    Args:
        path: the received file.
        kind: which loader the worker will give it to (`CHECKS`).
        name: how messages name the file (the caller's file name).

    Raises:
        WeightsFileError: anything that is not plain tensor data in the layout `kind` needs; the
            message names the file and what was found.
    """
    tree = read_tree(path, name)
    tensors = CHECKS[kind](tree, name)
    for value in _values(tree):
        if isinstance(value, _StorageType | _Storage | _DType):  # a bare storage or dtype: no weights file has one
            raise WeightsFileError(f"{name} holds a bare {type(value).__name__.strip('_')}; {STATE_DICT_HINT}")
        if isinstance(value, TensorInfo) and value.dtype not in DTYPES:
            raise WeightsFileError(f"{name} holds a {value.dtype} tensor")
    return tensors
