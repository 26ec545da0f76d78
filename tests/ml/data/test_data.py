"""ml.data: built-in datasets, IDX parsing, image folders, named errors and seeded splits."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits as sk_digits

from ml.data import (
    DatasetError,
    DatasetNotFoundError,
    EmptyDatasetError,
    ImageSizeMismatchError,
    MixedChannelsError,
    NoIdentitiesError,
    SingleIdentityError,
    check_trainable,
    load_dataset,
    load_digits,
    load_image_folder,
    load_mnist,
    make_split,
    read_idx,
    split_by_identity,
    split_by_sample,
)


def test_digits_native_and_upsampled() -> None:
    native = load_digits(8)
    ref = sk_digits()
    assert len(native) == 1797 and native.num_classes == 10
    torch.testing.assert_close(native.images[:, 0], torch.from_numpy(ref.images / 16.0).float())
    assert native.labels.tolist() == ref.target.tolist()
    big = load_digits(32)
    assert big.images.shape == (1797, 1, 32, 32)
    # Blank background and full-ink strokes survive the resize exactly: the range is [0, 1] itself.
    assert (float(big.images.min()), float(big.images.max())) == (0.0, 1.0)
    assert big.source == "builtin:digits"


def test_mnist_from_the_idx_files(mnist_dir: Path) -> None:
    ds = load_mnist(mnist_dir, 28)
    assert ds.images.shape == (8000, 1, 28, 28)
    # The MNIST test set starts 7 2 1 0 4 1 4 9 5 9.
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    raw = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert raw.shape == (8000, 28, 28) and raw.dtype == np.uint8
    torch.testing.assert_close(ds.images[123, 0], torch.from_numpy(raw[123] / 255.0).float())
    counts = torch.bincount(ds.labels).tolist()
    assert sum(counts) == 8000 and min(counts) > 600
    resized = load_mnist(mnist_dir, 32, max_samples=100)
    assert resized.images.shape == (100, 1, 32, 32)
    assert torch.equal(resized.labels, ds.labels[:100])


def _write_idx(path: Path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_read_idx_exact_and_bad_files(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    _write_idx(tmp_path / "a.idx", arr, 0x0C)
    assert np.array_equal(read_idx(tmp_path / "a.idx"), arr)
    _write_idx(tmp_path / "b.idx.gz", arr.astype(np.uint8) + 5, 0x08)
    assert np.array_equal(read_idx(tmp_path / "b.idx.gz"), arr.astype(np.uint8) + 5)
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DatasetError, match="bad magic number"):
        read_idx(tmp_path / "bad.idx")
    (tmp_path / "short.idx").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(DatasetError, match="shorter"):
        read_idx(tmp_path / "short.idx")


def test_mnist_missing_files_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"no MNIST IDX files in .*t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)
    with pytest.raises(DatasetError, match="needs the folder"):
        load_dataset("builtin:mnist")
    with pytest.raises(DatasetError, match="unknown built-in dataset 'builtin:cifar'"):
        load_dataset("builtin:cifar")


def test_orl_folder(orl_dir: Path) -> None:
    ds = load_image_folder(orl_dir)
    assert len(ds) == 300 and ds.num_classes == 30
    assert ds.class_names[:3] == ["s1", "s2", "s3"] and ds.class_names[-1] == "s30"
    assert ds.images.shape == (300, 1, 112, 92)
    assert torch.bincount(ds.labels).tolist() == [10] * 30
    with Image.open(orl_dir / "s2" / "1.pgm") as img:
        first = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    torch.testing.assert_close(ds.images[10, 0], first)
    rgb = load_image_folder(orl_dir, image_size=(56, 46), channels="rgb", max_per_identity=2)
    assert rgb.images.shape == (60, 3, 56, 46)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 1])


def _img(path: Path, mode: str = "L", size: tuple[int, int] = (8, 6), value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)


def test_folder_layouts(tmp_path: Path) -> None:
    nested = tmp_path / "nested"
    for who in ("bob", "alice"):
        for i in range(3):
            _img(nested / who / f"{i}.png", value=10 * i)
    _img(nested / "alice" / "deeper" / "x.png")  # any depth inside an identity counts
    ds = load_image_folder(nested)
    assert ds.class_names == ["alice", "bob"] and torch.bincount(ds.labels).tolist() == [4, 3]

    wrapped = tmp_path / "wrapped"  # an archive's root folder around the identities
    for who in ("a", "b"):
        _img(wrapped / "root" / who / "1.png")
    assert load_image_folder(wrapped).class_names == ["a", "b"]

    flat = tmp_path / "flat"
    for name in ("Aaron_Peirsol_0001.png", "Aaron_Peirsol_0002.png", "Zoe_1.png"):
        _img(flat / name)
    ds = load_image_folder(flat)
    assert ds.class_names == ["Aaron_Peirsol", "Zoe"] and ds.labels.tolist() == [0, 0, 1]

    unnamed = tmp_path / "unnamed"
    _img(unnamed / "face.png")
    with pytest.raises(NoIdentitiesError, match=r"without identity labels.*'face\.png'"):
        load_image_folder(unnamed)


def test_a_dataset_under_a_dotted_folder_lists_its_images_and_hides_only_what_is_below_its_root(
    tmp_path: Path,
) -> None:
    # Where a worker caches an uploaded dataset in the default `make up` home (`.facejobs/` in the checkout).
    root = tmp_path / ".facejobs" / "cache" / "datasets" / "abc123"
    for who in ("s1", "s2"):
        for i in (1, 2, 3):
            _img(root / who / f"{i}.png", value=20 * i)
    _img(root / "s2" / "deeper" / "4.png")  # any depth inside an identity still counts
    _img(root / "s1" / ".thumbs" / "x.png")  # a dotted folder below the root stays hidden
    _img(root / "s1" / ".x.png")  # and so does a dotted file
    _img(root / "__MACOSX" / "s1" / "._1.png")  # macOS resource forks of a zip
    _img(root / "s2" / "__MACOSX" / "9.png")
    _img(root / ".trash" / "7.png")  # a dotted identity folder is no identity
    ds = load_image_folder(root)
    assert ds.class_names == ["s1", "s2"] and torch.bincount(ds.labels).tolist() == [3, 4]
    assert ds.images.shape == (7, 1, 6, 8)

    flat = tmp_path / ".cache" / "flat"  # the flat layout under a dotted folder too
    for name in ("ann_1.png", "ann_2.png", "bo_1.png", ".bo_2.png"):
        _img(flat / name)
    ds = load_image_folder(flat)
    assert ds.class_names == ["ann", "bo"] and ds.labels.tolist() == [0, 0, 1]


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_text("no images")
    with pytest.raises(EmptyDatasetError, match="no images in"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")

    one = tmp_path / "one"
    for i in range(3):
        _img(one / "only" / f"{i}.png")
    ds = load_image_folder(one)
    with pytest.raises(SingleIdentityError, match=r"single identity \('only'\).*at least two"):
        check_trainable(ds)

    mixed = tmp_path / "mixed"
    _img(mixed / "a" / "1.png", "L")
    _img(mixed / "b" / "1.png", "RGB")
    with pytest.raises(MixedChannelsError, match=r"1-channel: .*a/1.png; 3-channel: .*b/1.png.*'grey' or 'rgb'"):
        load_image_folder(mixed)
    assert load_image_folder(mixed, channels="grey").images.shape == (2, 1, 6, 8)
    assert load_image_folder(mixed, channels="rgb").images.shape == (2, 3, 6, 8)

    sizes = tmp_path / "sizes"
    _img(sizes / "a" / "1.png", size=(8, 6))
    _img(sizes / "b" / "1.png", size=(10, 6))
    with pytest.raises(ImageSizeMismatchError, match="set image_size"):
        load_image_folder(sizes)
    assert load_image_folder(sizes, image_size=16).images.shape == (2, 1, 16, 16)


def test_split_by_identity_is_disjoint_and_seeded(orl_dir: Path) -> None:
    labels = load_image_folder(orl_dir, image_size=8).labels
    split = split_by_identity(labels, 1 / 3, seed=0)
    train_ids, test_ids = set(labels[split.train].tolist()), set(labels[split.test].tolist())
    assert len(train_ids) == 20 and len(test_ids) == 10 and not train_ids & test_ids
    assert split.train.numel() == 200 and split.test.numel() == 100
    again = split_by_identity(labels, 1 / 3, seed=0)
    assert torch.equal(again.test, split.test)
    assert not torch.equal(split_by_identity(labels, 1 / 3, seed=1).test, split.test)
    with pytest.raises(SingleIdentityError, match="at least 4 identities"):
        split_by_identity(torch.tensor([0, 0, 1, 1, 2]), 0.5, seed=0)


def test_split_by_sample_is_stratified(mnist_dir: Path) -> None:
    labels = load_mnist(mnist_dir, 28).labels
    split = make_split(labels, "sample", 0.25, seed=0)
    assert split.train.numel() + split.test.numel() == 8000
    assert not set(split.train.tolist()) & set(split.test.tolist())
    counts = torch.bincount(labels, minlength=10)
    test_counts = torch.bincount(labels[split.test], minlength=10)
    assert test_counts.tolist() == [round(int(c) * 0.25) for c in counts]
    tiny = split_by_sample(torch.tensor([0, 1, 1, 2, 2, 2]), 0.5, seed=0)
    # round(2 * 0.5) = 1 and round(3 * 0.5) = 2 held out; the single image of class 0 stays in training.
    assert sorted(torch.tensor([0, 1, 1, 2, 2, 2])[tiny.test].tolist()) == [1, 2, 2]
    assert tiny.train.tolist()[0] == 0 and tiny.train.numel() == 3
    with pytest.raises(DatasetError, match="split must be 'identity' or 'sample'"):
        make_split(labels, "random", 0.25, 0)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="strictly between 0 and 1"):
        make_split(labels, "sample", 1.0, 0)


def test_subset_relabel_and_channels() -> None:
    ds = load_digits(8)
    sub = ds.subset(torch.nonzero((ds.labels == 3) | (ds.labels == 7)).flatten(), relabel=True)
    assert sub.class_names == ["3", "7"] and set(sub.labels.tolist()) == {0, 1}
    rgb = sub.with_channels(3)
    assert rgb.in_channels == 3
    torch.testing.assert_close(rgb.with_channels(1).images, sub.images)
    assert load_dataset("builtin:digits", image_size=16, channels="rgb").images.shape == (1797, 3, 16, 16)
