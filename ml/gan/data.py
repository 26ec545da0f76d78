"""Images for GAN training and recovery targets, through `ml.data`'s loaders.

A GAN needs no identity labels, so besides `ml.data`'s layouts (MNIST, digits, one sub-folder per
identity, `<identity>_<n>` files) a flat folder of unlabeled images is accepted here too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml.data import (
    IMAGE_EXTENSIONS,
    DatasetError,
    EmptyDatasetError,
    ImageSizeMismatchError,
    NoIdentitiesError,
    load_dataset,
)


def _flat_images(folder: Path, image_size: int | None, channels: str | None, max_images: int | None) -> torch.Tensor:
    """Every image file directly in `folder` (sorted by name), as (N, C, H, W) in [0, 1]."""
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    paths = [p for p in paths if not p.name.startswith(".")][:max_images]
    if not paths:
        raise EmptyDatasetError(f"no images in {folder}")
    arrays, sizes = [], set()
    for path in paths:
        with Image.open(path) as opened:
            grey = opened.mode in ("1", "L", "I", "F")
            mode = {"grey": "L", "rgb": "RGB"}.get(channels or "", "L" if grey else "RGB")
            img = opened.convert(mode)
        if image_size is not None:
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        sizes.add(img.size)
        arr = np.asarray(img, dtype=np.float32) / 255.0
        arrays.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    if len(sizes) > 1 or len({a.shape[0] for a in arrays}) > 1:
        raise ImageSizeMismatchError(f"images in {folder} differ in size or channels; set image_size and channels")
    return torch.from_numpy(np.stack(arrays))


def load_gan_images(
    ref: str,
    folder: str | Path | None,
    channels: str | None = None,
    max_images: int | None = None,
    resize_if_mixed: int | None = None,
) -> torch.Tensor:
    """The images of dataset `ref` as (N, C, H, W) in [0, 1] (labels dropped), at their native size.

    Args:
        ref: "builtin:mnist", "builtin:digits", "dataset:<id>" or a folder path.
        folder: the local folder the platform resolved `ref` to (None for builtin:digits).
        channels: "grey" or "rgb" to convert; None keeps the source's.
        max_images: keep the first this many.
        resize_if_mixed: when the images differ in size, resize them all to this side (None: refuse).

    Raises:
        DatasetError (and subclasses): missing or unusable data.
    """
    mode = channels if channels in ("grey", "rgb") else None
    size: int | None = None
    for attempt in range(2):
        try:
            ds = load_dataset(ref, folder, image_size=size, channels=mode, max_samples=max_images)  # type: ignore[arg-type]
            return ds.images
        except ImageSizeMismatchError:
            if attempt or resize_if_mixed is None:
                raise
            size = resize_if_mixed
        except NoIdentitiesError:
            return _flat_images(Path(folder if folder is not None else ref), resize_if_mixed, mode, max_images)
    raise DatasetError(f"cannot load {ref}")  # unreachable: the loop returns or raises
