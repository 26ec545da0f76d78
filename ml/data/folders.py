"""Image folders: one sub-folder per identity (uploaded datasets, ORL), or flat `<identity>_<n>.ext`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ml.data.dataset import (
    DatasetNotFoundError,
    EmptyDatasetError,
    ImageDataset,
    ImageSizeMismatchError,
    MixedChannelsError,
    NoIdentitiesError,
)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)
ChannelMode = Literal["grey", "rgb"] | None
_GREY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L"}


def natural_key(text: str) -> list[object]:
    """Sort key putting "s2" before "s10"."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(path)


def _hidden(path: Path) -> bool:
    return _hidden_part(path.name)


def _hidden_part(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def _images_under(folder: Path) -> list[Path]:
    """Images at any depth below `folder`, skipping hidden files and folders below it.

    Only the parts below `folder` count: the dataset's own location (a cache under `~/.cache` or a
    checkout's `.facejobs/`) often has a dotted folder above it, and that hides nothing.
    """
    found = [
        p for p in folder.rglob("*") if _is_image(p) and not any(_hidden_part(q) for q in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: natural_key(str(p.relative_to(folder))))


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not _hidden(p)), key=lambda p: natural_key(p.name))


def _unwrap(folder: Path) -> Path:
    """Descend through single wrapper folders (an archive's root folder) that hold no images."""
    while True:
        subs = _subdirs(folder)
        loose = [p for p in folder.iterdir() if _is_image(p)]
        if loose or len(subs) != 1 or not _subdirs(subs[0]):
            return folder
        folder = subs[0]


def _flat_identity(path: Path) -> str | None:
    """`Aaron_Peirsol_0001.jpg` -> `Aaron_Peirsol`; `7-3.png` -> `7`; no separator -> None."""
    for sep in ("_", "-"):
        if sep in path.stem:
            head = path.stem.rsplit(sep, 1)[0]
            return head or None
    return None


def list_identities(folder: str | Path) -> list[tuple[str, list[Path]]]:
    """(identity, image paths) pairs found under `folder`, in natural order.

    Nested layout: each sub-folder holding images (at any depth) is one identity; loose images
    beside sub-folders are ignored. Flat layout: identity is the file name before its last `_`
    (or `-`).

    Raises:
        DatasetNotFoundError: `folder` does not exist.
        EmptyDatasetError: no image files.
        NoIdentitiesError: a flat folder whose file names carry no identity.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"dataset folder {folder} does not exist")
    folder = _unwrap(folder)
    nested = [(d.name, _images_under(d)) for d in _subdirs(folder)]
    nested = [(name, paths) for name, paths in nested if paths]
    if nested:
        return nested
    flat = [p for p in folder.iterdir() if _is_image(p)]
    if not flat:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise EmptyDatasetError(f"no images in {folder} (looked for {exts} files, in sub-folders too)")
    groups: dict[str, list[Path]] = {}
    unnamed = []
    for p in flat:
        ident = _flat_identity(p)
        if ident is None:
            unnamed.append(p.name)
        else:
            groups.setdefault(ident, []).append(p)
    if unnamed:
        raise NoIdentitiesError(
            f"{folder} is a flat folder of images without identity labels (e.g. {unnamed[0]!r}): put each "
            "identity's images in its own sub-folder, or name files <identity>_<n>.<ext>"
        )
    return [(k, sorted(groups[k], key=lambda p: natural_key(p.name))) for k in sorted(groups, key=natural_key)]


def _native_channels(img: Image.Image) -> int:
    return 1 if img.mode in _GREY_MODES else 3


def _to_array(img: Image.Image, channels: int) -> np.ndarray:
    """(C, H, W) float32 in [0, 1]."""
    if channels == 1:
        if img.mode.startswith("I;16"):
            arr = np.asarray(img, dtype=np.float32) / 65535.0
        elif img.mode in ("I", "F"):
            arr = np.asarray(img, dtype=np.float32)
            top = 65535.0 if arr.max() > 255 else 255.0
            arr = arr / top
        else:
            arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        return np.clip(arr, 0, 1)[None]
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        grey = _to_array(img, 1)
        return np.repeat(grey, 3, axis=0)
    return np.asarray(img.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0


def _resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    h, w = size
    if img.size == (w, h):
        return img
    if img.mode in ("1", "P", "LA", "RGBA", "CMYK", "YCbCr") or img.mode.startswith("I;16"):
        img = img.convert("F" if img.mode.startswith("I;16") else ("L" if img.mode in ("1", "LA") else "RGB"))
        if img.mode == "F":
            img = img.point(lambda v: v / 257.0)  # 16-bit -> 8-bit scale, stays float
    return img.resize((w, h), Image.Resampling.BILINEAR)


def load_image_folder(
    folder: str | Path,
    image_size: int | tuple[int, int] | None = None,
    channels: ChannelMode = None,
    max_per_identity: int | None = None,
    source: str | None = None,
) -> ImageDataset:
    """Load every image under `folder` with identity labels (see `list_identities` for layouts).

    Args:
        folder: the dataset folder.
        image_size: resize every image to this side or (height, width); None requires one size.
        channels: "grey" or "rgb" converts every image; None keeps them and requires one channel count.
        max_per_identity: keep at most this many images per identity (the first in natural order).
        source: name recorded in the dataset (default: the folder path).

    Raises:
        EmptyDatasetError, NoIdentitiesError, DatasetNotFoundError: see `list_identities`.
        MixedChannelsError: grey and colour images mixed while `channels` is None.
        ImageSizeMismatchError: images of different sizes while `image_size` is None.
    """
    groups = list_identities(folder)
    size = (
        None if image_size is None else ((image_size, image_size) if isinstance(image_size, int) else tuple(image_size))
    )
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    by_channels: dict[int, str] = {}
    by_size: dict[tuple[int, int], str] = {}
    for label, (_, paths) in enumerate(groups):
        for path in paths[:max_per_identity] if max_per_identity else paths:
            with Image.open(path) as opened:
                img = opened.copy() if opened.mode != "P" else opened.convert("RGBA")
            native = _native_channels(img)
            by_channels.setdefault(native, str(path))
            by_size.setdefault((img.size[1], img.size[0]), str(path))
            c = {"grey": 1, "rgb": 3, None: native}[channels]
            if size is not None:
                img = _resize(img, size)  # type: ignore[arg-type]
            arrays.append(_to_array(img, c))
            labels.append(label)
    _check_uniform(by_channels, by_size, channels, size)
    images = torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, 1, 1, 1)
    if not arrays:
        raise EmptyDatasetError(f"no images loaded from {folder}")
    return ImageDataset(
        images.float(), torch.tensor(labels, dtype=torch.long), [name for name, _ in groups], source or str(folder)
    )


def _check_uniform(
    by_channels: dict[int, str], by_size: dict[tuple[int, int], str], channels: ChannelMode, size: object
) -> None:
    if channels is None and len(by_channels) > 1:
        examples = "; ".join(f"{c}-channel: {p}" for c, p in sorted(by_channels.items()))
        raise MixedChannelsError(
            f"images have different channel counts ({examples}); ask for channels='grey' or 'rgb' to convert them"
        )
    if size is None and len(by_size) > 1:
        examples = "; ".join(f"{h}x{w}: {p}" for (h, w), p in _first(sorted(by_size.items()), 3))
        raise ImageSizeMismatchError(f"images have different sizes ({examples}); set image_size to resize them")


def _first(items: Iterable[tuple[tuple[int, int], str]], n: int) -> list[tuple[tuple[int, int], str]]:
    return list(items)[:n]
