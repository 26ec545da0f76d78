"""Bulk-embedding parts: alignment geometry, FaceNet weight loading, and the job params."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from jobs.params.embed import EmbedParams, VerifyParams, parse_image_ref
from ml.arcface.model import Normalization
from ml.backbones import create_backbone
from ml.faces.align import align_faces, template, transform_points, umeyama
from ml.faces.decode import list_files, write_builtin_images
from ml.faces.detect import DetectorSettings
from ml.faces.embed import EmbedSettings, embed_dataset, embed_image
from ml.faces.models import FaceModel, ModelLoadError, WeightsUnavailableError, load_facenet


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _rotation(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


# -- alignment ----------------------------------------------------------------------------------


def test_umeyama_recovers_an_exact_similarity_and_never_reflects() -> None:
    tpl = template(112)
    rot = _rotation(0.4)
    src = ((tpl - 56) @ rot.T) * 2.5 + torch.tensor([300.0, 140.0])  # template -> source: s=2.5, 0.4 rad
    scale, r, t = umeyama(src.unsqueeze(0), tpl)
    assert float(scale[0]) == pytest.approx(1 / 2.5, abs=1e-12)
    assert torch.allclose(r[0], rot.T, atol=1e-12)
    assert torch.allclose(transform_points(src.unsqueeze(0), scale, r, t)[0], tpl, atol=1e-9)
    mirrored = src * torch.tensor([-1.0, 1.0])
    _, r_m, _ = umeyama(mirrored.unsqueeze(0), tpl)
    assert float(torch.linalg.det(r_m[0])) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("size", "face_scale", "theta"),
    [(112, 1.3, 0.35), (160, 0.8, -0.2), (112, 3.1, 0.6)],  # plain, upscaled, shrunk 3x (pooled first)
)
def test_aligned_landmarks_land_on_the_template(size: int, face_scale: float, theta: float) -> None:
    """Blobs drawn at landmarks of a known similarity end up on the template points (< 0.5 px)."""
    tpl = template(size)
    rot = _rotation(theta)
    src_scale = face_scale * 112 / size  # source pixels per crop pixel
    lm = ((tpl - size / 2) @ rot.T) * src_scale + torch.tensor([190.5, 171.25])
    h, w = 360, 400
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    sigma = 2.0 * src_scale  # 2 px in the crop
    img = sum(torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in lm.tolist())
    crop = align_faces(img.float()[None].expand(3, h, w), lm[None].float(), size)[0, 0].double()
    assert crop.shape == (size, size)
    cy, cx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    for x, y in tpl.tolist():
        win = ((cx - x) ** 2 + (cy - y) ** 2) <= 7.0**2
        wgt = crop * win
        found = (float((wgt * cx).sum() / wgt.sum()), float((wgt * cy).sum() / wgt.sum()))
        assert math.hypot(found[0] - x, found[1] - y) < 0.5, (found, (x, y))


# -- models and params -------------------------------------------------------------------------


def test_facenet_weights_load_from_a_local_file_or_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    net = InceptionResnetV1(pretrained=None, classify=True, num_classes=7).eval()
    (tmp_path / "up").mkdir()
    torch.save(net.state_dict(), tmp_path / "up" / "20180402-114759-vggface2.pt")  # with logits.*, as published
    model = load_facenet("vggface2", tmp_path / "up")
    assert (model.model_id, model.input_size, model.align_size, model.embedding_size) == (
        "facenet:vggface2",
        (160, 160),
        160,
        512,
    )
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    net.classify = False
    with torch.no_grad():
        assert torch.allclose(model.embed(x), net((x - 127.5 / 255) / (128 / 255)), atol=1e-5)
    (tmp_path / "bad.pt").write_bytes(b"not a state dict")
    with pytest.raises(ModelLoadError, match="not a readable torch state_dict"):
        load_facenet("vggface2", tmp_path / "bad.pt")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="not an InceptionResnetV1 state_dict"):
        load_facenet("vggface2", tmp_path / "other.pt")
    # The real download path, pointed at a proxy that refuses at once, as on an offline worker.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(WeightsUnavailableError, match=r"upload 20180408-102900-casia-webface\.pt"):
        load_facenet("casia-webface")


def test_params_validate_model_refs_and_images() -> None:
    p = EmbedParams(dataset="dataset:abc")
    assert (p.model, p.faces, p.chunk_size, p.thresholds) == (
        "facenet:vggface2",
        "largest",
        500,
        [0.6, 0.7, 0.7],
    )
    with pytest.raises(ValueError, match="weights apply to facenet models only"):
        EmbedParams(dataset="dataset:abc", model="job:j1", weights="model:m1")
    with pytest.raises(ValueError, match="threshold"):
        EmbedParams(dataset="dataset:abc", thresholds=[0.6, 0.7, 1.5])
    png = _encode(Image.new("RGB", (20, 20)), "PNG")

    b64 = base64.b64encode(png).decode()
    v = VerifyParams(image_a=b64, image_b="data:image/png;base64," + b64, model="job:j1")
    assert parse_image_ref(v.image_a) == png == parse_image_ref(v.image_b)
    assert parse_image_ref("dataset:d1/s1/1.pgm") == ("dataset:d1", "s1/1.pgm")
    for bad in ("dataset:d1/../etc/passwd", "dataset:d1//x", "not base64 !", ""):
        with pytest.raises(ValueError):
            VerifyParams(image_a=bad, image_b=b64)
    assert parse_image_ref("input:image_b") == ("input", "image_b")
    with pytest.raises(ValueError):
        VerifyParams(image_a="input:other", image_b=b64, model="job:j1")


def test_a_builtin_dataset_is_embedded_whole_without_detection(tmp_path: Path) -> None:
    """The demo's embed params: builtin:digits, detector none -> every digit one row, embedded whole."""
    p = EmbedParams.model_validate({"dataset": "builtin:digits", "model": "job:j1", "detector": "none"})
    assert (p.dataset, p.detector) == ("builtin:digits", "none")
    with pytest.raises(ValueError, match='use detector "none"'):
        EmbedParams(dataset="builtin:digits", model="job:j1")

    files = list_files(write_builtin_images("builtin:digits", tmp_path))
    assert len(files) == 1797 and files[0][0] == "0/0000.png"
    assert {k.split("/")[0] for k, _ in files} == {str(d) for d in range(10)}
    torch.manual_seed(0)
    net = create_backbone("se_resnet18", embedding_size=16, in_channels=1, input_size=24, base_width=4).eval()
    model = FaceModel(net, "tiny", (24, 24), 1, Normalization.uniform(1), 112, "none", 16)
    some = files[::60]
    settings = EmbedSettings(detector=DetectorSettings(method="none"), flip_tta=False, chunk_size=10)
    result = embed_dataset(some, model, settings)
    assert result.failures == [] and [r["key"] for r in result.index] == [k for k, _ in some]
    row = result.index[0]
    assert (row["x1"], row["y1"], row["x2"], row["y2"], row["prob"]) == (0.0, 0.0, 31.0, 31.0, 1.0)
    assert math.isnan(row["lm0_x"]) and result.config["settings"]["detector"]["method"] == "none"
    # Each embedding is the model on the whole 32x32 digit resized to its 24x24 input.
    x = torch.from_numpy(np.array(Image.open(some[3][1]).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    expected = model.embed(F.interpolate(x, size=(24, 24), mode="bilinear", antialias=True))
    np.testing.assert_allclose(result.embeddings[3], expected[0].numpy(), atol=1e-5)
    # Verification takes the same path: one image in, its bulk embedding out.
    emb, _ = embed_image(some[3][1].read_bytes(), model, settings)  # type: ignore[misc]
    np.testing.assert_allclose(emb, result.embeddings[3], atol=1e-5)
