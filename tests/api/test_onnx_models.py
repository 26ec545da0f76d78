"""`POST /models` kind onnx: the declared input checked at upload (without torch in the API), refusals
that store nothing, and an uploaded ONNX model embedding a dataset through a worker."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from jobs.models import Model
from ml.arcface.model import Normalization
from ml.export import export_backbone
from ml.faces.models import read_threshold
from tests.support.faces import post_verify, register_model
from tests.support.jobs import download, submit
from tests.support.orl_gallery import embed_orl_part, orl_gallery_model
from tests.support.services import Stack


def tiny_onnx(side: int = 40, channels: int = 1) -> bytes:
    """An untrained iresnet18 (side x side, `channels`, 16-d) exported with a dynamic batch axis."""
    from ml.backbones import create_backbone

    torch.manual_seed(0)
    net = create_backbone("iresnet18", embedding_size=16, in_channels=channels, input_size=side, base_width=4)
    config = {
        "backbone": "iresnet18",
        "backbone_kwargs": {"embedding_size": 16},
        "image_size": [side, side],
        "in_channels": channels,
        "normalize": Normalization.uniform(channels).to_json(),
        "warp": "none",
    }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return export_backbone(net.eval(), config, Path(tmp) / "m.onnx").read_bytes()


def custom_domain_onnx() -> bytes:
    """(N, 1, 40, 40) -> a custom-domain op -> (N, 16): a graph that would need a custom-op library."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 40, 40])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 16])
    node = helper.make_node("Embed", ["input"], ["embedding"], domain="com.example.ops")
    graph = helper.make_graph([node], "custom", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.ops", 1)]
    )
    return bytes(model.SerializeToString())


def post_onnx(stack: Stack, data: bytes, **fields: str) -> Any:
    files = {"file": ("model.onnx", data, "application/octet-stream")}
    return stack.client.post("/models", files=files, data={"kind": "onnx", **fields})


def stored_models(stack: Stack) -> tuple[int, list[str]]:
    with stack.session() as s:
        return s.query(Model).count(), stack.store.list("models")


@pytest.mark.services
def test_an_onnx_upload_is_checked_against_its_declaration(stack: Stack) -> None:
    data = tiny_onnx()
    ok = post_onnx(stack, data, input_size="40,40", channels="1", normalize="arcface", threshold="0.3")
    assert ok.status_code == 201, ok.text
    meta = ok.json()["meta"]
    assert meta == {
        "input_size": [40, 40], "in_channels": 1, "normalize": {"mean": [0.5], "std": [0.5]},
        "embedding_size": 16, "threshold": 0.3,
    }  # fmt: skip
    explicit = post_onnx(stack, data, input_size="40x40", channels="1", mean="0.5", std="0.25")
    assert explicit.status_code == 201 and explicit.json()["meta"]["normalize"] == {"mean": [0.5], "std": [0.25]}
    before = stored_models(stack)

    def refused(resp: Any) -> tuple[int, str]:
        assert stored_models(stack) == before, resp.text  # nothing stored
        return resp.status_code, resp.json()["error"]["code"]

    wrong_size = post_onnx(stack, data, input_size="112,112", channels="1", normalize="arcface")
    assert refused(wrong_size) == (400, "input_size_mismatch") and "declared 1x112x112" in wrong_size.text
    assert refused(post_onnx(stack, data, input_size="40,40", channels="3", normalize="arcface")) == (
        400, "input_size_mismatch",
    )  # fmt: skip
    custom = post_onnx(stack, custom_domain_onnx(), input_size="40,40", channels="1", normalize="unit")
    assert refused(custom) == (400, "custom_operators") and "com.example.ops" in custom.text
    assert refused(post_onnx(stack, b"not a protobuf at all" * 10, input_size="40,40", normalize="unit"))[0] == 400
    assert refused(post_onnx(stack, data, channels="1", normalize="arcface")) == (422, "invalid_declaration")
    assert refused(post_onnx(stack, data, input_size="40,40", channels="1", normalize="vgg")) == (
        422, "invalid_declaration",
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.services
def test_an_uploaded_onnx_model_embeds_as_the_pytorch_one(stack: Stack, orl_dir: Path) -> None:
    folder = orl_gallery_model(orl_dir, "se_resnet18")
    from ml.arcface.model import load_trained

    backbone, _, config = load_trained(folder)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = export_backbone(backbone, config, Path(tmp) / "orl.onnx").read_bytes()
    threshold = read_threshold(folder)
    up = post_onnx(stack, data, input_size="40,40", channels="1", normalize="arcface", threshold=str(threshold))
    assert up.status_code == 201, up.text
    onnx_ref = f"model:{up.json()['id']}"
    torch_ref = f"job:{register_model(stack, folder)}"
    mated, by_onnx = embed_orl_part(stack, orl_dir, "mated", onnx_ref)
    _, by_torch = embed_orl_part(stack, orl_dir, "mated", torch_ref)
    evaluations = [
        submit(stack, {"model": ref, "dataset": mated, "use_split": "all", "flip_tta": False}, kind="evaluate")
        for ref in (onnx_ref, torch_ref)
    ]
    stack.start_worker()
    embeddings = []
    for job_id, ref in ((by_onnx, onnx_ref), (by_torch, torch_ref)):
        job = stack.wait_job(job_id, timeout=240)
        assert job["status"] == "succeeded", job["error"]
        assert (job["result"]["faces"], job["result"]["model"]) == (100, ref)
        embeddings.append(np.load(io.BytesIO(download(stack, f"/jobs/{job_id}/artifacts/embeddings.npy"))))
    np.testing.assert_allclose(embeddings[0], embeddings[1], atol=1e-4)
    # evaluate and verify take it too: the same figures as the PyTorch model's.
    by_onnx_eval, by_torch_eval = (stack.wait_job(job_id, timeout=180) for job_id in evaluations)
    assert by_onnx_eval["status"] == "succeeded", by_onnx_eval["error"]
    assert by_onnx_eval["result"]["auc"] == pytest.approx(by_torch_eval["result"]["auc"], abs=1e-6)
    a, b = (orl_dir / "s1" / "6.pgm").read_bytes(), (orl_dir / "s2" / "6.pgm").read_bytes()
    verdicts = [
        post_verify(stack.client, a, b, timeout=120, model=ref, detector="none") for ref in (onnx_ref, torch_ref)
    ]
    assert [v.status_code for v in verdicts] == [200, 200], verdicts[0].text
    assert verdicts[0].json()["distance"] == pytest.approx(verdicts[1].json()["distance"], abs=1e-4)
    assert verdicts[0].json()["threshold"] == pytest.approx(1 - threshold, abs=1e-9)
    # The index of an ONNX model's embeddings takes the threshold declared at upload.
    index_id = submit(stack, {"embed_jobs": [f"job:{by_onnx}"]}, kind="index")
    index = stack.wait_job(index_id, timeout=120)
    assert index["status"] == "succeeded", index["error"]
    assert (index["result"]["threshold"], index["result"]["threshold_source"]) == (threshold, "declared at upload")
