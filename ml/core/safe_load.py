"""Reading model, weight and checkpoint files as data, never as code.

Every `.pt` file a worker opens may come from a caller (an upload, an object written to the store),
and a pickle can name any importable callable. So every file is read with `torch.load(...,
weights_only=True)`: tensors, plain containers, numbers and strings only. What was loaded is then
checked against what the reader expects (`tensor_dict`, `check_fits`) before any of it is used, and
every refusal names the file and what was wrong.

One migration: `train_embedding` checkpoints written before facejobs stored numpy's RNG state as
plain numbers hold numpy uint32 arrays; `load_data_file(..., numpy_rng=True)` still reads those,
admitting numpy's array rebuild functions and nothing else, and only numeric arrays.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ml.core.errors import InputError

GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")
# What numpy needs to rebuild an ndarray; a dtype of kind "O" (objects) is refused after loading.
NUMPY_ARRAY_GLOBALS = frozenset(
    {"numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct", "numpy.core.multiarray._reconstruct"}
)
NUMERIC_NUMPY_TYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                       "float32", "float64")  # fmt: skip
DATA_ONLY = "facejobs reads only tensors, plain containers, numbers and strings from a .pt file (weights_only)"


class UnsafeFileError(InputError):
    """A torch file holds more than tensor data (a pickled class or function), is not a torch file, or
    (a checkpoint) is not a dict of state."""


class WeightsMismatchError(InputError):
    """A file's tensors do not fit the network they are meant for (keys, shapes or dtypes)."""


def _opened(data: Path | bytes) -> Path | io.BytesIO:
    return io.BytesIO(data) if isinstance(data, bytes) else data


def _globals_named(source: Path | bytes, exc: Exception) -> list[str]:
    """The globals of a refused pickle, for the message: torch's static scan, else ours, else its message."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(_opened(source))
    except Exception:  # an opcode torch's scan does not know (protocol 4+), a legacy file, a broken archive
        found = _scan_globals(source) or GLOBAL_IN_MESSAGE.findall(str(exc))
    return sorted(set(found))


def _scan_globals(source: Path | bytes) -> list[str]:
    """Globals named in the archive's data.pkl other than torch's and OrderedDict (read, never run)."""
    found: list[str] = []
    try:
        with zipfile.ZipFile(_opened(source)) as zf:
            name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
            data = zf.read(name)
        # STACK_GLOBAL takes the two values pushed before it, strings either written there or
        # fetched from the memo: follow pushes and the memo just enough to name them.
        pushed: list[str | None] = []
        memo: dict[int, str | None] = {}
        for op, arg, _ in pickletools.genops(data):
            top = pushed[-1] if pushed else None
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(pushed) >= 2 and None not in pushed[-2:]:
                found.append(f"{pushed[-2]}.{pushed[-1]}")
            if op.name == "MEMOIZE":
                memo[len(memo)] = top
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = top  # type: ignore[arg-type]
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(int(arg)))  # type: ignore[arg-type]
            else:
                pushed.append(arg if isinstance(arg, str) and "UNICODE" in op.name else None)
    except Exception:  # not a zip, no data.pkl, a truncated pickle: torch's message is all there is
        pass
    return [g for g in found if not g.startswith("torch.") and g != "collections.OrderedDict"]


def _reason(exc: Exception) -> str:
    """torch's own reason for a failed load, without its advice to turn the weights-only check off."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [
        ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation", "Please file"))
    ]
    text = (useful or lines or [type(exc).__name__])[0]
    return text.split(". ")[0][:300]  # the first sentence: torch's own advice follows


def load_data_file(source: str | Path | bytes, name: str, *, numpy_rng: bool = False) -> Any:
    """The content of a torch file, read with `weights_only=True` (nothing in it can run).

    Args:
        source: a path, or the file's bytes.
        name: how messages name the file (its file name or store key).
        numpy_rng: also admit numpy arrays (old `train_embedding` checkpoints; see the module doc).

    Raises:
        FileNotFoundError: no file at `source`.
        UnsafeFileError: the file names a global outside weights_only's list, or is not a torch file.
    """
    data: Path | bytes = source if isinstance(source, bytes) else Path(source)
    try:
        return torch.load(_opened(data), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        found = _globals_named(data, exc)
        if numpy_rng and found and set(found) <= NUMPY_ARRAY_GLOBALS:
            return _load_numpy_arrays(data, name, found)
        if found:
            raise UnsafeFileError(
                f"{name} was refused: it names {', '.join(found)}, which weights_only does not admit (a pickled "
                f"function or class can run code); {DATA_ONLY}: save a plain state dict "
                "(torch.save(model.state_dict(), path))"
            ) from None
        raise UnsafeFileError(f"{name} is not a torch file saved with torch.save: {_reason(exc)}") from None
    except Exception as exc:  # a TorchScript archive, a broken zip, random bytes
        raise UnsafeFileError(f"{name} is not a torch file saved with torch.save: {_reason(exc)}") from None


def load_checkpoint_bytes(data: bytes, name: str) -> dict[str, Any]:
    """A checkpoint's state dict, read as data (old `train_embedding` numpy RNG states included).

    Raises:
        UnsafeFileError: the bytes hold code, are not a torch file, or not a dict of state.
    """
    state = load_data_file(data, name, numpy_rng=True)
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UnsafeFileError(f"{name} is not a facejobs checkpoint (a dict of named state): {type(state).__name__}")
    return state


def _load_numpy_arrays(data: Path | bytes, name: str, found: list[str]) -> Any:
    import numpy as np

    allowed = []
    for qual in found:
        module, attr = qual.rsplit(".", 1)
        target: Any = np
        for part in module.split(".")[1:]:
            target = getattr(target, part, None)
        if target is None or getattr(target, attr, None) is None:
            raise UnsafeFileError(f"{name} names {qual}, which this numpy does not have") from None
        allowed.append(getattr(target, attr))
    # Rebuilding a dtype names its class: the numeric ones only, so no array of objects is built.
    allowed += [type(np.dtype(t)) for t in NUMERIC_NUMPY_TYPES]
    with torch.serialization.safe_globals(allowed):
        try:
            obj = torch.load(_opened(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UnsafeFileError(f"{name} is not a torch file saved with torch.save: {_reason(exc)}") from None
    for path, value in _walk(obj):
        if isinstance(value, np.ndarray) and value.dtype.kind not in "biuf":
            raise UnsafeFileError(f"{name}: {path} is a numpy array of {value.dtype}; only numeric arrays are read")
    return obj


def _walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every value inside dicts, lists and tuples, depth first (iteratively)."""
    stack: list[tuple[str, Any]] = [(path or "<root>", obj)]
    while stack:
        where, value = stack.pop()
        yield where, value
        if isinstance(value, Mapping):
            stack.extend((f"{where}[{k!r}]", v) for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))


def tensor_dict(obj: Any, name: str, field: str = "state_dict") -> dict[str, torch.Tensor]:
    """`obj` as a non-empty dict of name -> tensor, else `WeightsMismatchError` naming what is not."""
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsMismatchError(f"{name}: {field} must be a non-empty dict of tensors, got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise WeightsMismatchError(f"{name}: {field} has a key {key!r} that is not a string")
        if not isinstance(value, torch.Tensor):
            raise WeightsMismatchError(f"{name}: {field}[{key!r}] is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided:
            raise WeightsMismatchError(f"{name}: {field}[{key!r}] is a {value.layout} tensor; only dense ones")
    return dict(obj)


def facenet_state_dict(obj: Any, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a FaceNet weights file: a state dict, or {"state_dict": ...}, without "logits.*".

    facenet-pytorch's published files carry the training classifier ("logits.*"); the embedding
    network has none, so those keys are dropped before the file is checked against it.
    """
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    state = tensor_dict(obj, name)
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


def check_fits(module: nn.Module, state: Mapping[str, torch.Tensor], name: str, what: str) -> None:
    """Raise `WeightsMismatchError` unless `state` has exactly `module`'s keys, shapes and dtypes.

    `module` may live on the meta device: only its state dict's shapes and dtypes are read, so a file
    can be checked before a real (allocated) network is built for it.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})")
        if extra:
            parts.append(f"{len(extra)} unexpected ({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})")
        raise WeightsMismatchError(f"{name} does not hold {what}'s weights: {' and '.join(parts)} keys")
    for key, want in expected.items():
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            raise WeightsMismatchError(f"{name}: {key} has shape {tuple(got.shape)}, {what} needs {tuple(want.shape)}")
        if got.dtype != want.dtype:
            raise WeightsMismatchError(f"{name}: {key} is {got.dtype}, {what} needs {want.dtype}")
