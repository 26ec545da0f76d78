"""ONNX export of trained backbones with their parity, and the ONNX model loader's refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
import pytest
import torch
from onnx import TensorProto, helper

from ml.arcface.model import Normalization
from ml.export import OnnxModelError, check_onnx_bytes, export_backbone, export_trained, load_onnx_model
from ml.faces.models import FaceModel, load_trained_model
from tests.support.orl_gallery import orl_gallery_model, orl_split
from tests.support.threads import one_torch_thread


@pytest.mark.slow
@pytest.mark.pretrained("orl_gallery_se_resnet18", "orl_gallery_iresnet18")
@pytest.mark.parametrize("backbone", ["se_resnet18", "iresnet18"])
def test_export_reproduces_the_trained_model(orl_dir: Path, tmp_path: Path, backbone: str) -> None:
    folder = orl_gallery_model(orl_dir, backbone)
    split = orl_split(orl_dir)
    held_out = split.non_mated  # s21-s30: 100 real faces the model never saw, 10 people
    labels = torch.tensor([int(split.people[i][1:]) for i in held_out])
    with one_torch_thread():
        result = export_trained(folder, tmp_path, split.images[held_out], labels)
    assert (tmp_path / "backbone.onnx").is_file()
    assert json.loads((tmp_path / "onnx.json").read_text())["passed"] is True
    assert result["passed"] is True and result["num_images"] == 100 and result["num_pairs"] == 900
    assert result["max_abs_diff"] <= 1e-3
    assert result["accuracy_diff_points"] <= 0.1
    assert result["accuracy_torch"] >= 0.8  # a real model, so equal accuracies mean something
    assert result["input"]["input_size"] == [40, 40] and result["input"]["in_channels"] == 1

    # The exported file plugs in as a FaceModel and embeds [0, 1] crops as the PyTorch one does.
    torch_model = load_trained_model(folder, "job:orl")
    onnx_model = load_onnx_model(
        tmp_path / "backbone.onnx", "model:onnx", (40, 40), 1, Normalization.uniform(1), embedding_size=64
    )
    assert isinstance(onnx_model, FaceModel) and onnx_model.embedding_size == 64
    crops = split.images[held_out[:8]].expand(-1, 3, -1, -1)
    with torch.no_grad(), one_torch_thread():
        np.testing.assert_allclose(
            onnx_model.embed(crops, flip_tta=True), torch_model.embed(crops, flip_tta=True), atol=1e-4
        )
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "backbone.onnx")).metadata_props}
    assert json.loads(meta["facejobs.normalize"]) == {"mean": [0.5], "std": [0.5]}


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained iresnet18 (40x40 grey, 16-d) exported: the loader's checks need no trained weights."""
    from ml.backbones import create_backbone

    torch.manual_seed(0)
    net = create_backbone("iresnet18", embedding_size=16, in_channels=1, input_size=40, base_width=4).eval()
    config = {
        "backbone": "iresnet18",
        "backbone_kwargs": {"embedding_size": 16},
        "image_size": [40, 40],
        "in_channels": 1,
        "normalize": Normalization.uniform(1).to_json(),
        "warp": "none",
    }
    return export_backbone(net, config, tmp_path_factory.mktemp("onnx") / "backbone.onnx")


def test_the_dynamic_batch_axis_and_declared_input_are_checked(tiny_onnx: Path) -> None:
    model = load_onnx_model(tiny_onnx, "model:x", (40, 40), 1, Normalization.uniform(1))
    assert (model.embedding_size, model.input_size, model.in_channels) == (16, (40, 40), 1)
    out = model.embed(torch.rand(5, 3, 40, 40))
    assert out.shape == (5, 16) and torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    with pytest.raises(OnnxModelError, match=r"declared as 1x112x112"):
        load_onnx_model(tiny_onnx, "model:x", (112, 112), 1, Normalization.uniform(1))
    with pytest.raises(OnnxModelError, match=r"declared as 3x40x40"):
        load_onnx_model(tiny_onnx, "model:x", (40, 40), 3, Normalization.uniform(3))
    with pytest.raises(OnnxModelError, match="declared 32"):
        load_onnx_model(tiny_onnx, "model:x", (40, 40), 1, Normalization.uniform(1), embedding_size=32)
    with pytest.raises(OnnxModelError, match="std"):
        load_onnx_model(tiny_onnx, "model:x", (40, 40), 1, Normalization((0.5,), (0.0,)))


def _graph_model(node: onnx.NodeProto, opsets: list[onnx.OperatorSetIdProto]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 4, 4])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 16])
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets)


def test_custom_domain_operators_are_refused(tmp_path: Path) -> None:
    node = helper.make_node("Flatten", ["input"], ["embedding"], domain="com.example.evil")
    model = _graph_model(node, [helper.make_opsetid("", 17), helper.make_opsetid("com.example.evil", 1)])
    path = tmp_path / "custom.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(OnnxModelError, match=r"outside the standard ONNX domain \(com\.example\.evil\).*never loaded"):
        load_onnx_model(path, "model:x", (4, 4), 1, Normalization.uniform(1))
    # The same graph with the standard operator passes the file checks.
    plain = _graph_model(helper.make_node("Flatten", ["input"], ["embedding"]), [helper.make_opsetid("", 17)])
    check_onnx_bytes(plain.SerializeToString())


def test_external_data_is_refused(tmp_path: Path) -> None:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [16, 16], np.eye(16, dtype=np.float32).tobytes(), raw=True)
    node = helper.make_node("MatMul", ["flat", "w"], ["embedding"])
    flat = helper.make_node("Flatten", ["input"], ["flat"])
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 4, 4])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 16])
    model = helper.make_model(
        helper.make_graph([flat, node], "g", [x], [y], [weight]), opset_imports=[helper.make_opsetid("", 17)]
    )
    # The weight's bytes go to w.bin beside the model, which only points at them.
    (tmp_path / "w.bin").write_bytes(np.eye(16, dtype=np.float32).tobytes())
    tensor = model.graph.initializer[0]
    onnx.external_data_helper.set_external_data(tensor, location="w.bin")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    (tmp_path / "ext.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(OnnxModelError, match="external data file"):
        load_onnx_model(tmp_path / "ext.onnx", "model:x", (4, 4), 1, Normalization.uniform(1))


def test_corrupt_files_are_refused_with_a_clear_error(tiny_onnx: Path, tmp_path: Path) -> None:
    data = tiny_onnx.read_bytes()
    cases = {
        "truncated.onnx": data[: len(data) // 2],
        "noise.onnx": np.random.default_rng(0).bytes(4096),
        "text.onnx": b"this is not a model\n",
        "empty.onnx": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(OnnxModelError, match=rf"{name} is not (an|a valid) ONNX model"):
            load_onnx_model(tmp_path / name, "model:x", (40, 40), 1, Normalization.uniform(1))
    with pytest.raises(OnnxModelError, match="no ONNX file"):
        load_onnx_model(tmp_path / "missing.onnx", "model:x", (40, 40), 1, Normalization.uniform(1))
