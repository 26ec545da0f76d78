"""What the `gpu` tests share: float32 comparisons between CPU and CUDA, and small models.

Each `tests/ml/test_gpu_*.py` module marks its tests `gpu` and gets the device from `need_gpu()`
(tests/conftest.py): they skip without CUDA and fail under FACEJOBS_REQUIRE_GPU=1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ml.backbones import create_backbone


@contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off for matmuls and convolutions, so CUDA computes at the CPU's float32 precision.

    cuDNN convolutions use TF32 by default on Ampere and later (10 mantissa bits): compared with
    the CPU after a few optimiser steps, that alone would exceed the tolerances below.
    """
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rgb_model(name: str = "se_resnet18") -> tuple[nn.Module, torch.Tensor]:
    """A small untrained 3-channel backbone (16x16 input, 16-d) and 5 class weights, on the CPU.

    Three channels, because with one channel the contiguous and channels-last layouts are the same
    memory. `iresnet18` has no adaptive pooling, so it also runs in deterministic mode on CUDA
    (se_resnet18's SE blocks pool adaptively, whose CUDA backward has no deterministic kernel).
    """
    # The seed matters: from an untrained model some class weights leave pixels with near-zero
    # gradients, which Adam's normalised steps turn float rounding into visible differences (0.6
    # between the two CPU layouts after 12 steps with another draw of W, 1e-5 with this one).
    torch.manual_seed(0)
    backbone = create_backbone(name, in_channels=3, input_size=16, base_width=4, embedding_size=16)
    return backbone.eval(), torch.randn(16, 5)
