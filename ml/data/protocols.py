"""Fixed verification protocols: LFW-style `pairs.txt` and insightface verification `.bin` files.

- `parse_pairs(text)`: the LFW layout. A header line "<folds> <n>" (or "<n>" for one fold), then per
  fold n same-identity lines "name i j" and n different-identity lines "name_a i name_b j"; indices
  are 1-based image numbers of an identity.
- `resolve_pairs(pairs, folder)`: the image files the pairs name, found in an identity folder as
  `name/name_0001.jpg` (LFW) or `name/1.pgm` (ORL): any image extension, nothing else.
- `load_bin(data)`: an insightface `.bin` (a pickle of `(bins, issame)`: encoded images, consecutive
  images form a pair, and a flag per pair) read by `SafeBinUnpickler`, which executes nothing: every
  global is refused except the three a numpy bool/int array is rebuilt from.
- `protocol_metrics(scores, same, fold)`: accuracy mean and std over the protocol's folds, each fold's
  threshold chosen on the other folds (as insightface reports it), plus AUC and TAR@FAR.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ml.data.dataset import DatasetError
from ml.data.folders import _native_channels, _resize, _to_array, list_identities
from ml.metrics.verification import auc, best_threshold, far_key, roc_curve, tar_at_far

BIN_FOLDS = 10  # insightface's KFold(n_splits=10, shuffle=False) over the .bin's pairs


class ProtocolError(DatasetError):
    """A protocol file cannot be read or does not match its dataset; the message says where."""


@dataclass(frozen=True)
class Pair:
    name_a: str
    index_a: int
    name_b: str
    index_b: int
    same: bool
    fold: int


def parse_pairs(text: str) -> list[Pair]:
    """The pairs of an LFW-style pairs.txt, with the fold of each (its block in the file)."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ProtocolError("pairs file is empty")
    header = lines[0]
    if not all(h.isdigit() for h in header) or len(header) not in (1, 2):
        raise ProtocolError(f"pairs file: first line must be '<folds> <pairs per kind>' or '<n>', got {header!r}")
    folds, per = (1, int(header[0])) if len(header) == 1 else (int(header[0]), int(header[1]))
    body = lines[1:]
    if folds < 1 or per < 1 or len(body) != 2 * folds * per:
        raise ProtocolError(f"pairs file: header says {folds} fold(s) of 2x{per} pairs, found {len(body)} pair lines")
    out = []
    for i, f in enumerate(body):
        where = f"pairs file line {i + 2}"
        same = (i % (2 * per)) < per
        numbers = f[1:] if len(f) == 3 else f[1::2]
        if len(f) != (3 if same else 4):
            kind = "same (name i j)" if same else "different (name_a i name_b j)"
            raise ProtocolError(f"{where}: expected a {kind} line, got {' '.join(f)!r}")
        if not all(n.isdigit() for n in numbers):
            raise ProtocolError(f"{where}: image numbers must be integers, got {' '.join(f)!r}")
        if same:
            out.append(Pair(f[0], int(f[1]), f[0], int(f[2]), True, i // (2 * per)))
        else:
            out.append(Pair(f[0], int(f[1]), f[2], int(f[3]), False, i // (2 * per)))
    return out


def _number(stem: str, name: str) -> int | None:
    m = re.fullmatch(rf"(?:{re.escape(name)}_)?0*(\d+)", stem)
    return int(m.group(1)) if m else None


def resolve_pairs(pairs: Sequence[Pair], folder: str | Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(files, a, b): the distinct image files the pairs name and each pair's two indices into them."""
    by_name: dict[str, dict[int, Path]] = {}
    for name, paths in list_identities(folder):
        numbered = {n: p for p in paths if (n := _number(p.stem, name)) is not None}
        by_name[name] = numbered
    files: list[Path] = []
    index: dict[Path, int] = {}

    def find(name: str, number: int) -> int:
        path = by_name.get(name, {}).get(number)
        if path is None:
            raise ProtocolError(f"pairs file names image {number} of {name!r}, not in the dataset "
                                f"(looked for {name}/{name}_{number:04d}.* and {name}/{number}.*)")  # fmt: skip
        if path not in index:
            index[path] = len(files)
            files.append(path)
        return index[path]

    a = np.array([find(p.name_a, p.index_a) for p in pairs], dtype=np.int64)
    b = np.array([find(p.name_b, p.index_b) for p in pairs], dtype=np.int64)
    return files, a, b


def decode_image(img: Image.Image, size: tuple[int, int], channels: int) -> np.ndarray:
    """(C, H, W) float32 in [0, 1], as `load_image_folder` makes it from an opened image."""
    img = img.copy() if img.mode != "P" else img.convert("RGBA")
    return _to_array(_resize(img, size), channels)


def load_images(sources: Sequence[Path | bytes], size: tuple[int, int], channels: int | None) -> torch.Tensor:
    """(N, C, H, W) of image files or encoded image bytes (channels None: the first image's); a bad
    one is a ProtocolError naming it."""
    arrays = []
    if channels is None and sources:
        try:
            with Image.open(sources[0] if isinstance(sources[0], Path) else io.BytesIO(sources[0])) as first:
                channels = _native_channels(first)
        except OSError as exc:
            raise ProtocolError(f"the first image is not readable: {exc}") from exc
    for i, src in enumerate(sources):
        try:
            with Image.open(src if isinstance(src, Path) else io.BytesIO(src)) as opened:
                arrays.append(decode_image(opened, size, channels or 3))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            what = src.name if isinstance(src, Path) else f"image {i}"
            raise ProtocolError(f"{what} is not a readable image: {exc}") from exc
    return torch.from_numpy(np.stack(arrays)).float()


# The only globals a .bin may name: how numpy 1.x and 2.x pickle a bool/int array.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # admitted as `_latin1_bytes` only: str -> bytes by latin1
}
_RECONSTRUCT = np.zeros(0, bool).__reduce__()[0]  # numpy's own array reconstructor (by value, no import by name)


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    """What Python 3 protocol-2 pickles spell bytes as (`_codecs.encode(str, "latin1")`), nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ProtocolError(f".bin calls _codecs.encode with {type(text).__name__}, {encoding!r}: refused")
    return text.encode("latin1")


class SafeBinUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes make (tuples, lists, bytes, str, numbers, bools), numpy
    arrays and protocol 2's spelling of bytes; every other global (os.system, builtins.eval, any
    class) is refused before it is looked up, so nothing in the file runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise ProtocolError(
                f".bin refers to {module}.{name}: a verification .bin holds only image bytes and pair flags; "
                "refused (nothing was executed)"
            )
        return {"_reconstruct": _RECONSTRUCT, "ndarray": np.ndarray, "dtype": np.dtype, "encode": _latin1_bytes}[name]


def load_bin(data: bytes) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, same flags) of an insightface verification `.bin`; images 2i and 2i+1 are pair i."""
    try:
        obj = SafeBinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except ProtocolError:
        raise
    except Exception as exc:  # a truncated or malformed pickle
        raise ProtocolError(f".bin is not a readable verification file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ProtocolError(f".bin must hold (images, issame), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in bins):
        raise ProtocolError(".bin images must be a list of encoded image bytes")
    if isinstance(issame, np.ndarray):
        if issame.dtype.kind not in "bi" or issame.ndim != 1:
            raise ProtocolError(f".bin issame array must be 1-d bool or int, got {issame.dtype} {issame.shape}")
        flags = issame.astype(bool)
    elif isinstance(issame, (list, tuple)) and all(isinstance(v, (bool, int)) for v in issame):
        flags = np.array([bool(v) for v in issame], dtype=bool)
    else:
        raise ProtocolError(".bin issame must be a list of bools or a bool array")
    if len(bins) != 2 * flags.size or flags.size < 2:
        raise ProtocolError(f".bin holds {len(bins)} images for {flags.size} pairs (needs 2 per pair, 2+ pairs)")
    return [bytes(b) for b in bins], flags


def dump_bin(images: Sequence[bytes], issame: Sequence[bool], protocol: int = 4) -> bytes:
    """A verification `.bin` as insightface writes it (for tests and conversions)."""
    return pickle.dumps((list(images), list(issame)), protocol=protocol)


def bin_folds(n: int, folds: int = BIN_FOLDS) -> np.ndarray:
    """Fold of each of n pairs: contiguous blocks, as sklearn's KFold without shuffling."""
    fold = np.empty(n, dtype=np.int64)
    for k, block in enumerate(np.array_split(np.arange(n), min(folds, n))):
        fold[block] = k
    return fold


def protocol_metrics(
    scores: np.ndarray, same: np.ndarray, fold: np.ndarray, fars: tuple[float, ...] = (1e-2, 1e-3)
) -> dict[str, Any]:
    """Accuracy mean/std over the folds (threshold of fold k chosen on the others), AUC, TAR@FAR."""
    s, y, f = np.asarray(scores, np.float64), np.asarray(same, bool), np.asarray(fold)
    ks = np.unique(f)
    if ks.size < 2:  # one block (pairsDevTest-style): insightface's 10 contiguous folds
        f, ks = bin_folds(s.size), np.unique(bin_folds(s.size))
    accs, thrs = [], []
    for k in ks:
        test = f == k
        thr, _ = best_threshold(s[~test], y[~test])
        thrs.append(thr)
        accs.append(float(np.mean((s[test] >= thr) == y[test])))
    fpr, tpr, _ = roc_curve(s, y)
    metrics: dict[str, Any] = {
        "accuracy": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),
        "threshold": float(np.mean(thrs)),
        "fold_accuracies": accs,
        "auc": auc(fpr, tpr),
        "folds": int(ks.size),
        "num_pairs": int(s.size),
        "num_same": int(y.sum()),
        "num_different": int((~y).sum()),
    }
    for far in fars:
        metrics[far_key(far)] = tar_at_far(s, y, far)[0]
    return metrics
