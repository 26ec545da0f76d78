"""The face index: exact and HNSW kinds, versions that never edit in place, files as plain data."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import faiss
import numpy as np
import pytest

from ml.index import (
    FaceIndex,
    IndexFileError,
    IndexInputError,
    IndexSettings,
    build_index,
    load_index,
    save_index,
    similarity_threshold,
)
from ml.index.synthetic import draw_like, synthetic_embeddings


def unit(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def small(n: int = 30, settings: IndexSettings | None = None) -> tuple[FaceIndex, np.ndarray]:
    x = unit(n)
    return build_index(x, [f"img{i}.png" for i in range(n)], [f"p{i % 3}" for i in range(n)], settings), x


def test_exact_up_to_the_size_setting_and_hnsw_above_it() -> None:
    index, x = small(30, IndexSettings(exact_max=30))
    assert index.kind == "flat" and type(index.index) is faiss.IndexFlatIP and len(index) == 30
    sims, rows = index.search(x[:4], 3)
    brute = x[:4] @ x.T
    np.testing.assert_array_equal(rows, np.argsort(-brute, axis=1)[:, :3])
    np.testing.assert_allclose(sims, np.sort(brute, axis=1)[:, ::-1][:, :3], atol=1e-6)
    bigger, _ = small(31, IndexSettings(exact_max=30))
    assert bigger.kind == "hnsw" and type(bigger.index) is faiss.IndexHNSWFlat
    # k past the row count gives every row once.
    assert index.search(x[:1], 100)[1].shape == (1, 30)


def test_add_and_remove_give_new_versions_and_leave_the_old_one_alone() -> None:
    v1, x = small(30, IndexSettings(exact_max=32))
    extra = unit(3, seed=1)
    v2 = v1.add(extra, ["new0", "new1", "new2"], ["p9", "p9", ""])
    assert (v1.version, len(v1), v1.kind) == (1, 30, "flat")
    assert (v2.version, len(v2), v2.kind) == (2, 33, "hnsw")  # past exact_max: rebuilt approximate
    assert v2.keys[-3:] == ("new0", "new1", "new2") and v2.identities[-1] == ""
    assert v1.search(extra, 1)[1][0, 0] < 30 and v2.search(extra, 1)[1][:, 0].tolist() == [30, 31, 32]
    v3 = v2.remove(["img0.png", "new1"])
    assert (v3.version, len(v3)) == (3, 31) and "img0.png" not in v3.keys and "new1" not in v3.keys
    assert len(v2) == 33 and v2.keys[0] == "img0.png"
    np.testing.assert_array_equal(v3.embeddings()[0], x[1])
    v4 = v1.add(extra[:1], ["new0"], ["p9"])  # a flat add copies the faiss index
    assert v4.kind == "flat" and len(v4) == 31 and len(v1) == 30 and v1.index is not v4.index
    with pytest.raises(IndexInputError, match="appears twice"):
        v1.add(extra[:1], ["img3.png"], ["p0"])
    with pytest.raises(IndexInputError, match="not in the index"):
        v1.remove(["nobody.png"])


def test_bad_embeddings_are_refused_with_what_was_wrong() -> None:
    x = unit(4)
    with pytest.raises(IndexInputError, match="L2-normalised"):
        build_index(x * 2, list("abcd"), [""] * 4)
    with pytest.raises(IndexInputError, match="NaN"):
        build_index(np.full((2, 4), np.nan), ["a", "b"], ["", ""])
    with pytest.raises(IndexInputError, match="4 strings"):
        build_index(x, ["a", "b"], [""] * 4)
    index = build_index(x, list("abcd"), [""] * 4)
    with pytest.raises(IndexInputError, match="dimension 8"):
        index.search(unit(1, d=8), 1)
    with pytest.raises(IndexInputError, match="exactly one"):
        similarity_threshold()
    with pytest.raises(IndexInputError, match=r"\[0, 2\]"):
        similarity_threshold(distance=2.5)
    assert similarity_threshold(distance=0.4) == pytest.approx(0.6)


@pytest.mark.parametrize("exact_max", [100, 10])
def test_a_saved_index_loads_back_the_same(tmp_path: Path, exact_max: int) -> None:
    index, x = small(40, IndexSettings(exact_max=exact_max, ef_search=64))
    index = index.add(unit(2, seed=5), ["a", "b"], ["p7", "p7"])
    paths = save_index(index, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["idmap.json", "index.faiss"]
    back = load_index(tmp_path)
    assert (back.kind, back.version, back.keys, back.identities) == (index.kind, 2, index.keys, index.identities)
    assert back.settings == index.settings
    for a, b in zip(index.search(x, 5), back.search(x, 5), strict=True):
        np.testing.assert_array_equal(a, b)


def _saved(tmp_path: Path, exact_max: int = 100) -> tuple[Path, dict[str, object]]:
    index, _ = small(40, IndexSettings(exact_max=exact_max))
    save_index(index, tmp_path)
    return tmp_path, json.loads((tmp_path / "idmap.json").read_text())


def _rewrite(folder: Path, idmap: dict[str, object], data: bytes | None = None) -> None:
    """Write the map (and faiss bytes) back with a matching length and digest, as a forger would."""
    if data is not None:
        (folder / "index.faiss").write_bytes(data)
        idmap = {**idmap, "faiss_bytes": len(data), "faiss_sha256": hashlib.sha256(data).hexdigest()}
    (folder / "idmap.json").write_text(json.dumps(idmap))


def test_corrupt_or_foreign_files_are_refused(tmp_path: Path) -> None:
    folder, idmap = _saved(tmp_path / "a")
    data = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(data[:-7])
    with pytest.raises(IndexFileError, match="truncated or swapped"):
        load_index(folder)
    flipped = bytearray(data)
    flipped[100] ^= 0xFF
    (folder / "index.faiss").write_bytes(bytes(flipped))
    with pytest.raises(IndexFileError, match="SHA-256"):
        load_index(folder)
    _rewrite(folder, idmap, pickle.dumps({"not": "an index", "pad": "x" * 100}))  # a pickle is never unpickled
    with pytest.raises(IndexFileError, match="starts with"):
        load_index(folder)
    _rewrite(folder, {**idmap, "count": 39, "keys": idmap["keys"][:39], "identities": idmap["identities"][:39]}, data)
    with pytest.raises(IndexFileError, match="holds 40 rows"):
        load_index(folder)
    _rewrite(folder, {**idmap, "kind": "hnsw"}, data)
    with pytest.raises(IndexFileError, match="starts with b'IxFI'"):
        load_index(folder)
    _rewrite(folder, {**idmap, "keys": ["same"] * 40}, data)
    with pytest.raises(IndexFileError, match="unique"):
        load_index(folder)
    _rewrite(folder, idmap, data[:-4] + b"\0\0\0\0" + b"junk")  # a flat file longer than its rows
    with pytest.raises(IndexFileError, match="a flat index of 40 x 16 is"):
        load_index(folder)
    (folder / "idmap.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="not JSON"):
        load_index(folder)
    (folder / "idmap.json").write_text(json.dumps({**idmap, "format": "other/9"}))
    with pytest.raises(IndexFileError, match="other/9"):
        load_index(folder)
    with pytest.raises(IndexFileError, match=r"no idmap\.json"):
        load_index(tmp_path / "nowhere")
    # An HNSW file whose inner storage is not a flat index is refused by faiss's parser, as IndexFileError.
    folder, idmap = _saved(tmp_path / "b", exact_max=10)
    data = (folder / "index.faiss").read_bytes()
    inner = data.index(b"IxFI", 4)
    _rewrite(folder, idmap, data[:inner] + b"XXXX" + data[inner + 4 :])
    with pytest.raises(IndexFileError, match="not a readable faiss index"):
        load_index(folder)


@pytest.mark.slow
def test_hnsw_recall_at_10_against_exact_on_100k_vectors() -> None:
    """1,000 queries; the bound is on the mean minus 3.3 standard errors (one-sided 99.95%), so a run
    passes because the index is good, not because one sample of queries was lucky."""
    n, d = 100_000, 64
    xb, rng = synthetic_embeddings(n, d, seed=0)
    xq = draw_like(rng, 1000, d, seed=0)
    keys, who = [f"r{i}" for i in range(n)], [""] * n
    exact = build_index(xb, keys, who, IndexSettings(exact_max=n))
    approx = build_index(xb, keys, who, IndexSettings(exact_max=n - 1))
    assert (exact.kind, approx.kind) == ("flat", "hnsw")
    truth, found = exact.search(xq, 10)[1], approx.search(xq, 10)[1]
    recall = np.array([len(set(a) & set(b)) / 10 for a, b in zip(truth, found, strict=True)])
    lower = recall.mean() - 3.3 * recall.std(ddof=1) / np.sqrt(recall.size)
    assert lower >= 0.95, f"recall@10 {recall.mean():.4f} (lower bound {lower:.4f})"
