"""Detection never builds an image larger than `max_detect_pixels`, and strips are refused per file.

A 1,000,000 x 16 PNG (a few KB) with `upscale_below=2048` asked MTCNN for a 128,000,000 x 2048
image (about 3 TB as float32) and failed the whole job.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml.faces.decode import list_files
from ml.faces.detect import DetectorSettings, FaceDetector, Unusable
from ml.faces.embed import EmbedSettings, embed_dataset
from tests.support.faces import tiny_model


def strip_png(width: int = 1_000_000, height: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 90).save(buf, "PNG")
    return buf.getvalue()


def test_a_strip_is_a_failure_row_and_the_faces_around_it_are_embedded(orl_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(orl_dir / "s1" / "1.pgm", data / "a_face.pgm")
    (data / "b_strip.png").write_bytes(strip_png())
    shutil.copy(orl_dir / "s2" / "1.pgm", data / "c_face.pgm")
    settings = EmbedSettings(detector=DetectorSettings(min_face_size=40, upscale_below=2048), chunk_size=3)
    result = embed_dataset(list_files(data), tiny_model(), settings)
    assert [r["key"] for r in result.index] == ["a_face.pgm", "c_face.pgm"]
    assert [(f.key, f.reason, f.detail) for f in result.failures] == [
        (
            "b_strip.png",
            "too_large",
            "1000000x16 is 62500 times longer than wide, over max_aspect_ratio 20: not a photo to look for faces in",
        )
    ]


def test_the_detection_size_is_capped_in_pixels() -> None:
    det = FaceDetector(DetectorSettings(upscale_below=2048, max_detect_pixels=4096 * 4096))
    # ORL's 92x112: upscaled to a 2048 shorter side, under the cap.
    assert det.detection_size(112, 92) == (2493, 2048, 2493, 2048)
    # 300 x 6000 (aspect 20, allowed): a 2048 shorter side would be 2048 x 40960 = 84 Mpx; capped instead.
    h, w, ph, pw = det.detection_size(300, 6000)
    assert (h, w) == (ph, pw) == (915, 18317)
    assert h * w <= 4096 * 4096 < (h + 1) * (w + 1)
    # A large photo is shrunk to the cap too (it was detected at its own 50 Mpx).
    plain = FaceDetector(DetectorSettings())
    assert plain.detection_size(6000, 8400) == (3461, 4846, 3461, 4846)


def test_a_prepared_image_waits_as_uint8_on_the_host() -> None:
    det = FaceDetector(DetectorSettings(upscale_below=200))
    rgb = np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    prep = det.prepare(rgb)
    assert not isinstance(prep, str)
    assert (prep.source.dtype, prep.source.device.type, tuple(prep.source.shape)) == (torch.uint8, "cpu", (50, 40, 3))
    assert (prep.resized, prep.padded, prep.size) == ((250, 200), (250, 200), (250, 200))
    x = prep.detect_input(torch.device("cpu"))
    assert (x.dtype, tuple(x.shape)) == (torch.float32, (250, 200, 3))
    # The same float input MTCNN got before (resized on the device from the float image).
    chw = torch.from_numpy(rgb).float().permute(2, 0, 1).unsqueeze(0)
    ref = torch.nn.functional.interpolate(chw, size=(250, 200), mode="bilinear", align_corners=False)
    assert torch.equal(x, ref[0].permute(1, 2, 0).clamp(0, 255))

    strip = det.prepare(np.zeros((16, 1000, 3), np.uint8))
    assert isinstance(strip, Unusable) and strip.reason == "too_large"
    tiny = FaceDetector(DetectorSettings()).prepare(np.zeros((16, 16, 3), np.uint8))
    assert isinstance(tiny, Unusable) and tiny.reason == "too_small"
    assert (
        str(tiny)
        == "16x16 is detected at 16x16, under min_face_size 20 (set upscale_below to look for faces in small images)"
    )
