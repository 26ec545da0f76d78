"""Images for GANs: ORL through ml.data, flat unlabeled folders, centre-cropping to the square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ml.data import ImageSizeMismatchError
from ml.gan.common import fit_images
from ml.gan.data import load_gan_images


def test_orl_faces_load_and_are_centre_cropped_not_squashed(orl_dir: Path) -> None:
    images = load_gan_images("dataset:orl", orl_dir, max_images=12)
    assert images.shape == (12, 1, 112, 92)  # ORL's 92x112 PGMs, grey, the first 12 (s1 then s2)
    fitted = fit_images(images, 1, (64, 64))
    assert fitted.shape == (12, 1, 64, 64)
    centre = images[:, :, 10:102, :]  # the central 92x92 square
    expected = F.interpolate(centre, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(fitted, expected.clamp(0, 1), rtol=0, atol=1e-6)
    rgb = fit_images(images[:2], 3, (32, 32))
    assert rgb.shape == (2, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2])


def test_a_flat_folder_without_identities_is_accepted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("face.png", "other.png", "third.png"):  # no <identity>_<n> names: ml.data refuses them
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / name)
    images = load_gan_images("dataset:flat", tmp_path)
    assert images.shape == (3, 3, 20, 24)
    with Image.open(tmp_path / "face.png") as img:
        first = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(images[0], first)
    assert load_gan_images("dataset:flat", tmp_path, channels="grey", max_images=2).shape == (2, 1, 20, 24)


def test_mixed_sizes_are_resized_only_when_allowed(tmp_path: Path) -> None:
    for ident, size in (("a", (20, 20)), ("b", (30, 24))):
        (tmp_path / ident).mkdir()
        Image.new("L", size, 128).save(tmp_path / ident / "1.png")
    with pytest.raises(ImageSizeMismatchError):
        load_gan_images("dataset:mixed", tmp_path)
    assert load_gan_images("dataset:mixed", tmp_path, resize_if_mixed=16).shape == (2, 1, 16, 16)
