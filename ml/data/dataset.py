"""The in-memory labelled image dataset and the named errors of the data loaders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ml.core.errors import InputError


class DatasetError(InputError):
    """A dataset cannot be used as asked; the message says what is wrong and how to fix it."""


class EmptyDatasetError(DatasetError):
    """The dataset (or a split of it) holds no images."""


class SingleIdentityError(DatasetError):
    """Training and verification need at least two identities."""


class NoIdentitiesError(DatasetError):
    """A folder's layout gives no identity labels."""


class MixedChannelsError(DatasetError):
    """Images have different channel counts and no conversion (grey/rgb) was asked for."""


class ImageSizeMismatchError(DatasetError):
    """Images have different sizes and no common size was asked for."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset's files are not where they were looked for (and could not be downloaded)."""


@dataclass
class ImageDataset:
    """Images and identity labels, all in memory.

    Attributes:
        images: float32 (N, C, H, W) in [0, 1].
        labels: int64 (N,), values 0..num_classes-1.
        class_names: name of each label value (folder name, digit, ...).
        source: where the data came from (a dataset reference or a path), for config files.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise DatasetError(f"images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DatasetError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def identities_present(self) -> int:
        """How many distinct labels occur (a subset may hold fewer than `num_classes`)."""
        return int(torch.unique(self.labels).numel()) if len(self) else 0

    def subset(self, indices: Sequence[int] | torch.Tensor, relabel: bool = False) -> ImageDataset:
        """The images at `indices`; with `relabel`, labels are renumbered 0..K-1 in sorted order."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        images, labels = self.images[idx], self.labels[idx]
        names = list(self.class_names)
        if relabel:
            present = torch.unique(labels)
            remap = torch.full((self.num_classes,), -1, dtype=torch.long)
            remap[present] = torch.arange(present.numel())
            labels = remap[labels]
            names = [self.class_names[int(i)] for i in present]
        return ImageDataset(images, labels, names, self.source, dict(self.meta))

    def resized(self, size: int | tuple[int, int]) -> ImageDataset:
        """Bilinear resize of every image (no-op when the size already matches)."""
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if hw == self.image_size:
            return self
        images = F.interpolate(self.images, size=hw, mode="bilinear", align_corners=False, antialias=True)
        return ImageDataset(images.clamp_(0, 1), self.labels, self.class_names, self.source, dict(self.meta))

    def with_channels(self, channels: int) -> ImageDataset:
        """Convert to 1 (ITU-R 601 luma) or 3 (grey replicated) channels."""
        c = self.in_channels
        if channels == c:
            return self
        if channels == 1 and c == 3:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (self.images * w).sum(1, keepdim=True)
        elif channels == 3 and c == 1:
            images = self.images.expand(-1, 3, -1, -1).contiguous()
        else:
            raise DatasetError(f"cannot convert {c}-channel images to {channels} channels")
        return ImageDataset(images, self.labels, self.class_names, self.source, dict(self.meta))


def check_trainable(dataset: ImageDataset, what: str = "dataset") -> None:
    """Raise unless `dataset` has images of at least two identities.

    Raises:
        EmptyDatasetError: no images.
        SingleIdentityError: one identity only.
    """
    if len(dataset) == 0:
        raise EmptyDatasetError(f"the {what} ({dataset.source or 'unnamed'}) has no images")
    k = dataset.identities_present()
    if k < 2:
        name = dataset.class_names[int(dataset.labels[0])] if dataset.class_names else "?"
        raise SingleIdentityError(
            f"the {what} ({dataset.source or 'unnamed'}) has a single identity ({name!r}); "
            "ArcFace training and verification need at least two identities"
        )
