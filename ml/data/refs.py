"""Dataset references (`builtin:digits`, `builtin:mnist`, `dataset:<id>`, a path) -> `ImageDataset`."""

from __future__ import annotations

from pathlib import Path

from ml.data.builtin import load_digits, load_mnist
from ml.data.dataset import DatasetError, ImageDataset
from ml.data.folders import ChannelMode, load_image_folder

BUILTINS = ("builtin:digits", "builtin:mnist")


def load_dataset(
    ref: str,
    folder: str | Path | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: ChannelMode = None,
    max_samples: int | None = None,
    download: bool = False,
) -> ImageDataset:
    """Load the dataset named by `ref`.

    Args:
        ref: "builtin:digits" (no folder needed), "builtin:mnist" (the IDX folder in `folder`),
            "dataset:<id>" (the uploaded image folder in `folder`) or a folder path.
        folder: local folder of the data, as the platform resolved it.
        image_size: resize to this (digits and MNIST default to 32 and 28).
        channels: "grey"/"rgb" to convert; None keeps the source's channels.
        max_samples: keep the first this many images (MNIST/digits order, or natural folder order).
        download: for MNIST, try torchvision's downloader when the files are missing.

    Raises:
        DatasetError (and subclasses): unknown reference, missing folder, bad data.
    """
    if ref == "builtin:digits":
        ds = load_digits(image_size or 32)
    elif ref == "builtin:mnist":
        if folder is None:
            raise DatasetError("builtin:mnist needs the folder of its IDX files")
        ds = load_mnist(folder, image_size or 28, download=download)
    elif ref.startswith("builtin:"):
        raise DatasetError(f"unknown built-in dataset {ref!r}; built-ins are {', '.join(BUILTINS)}")
    else:
        path = Path(folder) if folder is not None else Path(ref)
        ds = load_image_folder(path, image_size, channels, source=ref)
    if max_samples is not None:
        if max_samples < 1:
            raise DatasetError(f"max_samples must be >= 1, got {max_samples}")
        ds = ds.subset(range(min(max_samples, len(ds))))
    if channels is not None and ref.startswith("builtin:"):
        ds = ds.with_channels(1 if channels == "grey" else 3)
    return ds
