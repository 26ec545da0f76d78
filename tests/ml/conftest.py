"""Fixtures of the ml tests: an ArcFace model trained once per session on MNIST.

`mnist_arcface` is shared with other test modules (model inversion uses it): a `TrainedEmbedding`
(see `ml.arcface.config.TrainedEmbedding`) with
- `.backbone`: se_resnet18 (in_channels=1, 32x32 input, base width 16, 128-d), eval mode, CPU;
- `.arcface_weight`: W of shape (embedding_size, num_classes) = (128, 10), pytorch-metric-learning's
  `ArcFaceLoss.W` layout (column c is digit c's direction);
- `.num_classes` (10), `.class_names` ("0".."9"), `.image_size` ((32, 32)), `.in_channels` (1);
- `.normalize`: `ml.arcface.model.Normalization` (mean 0.5, std 0.5: [0, 1] -> [-1, 1]);
- `.split`, `.train_indices`, `.test_indices`: indices into `mnist32` (the 8,000 MNIST images at
  32x32), split by sample: 75% of every digit to train, 25% held out;
- `.metrics`: held-out verification/identification metrics; `.history`: per-epoch loss/accuracy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ml.arcface.train import TrainedEmbedding
from ml.data import ImageDataset, load_mnist
from tests.support import pretrain
from tests.support.recipes import train_mnist_arcface
from tests.support.threads import one_torch_thread


@pytest.fixture(scope="session")
def mnist32(mnist_dir: Path) -> ImageDataset:
    """The shared MNIST images (8,000) resized to 32x32, in [0, 1]."""
    return load_mnist(mnist_dir, 32)


@pytest.fixture(scope="session")
def mnist_arcface(mnist_dir: Path) -> TrainedEmbedding:
    """se_resnet18 trained with ArcFace on 75% of MNIST (by sample), evaluated on the other 25%
    (`tests.support.recipes.train_mnist_arcface`; trained in the background while the first tests
    run when the session collects a test that needs it: `tests.support.pretrain`)."""
    trained: TrainedEmbedding | None = pretrain.take("mnist_arcface")
    return trained if trained is not None else train_mnist_arcface(mnist_dir)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The test runs with one torch thread (`tests.support.threads`): its training gives the same numbers
    whatever OMP_NUM_THREADS or torch's default thread count is."""
    with one_torch_thread():
        yield
