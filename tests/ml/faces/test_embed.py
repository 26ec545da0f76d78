"""Bulk embedding end to end: failure rows, outputs, resume, and identity separation on ORL faces."""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.core.callbacks import LocalCallbacks
from ml.core.errors import Stopped
from ml.faces.decode import DecodeLimits, list_files
from ml.faces.detect import FaceDetector
from ml.faces.embed import INDEX_COLUMNS, EmbedResult, EmbedSettings, embed_dataset, embed_image
from ml.faces.models import load_trained_model
from ml.metrics.verification import auc, roc_curve
from tests.support.faces import ORL_DETECTOR, detect_orl, orl_model_folder, tiny_model


def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height pixels, with almost no data behind it."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


# -- failures, outputs ---------------------------------------------------------------------------


def _build_mixed_folder(orl_dir: Path, root: Path) -> dict[str, str]:
    """Four ORL faces in nested folders plus one file of each failure kind; key -> expected reason."""
    faces = {"people/s1/1.pgm": "s1/1.pgm", "people/s2/3.pgm": "s2/3.pgm", "deep/a/b/s3_5.png": "s3/5.pgm"}
    for key, src in faces.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        if key.endswith(".png"):
            Image.open(orl_dir / src).save(root / key)
        else:
            shutil.copy(orl_dir / src, root / key)
    jpeg = _encode(Image.open(orl_dir / "s4" / "2.pgm").convert("RGB"), "JPEG")
    bad = root / "bad"
    bad.mkdir()
    (root / "people" / "s4_2.jpg").write_bytes(jpeg)
    files = {
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 2], "undecodable"),
        "bad/corrupt.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "undecodable"),
        "bad/notes.txt": (b"these are not the faces you are looking for\n", "not_image"),
        "bad/empty.jpg": (b"", "not_image"),
        "bad/bomb.png": (_png_bomb(100_000, 100_000), "too_large"),
        "bad/huge_blank.png": (
            _encode(Image.new("L", (1500, 1500)), "PNG"),
            "too_large",
        ),  # real, over 1e6 px
        "bad/big_file.bin": (np.random.default_rng(0).bytes(300_000), "too_large"),  # over 200 kB
        "bad/one_pixel.png": (_encode(Image.new("RGB", (1, 1), (200, 150, 120)), "PNG"), "too_small"),
        "bad/grey_wall.png": (_encode(Image.new("L", (96, 96), 128), "PNG"), "no_face"),
    }
    for key, (data, _) in files.items():
        (root / key).write_bytes(data)
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.png").write_bytes(jpeg)  # hidden: not listed at all
    return {**dict.fromkeys([*faces, "people/s4_2.jpg"], "face"), **{k: r for k, (_, r) in files.items()}}


def test_bad_files_become_failure_rows_and_the_rest_is_embedded(orl_dir: Path, tmp_path: Path) -> None:
    expected = _build_mixed_folder(orl_dir, tmp_path / "data")
    files = list_files(tmp_path / "data")
    assert sorted(k for k, _ in files) == sorted(expected)
    settings = EmbedSettings(
        detector=ORL_DETECTOR,
        warp="roi_tanh",
        flip_tta=True,
        chunk_size=5,
        num_workers=2,
        limits=DecodeLimits(max_pixels=1_000_000, max_file_bytes=200_000, min_size=16),
    )
    result = embed_dataset(files, tiny_model(), settings)
    got = {f.key: f.reason for f in result.failures} | {r["key"]: "face" for r in result.index}
    assert got == expected
    assert len(result.index) == 4 and len(result.failures) == 9
    assert [r["row"] for r in result.index] == [0, 1, 2, 3]
    assert result.embeddings.shape == (4, 16) and result.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-6)
    row = result.index[0]
    assert (row["model"], row["align_size"], row["warp"], row["flip_tta"], row["face"]) == (
        "tiny",
        112,
        "roi_tanh",
        True,
        0,
    )
    assert (row["image_width"], row["image_height"]) == (92, 112)
    assert isinstance(row["lm0_x"], float) and row["lm0_x"] != round(row["lm0_x"])  # landmarks stay floats

    paths = result.write(tmp_path / "out")
    assert np.array_equal(np.load(paths["embeddings.npy"]), result.embeddings)
    with paths["index.csv"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(INDEX_COLUMNS) and [r["key"] for r in rows] == [r["key"] for r in result.index]
    with paths["failures.csv"].open() as fh:
        fails = {r["key"]: r["reason"] for r in csv.DictReader(fh)}
    assert fails == {k: v for k, v in expected.items() if v != "face"}
    config = json.loads(paths["config.json"].read_text())
    assert config["failure_reasons"] == {
        "undecodable": 2,
        "not_image": 2,
        "too_large": 3,
        "too_small": 1,
        "no_face": 1,
    }
    assert config["faces"] == 4 and config["files"] == 13 and config["settings"]["warp"] == "roi_tanh"


# -- resume ------------------------------------------------------------------------------------


def test_a_killed_run_resumes_to_the_outputs_of_an_uninterrupted_one(orl_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    for person in ("s1", "s2", "s3", "s4"):
        shutil.copytree(orl_dir / person, root / person)
    (root / "s2" / "README.txt").write_text("not an image")
    (root / "s3" / "broken.pgm").write_bytes(b"P5\n92 112\n255\n" + b"\0" * 100)
    files = list_files(root)
    assert len(files) == 42
    settings = EmbedSettings(detector=ORL_DETECTOR, flip_tta=False, chunk_size=7, embed_batch_size=4, num_workers=2)

    full_model = tiny_model()
    full = embed_dataset(files, full_model, settings, LocalCallbacks())

    killed_model, killed_cb = tiny_model(), LocalCallbacks(tmp_path / "ckpt", stop_after_checkpoints=2)
    with pytest.raises(Stopped, match="after chunk 2 of 6") as info:
        embed_dataset(files, killed_model, settings, killed_cb)
    assert info.value.step == 2
    resumed_model, resumed_cb = tiny_model(), killed_cb.resume()
    resumed = embed_dataset(files, resumed_model, settings, resumed_cb)

    assert "resumed after chunk 2 of 6" in resumed_cb.messages
    assert [s[0] for s in resumed_cb.steps] == [21, 28, 35, 42]  # only chunks 3..6 were processed
    assert np.array_equal(resumed.embeddings, full.embeddings)
    assert resumed.index == full.index and resumed.failures == full.failures
    assert {f.key: f.reason for f in full.failures} == {
        "s2/README.txt": "not_image",
        "s3/broken.pgm": "undecodable",
    }
    assert len(full.index) == 40 and full.embeddings.shape == (40, 16)
    # No face embedded twice: the killed and resumed attempts together embedded exactly 40 faces.
    assert full_model.module.samples == 40
    assert killed_model.module.samples + resumed_model.module.samples == 40


def test_a_checkpoint_of_other_settings_is_refused(orl_dir: Path, tmp_path: Path) -> None:
    files = list_files(orl_dir)[:6]
    cb = LocalCallbacks(stop_after_checkpoints=1)
    settings = EmbedSettings(detector=ORL_DETECTOR, chunk_size=3, flip_tta=False)
    with pytest.raises(Stopped):
        embed_dataset(files, tiny_model(), settings, cb)
    other = EmbedSettings(detector=ORL_DETECTOR, chunk_size=3, flip_tta=True)
    with pytest.raises(ValueError, match="other settings, model or files"):
        embed_dataset(files, tiny_model(), other, cb.resume())


# -- ORL: every image one face, trained model separates identities ------------------------------


@pytest.fixture(scope="module")
def orl_detected(orl_dir: Path) -> tuple[list[tuple[str, Path]], EmbedResult]:
    return detect_orl(orl_dir)


@pytest.mark.slow
def test_every_orl_image_gives_exactly_one_face(
    orl_detected: tuple[list[tuple[str, Path]], EmbedResult],
) -> None:
    files, result = orl_detected
    keys = [r["key"] for r in result.index]
    assert len(files) == 300 and result.failures == []
    assert len(keys) == 300 and len(set(keys)) == 300 and {r["face"] for r in result.index} == {0}
    assert min(r["prob"] for r in result.index) > 0.95


@pytest.fixture(scope="module")
def orl_model(orl_dir: Path) -> tuple[Path, tuple[str, ...]]:
    """The ORL model of `orl_detected`'s landmarks (`tests.support.faces.orl_model_folder`, the one the
    API and platform tests use) and the people it was trained on."""
    return orl_model_folder(orl_dir)


@pytest.mark.slow
def test_a_model_trained_on_orl_faces_separates_identities(
    orl_dir: Path, orl_model: tuple[Path, tuple[str, ...]], artifacts_dir: Path
) -> None:
    folder, class_names = orl_model
    model = load_trained_model(folder, "job:orl")
    # metrics.json is the training's metrics as the job stores them
    assert model.threshold == pytest.approx(json.loads((folder / "metrics.json").read_text())["threshold"])
    files = list_files(orl_dir)
    settings = EmbedSettings(detector=ORL_DETECTOR, flip_tta=True, embed_batch_size=128)
    result = embed_dataset(files, model, settings)
    assert len(result.index) == 300 and result.failures == [] and result.embeddings.shape == (300, 64)
    people = np.array([r["key"].split("/")[0] for r in result.index])
    unseen = ~np.isin(people, class_names)
    assert int(unseen.sum()) == 100  # 10 people held out of training

    def pairs_auc(mask: np.ndarray) -> float:
        e, p = result.embeddings[mask], people[mask]
        a, b = np.triu_indices(len(p), 1)
        scores = np.einsum("ij,ij->i", e[a], e[b])
        fpr, tpr, _ = roc_curve(scores, p[a] == p[b])
        return auc(fpr, tpr)

    all_auc, unseen_auc = pairs_auc(np.ones(300, bool)), pairs_auc(unseen)
    (artifacts_dir / "orl_embed_metrics.json").write_text(
        json.dumps({"auc_all_pairs": all_auc, "auc_unseen_people": unseen_auc, "threshold": model.threshold})
    )
    assert all_auc >= 0.95
    assert unseen_auc >= 0.95

    # One image through embed_image (verification's path) gives its bulk embedding back.
    data = (orl_dir / "s7" / "4.pgm").read_bytes()
    emb, row = embed_image(data, model, settings, key="s7/4.pgm")  # type: ignore[misc]
    k = [r["key"] for r in result.index].index("s7/4.pgm")
    np.testing.assert_allclose(emb, result.embeddings[k], atol=1e-5)
    assert row["x1"] == pytest.approx(result.index[k]["x1"], abs=1e-3)


@pytest.mark.gpu  # need_gpu() runs first (tests/conftest.py): skips, or fails under FACEJOBS_REQUIRE_GPU=1
def test_cuda_gives_the_cpu_results(orl_dir: Path) -> None:
    files = list_files(orl_dir)[:20]
    settings = EmbedSettings(detector=ORL_DETECTOR, flip_tta=True, chunk_size=8)
    cpu = embed_dataset(files, tiny_model(), settings, device="cpu")
    gpu = embed_dataset(files, tiny_model(), settings, device="cuda", detector=FaceDetector(ORL_DETECTOR, "cuda"))
    assert [r["key"] for r in gpu.index] == [r["key"] for r in cpu.index] and len(cpu.index) == 20
    np.testing.assert_allclose(gpu.embeddings, cpu.embeddings, atol=2e-3)
    for a, b in zip(gpu.index, cpu.index, strict=True):
        assert a["lm0_x"] == pytest.approx(b["lm0_x"], abs=0.05)
