"""Verification protocols: pairs.txt parsing, the restricted .bin unpickler, fold-wise metrics."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ml.data.protocols import (
    ProtocolError,
    bin_folds,
    dump_bin,
    load_bin,
    parse_pairs,
    protocol_metrics,
    resolve_pairs,
)
from ml.metrics.verification import best_threshold


def test_lfw_pairs_file_gives_each_pair_its_fold_and_kind() -> None:
    text = "2\t1\nA\t1\t2\nA\t1\tB\t3\nB\t2\t4\nB\t1\tC\t1\n"
    pairs = parse_pairs(text)
    assert [(p.name_a, p.index_a, p.name_b, p.index_b, p.same, p.fold) for p in pairs] == [
        ("A", 1, "A", 2, True, 0), ("A", 1, "B", 3, False, 0), ("B", 2, "B", 4, True, 1), ("B", 1, "C", 1, False, 1),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("ten 3\n", "first line"),
        ("1\t2\nA\t1\t2\n", "found 1 pair lines"),
        ("1\t1\nA\t1\tB\t2\nA\t1\t2\n", "line 2: expected a same"),
        ("1\t1\nA\tx\t2\nA\t1\tB\t2\n", "integers"),
    ],
)
def test_malformed_pairs_files_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_pairs(text)


def test_pairs_resolve_lfw_and_orl_file_names(tmp_path: Path) -> None:
    for rel in ("Ann_Lee/Ann_Lee_0001.jpg", "Ann_Lee/Ann_Lee_0002.jpg", "s7/1.pgm", "s7/10.pgm"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    pairs = parse_pairs("1\t1\nAnn_Lee\t1\t2\nAnn_Lee\t2\ts7\t10\n")
    files, a, b = resolve_pairs(pairs, tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "Ann_Lee/Ann_Lee_0001.jpg", "Ann_Lee/Ann_Lee_0002.jpg", "s7/10.pgm",
    ]  # fmt: skip
    assert (a.tolist(), b.tolist()) == ([0, 1], [1, 2])
    with pytest.raises(ProtocolError, match="image 3 of 's7'"):
        resolve_pairs(parse_pairs("1\t1\ns7\t1\t3\ns7\t1\tAnn_Lee\t1\n"), tmp_path)


def test_bin_with_flag_list_or_numpy_bool_array_loads() -> None:
    images = [b"a", b"b", b"c", b"d"]
    assert load_bin(dump_bin(images, [True, False])) == (images, pytest.approx(np.array([True, False])))
    for protocol in (2, 3, 4):
        data = pickle.dumps((images, np.array([True, False])), protocol=protocol)
        bins, same = load_bin(data)
        assert bins == images and same.dtype == bool and same.tolist() == [True, False]
    bins, same = load_bin(pickle.dumps((images, np.array([1, 0], dtype=np.int64)), protocol=4))
    assert same.tolist() == [True, False]


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {MARKER}",)


class Plain:
    pass


MARKER = Path("/nonexistent")


@pytest.mark.parametrize("kind", ["os.system", "instance", "eval", "float array", "object array", "array of calls"])
def test_bin_with_any_other_object_is_refused_and_nothing_runs(kind: str, tmp_path: Path) -> None:
    global MARKER
    MARKER = tmp_path / "ran"
    obj = {
        "os.system": ([b"a", b"b"], [Payload()]),
        "instance": ([b"a", b"b"], [Plain()]),
        "eval": ([b"a", b"b"], Payload()),
        "float array": ([b"a", b"b"], np.array([0.5])),
        "object array": ([b"a", b"b"], np.array([True, "x"], dtype=object)),
        "array of calls": ([b"a", b"b"], np.array([Payload()], dtype=object)),
    }[kind]
    data = pickle.dumps(obj, protocol=4)
    message = "bool or int" if kind in ("float array", "object array") else "refused"
    with pytest.raises(ProtocolError, match=message):
        load_bin(data)
    assert not MARKER.exists()


def test_bin_structure_is_checked() -> None:
    with pytest.raises(ProtocolError, match="2 per pair"):
        load_bin(dump_bin([b"a", b"b", b"c"], [True, False]))
    with pytest.raises(ProtocolError, match="images, issame"):
        load_bin(pickle.dumps([1, 2, 3]))
    with pytest.raises(ProtocolError, match="not a readable"):
        load_bin(dump_bin([b"a", b"b"], [True])[:-3])


def test_fold_thresholds_come_from_the_other_folds_only() -> None:
    rng = np.random.default_rng(0)
    same = np.tile(np.r_[np.ones(5, bool), np.zeros(5, bool)], 4)
    scores = np.where(same, 0.6, 0.2) + rng.normal(0, 0.2, same.size)
    fold = np.repeat(np.arange(4), 10)
    m = protocol_metrics(scores, same, fold)
    expected = []
    for k in range(4):
        thr, _ = best_threshold(scores[fold != k], same[fold != k])
        expected.append(float(np.mean((scores[fold == k] >= thr) == same[fold == k])))
    assert m["fold_accuracies"] == expected
    assert (m["accuracy"], m["accuracy_std"], m["folds"]) == (np.mean(expected), np.std(expected), 4)
    assert bin_folds(23).tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [k for k in range(3, 10) for _ in (0, 1)]


def test_codecs_encode_is_admitted_for_latin1_text_only() -> None:
    # Python 3's protocol 2 writes bytes as _codecs.encode("...", "latin1"); any other codec is refused.
    evil = b"\x80\x02(]" + b"c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R" + b"]\x88ae\x86."
    with pytest.raises(ProtocolError, match="'zlib': refused"):
        load_bin(evil)
