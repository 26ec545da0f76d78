"""Labelled image datasets for embedding training and evaluation.

Every loader returns an `ImageDataset`: all images in memory as one float tensor in [0, 1] of
shape (N, C, H, W), integer labels 0..K-1 and the identity names. Sources:

- `builtin:digits`: sklearn's 1,797 8x8 digits, upsampled (`load_digits`).
- `builtin:mnist`: MNIST IDX files (gzipped or not) from a folder (`load_mnist`).
- image folders, one sub-folder per identity (`load_image_folder`), used for uploaded datasets.

`load_dataset(ref, folder=...)` dispatches on a dataset reference. Splits held out for evaluation
are deterministic given a seed (`make_split`).
"""

from __future__ import annotations

from ml.data.builtin import load_digits, load_mnist, read_idx
from ml.data.dataset import (
    DatasetError,
    DatasetNotFoundError,
    EmptyDatasetError,
    ImageDataset,
    ImageSizeMismatchError,
    MixedChannelsError,
    NoIdentitiesError,
    SingleIdentityError,
    check_trainable,
)
from ml.data.folders import IMAGE_EXTENSIONS, load_image_folder
from ml.data.refs import load_dataset
from ml.data.splits import Split, make_split, split_by_identity, split_by_sample

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetNotFoundError",
    "EmptyDatasetError",
    "ImageDataset",
    "ImageSizeMismatchError",
    "MixedChannelsError",
    "NoIdentitiesError",
    "SingleIdentityError",
    "Split",
    "check_trainable",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "make_split",
    "read_idx",
    "split_by_identity",
    "split_by_sample",
]
