"""The built-in datasets: sklearn's 8x8 digits and MNIST from IDX files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from ml.data.dataset import DatasetError, DatasetNotFoundError, ImageDataset

# IDX type codes -> numpy dtypes (big-endian as stored).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# MNIST's file stems; the training files come first when both parts are present.
MNIST_PARTS = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)


def load_digits(image_size: int | tuple[int, int] = 32) -> ImageDataset:
    """sklearn's 1,797 handwritten digits (8x8, 17 grey levels) upsampled to `image_size`."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    ds = ImageDataset(images, labels, [str(d) for d in range(10)], "builtin:digits")
    return ds.resized(image_size)


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped) into a numpy array of its declared shape and type.

    Raises:
        DatasetError: the file is not a well-formed IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DatasetError(f"{path}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(shape)) if shape else 1
    if len(data) - header < count * dtype.itemsize:
        raise DatasetError(f"{path}: IDX header declares {shape} but the file is shorter")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (
        folder / f"{stem}.gz",
        folder / stem,
        folder / "MNIST" / "raw" / f"{stem}.gz",
        folder / "MNIST" / "raw" / stem,
    ):
        if candidate.is_file():
            return candidate
    return None


def _download_mnist(folder: Path) -> None:
    """torchvision's downloader (needs the internet); a clear `DatasetNotFoundError` where offline."""
    try:
        from torchvision.datasets import MNIST

        for train in (True, False):
            MNIST(str(folder), train=train, download=True)
    except Exception as exc:  # any network/SSL/HTTP failure means the same thing to the user
        raise DatasetNotFoundError(
            f"MNIST IDX files are not in {folder} and downloading them failed ({type(exc).__name__}: {exc}); "
            "put t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (and/or the train-* files) there"
        ) from exc


def load_mnist(
    folder: str | Path,
    image_size: int | tuple[int, int] = 28,
    max_samples: int | None = None,
    download: bool = False,
) -> ImageDataset:
    """MNIST from the IDX files in `folder` (train-* then t10k-*, whichever are present).

    Args:
        folder: folder holding `*-idx3-ubyte(.gz)` / `*-idx1-ubyte(.gz)` files (or torchvision's
            `MNIST/raw/` layout under it).
        image_size: output size; 28 keeps the originals, other sizes resize bilinearly.
        max_samples: keep only the first this many images.
        download: when no files are found, try torchvision's downloader into `folder`.

    Raises:
        DatasetNotFoundError: no IDX files found (and download off or failed).
        DatasetError: image and label files disagree.
    """
    folder = Path(folder)
    pairs = [(_find(folder, im), _find(folder, lb)) for im, lb in MNIST_PARTS]
    found = [(im, lb) for im, lb in pairs if im is not None and lb is not None]
    if not found and download:
        _download_mnist(folder)
        pairs = [(_find(folder, im), _find(folder, lb)) for im, lb in MNIST_PARTS]
        found = [(im, lb) for im, lb in pairs if im is not None and lb is not None]
    if not found:
        raise DatasetNotFoundError(
            f"no MNIST IDX files in {folder}: expected t10k-images-idx3-ubyte(.gz) with "
            "t10k-labels-idx1-ubyte(.gz) and/or the train-* pair"
        )
    images_parts, labels_parts = [], []
    for im_path, lb_path in found:
        images, labels = read_idx(im_path), read_idx(lb_path)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"MNIST files disagree: {im_path.name} has shape {images.shape}, "
                f"{lb_path.name} has shape {labels.shape}"
            )
        images_parts.append(images)
        labels_parts.append(labels)
    images_np = np.concatenate(images_parts)
    labels_np = np.concatenate(labels_parts).astype(np.int64)
    if max_samples is not None:
        images_np, labels_np = images_np[:max_samples], labels_np[:max_samples]
    x = torch.from_numpy(images_np.astype(np.float32) / 255.0).unsqueeze(1)
    ds = ImageDataset(x, torch.from_numpy(labels_np), [str(d) for d in range(10)], "builtin:mnist")
    return ds.resized(image_size)
