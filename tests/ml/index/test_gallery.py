"""Embed outputs as gallery rows (keys, sources, identities) and the selectors that remove rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ml.faces.embed import INDEX_COLUMNS
from ml.index import IndexInputError, build_index
from ml.index.gallery import concat, counts, keys_to_remove, read_embedded, source_of


def write_embed_output(folder: Path, keys: list[str], model: str = "job:m", dim: int = 4) -> np.ndarray:
    """embeddings.npy, index.csv and config.json as an embed job leaves them (one face an image)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(keys))
    emb = rng.normal(size=(len(keys), dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    np.save(folder / "embeddings.npy", emb)
    with (folder / "index.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=INDEX_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows({"row": i, "key": k, "face": 0, "model": model} for i, k in enumerate(keys))
    (folder / "config.json").write_text(json.dumps({"model": model, "dataset": "dataset:d1"}))
    return emb


def test_an_embed_output_becomes_rows_with_sources_and_identities(tmp_path: Path) -> None:
    emb = write_embed_output(tmp_path / "a", ["s1/1.pgm", "s1/2.pgm", "s2/1.pgm", "top.png"])
    faces = read_embedded(tmp_path / "a")
    assert faces.keys == (
        "dataset:d1/s1/1.pgm#0",
        "dataset:d1/s1/2.pgm#0",
        "dataset:d1/s2/1.pgm#0",
        "dataset:d1/top.png#0",
    )
    assert faces.identities == ("s1", "s1", "s2", "")
    np.testing.assert_array_equal(faces.embeddings, emb)
    assert source_of(faces.keys[0]) == "dataset:d1/s1/1.pgm"
    assert counts(faces.identities) == {"rows": 4, "identities": 2, "unlabelled_rows": 1}

    index = build_index(faces.embeddings, faces.keys, faces.identities)
    assert keys_to_remove(index.keys, index.identities, ["s1"]) == list(faces.keys[:2])
    assert keys_to_remove(index.keys, index.identities, ["s2/1.pgm", "dataset:d1/top.png"]) == list(faces.keys[2:])
    with pytest.raises(IndexInputError, match="neither a source image nor an identity"):
        keys_to_remove(index.keys, index.identities, ["s9"])
    # Another model's embeddings never join an index.
    write_embed_output(tmp_path / "b", ["s3/1.pgm"], model="job:other")
    with pytest.raises(IndexInputError, match="one model"):
        concat([faces, read_embedded(tmp_path / "b")])


def test_a_folder_that_is_no_embed_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(IndexInputError, match="not the output of an embed job"):
        read_embedded(tmp_path)
    write_embed_output(tmp_path / "c", ["s1/1.pgm", "s1/2.pgm"])
    np.save(tmp_path / "c" / "embeddings.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(IndexInputError, match="2 index rows but embeddings of shape"):
        read_embedded(tmp_path / "c")
