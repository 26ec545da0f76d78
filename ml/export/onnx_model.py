"""An ONNX embedding model as a `FaceModel`: onnxruntime on the CPU, the file checked as data first.

ONNX files are data, never code. `check_onnx_bytes` refuses, before onnxruntime sees them:
- anything protobuf cannot parse as an ONNX model, or that `onnx.checker` rejects;
- operators or opset imports of any domain but the standard one ("" / "ai.onnx"): a custom domain
  needs a custom-op library, and this module never registers one;
- tensors stored outside the file (external data): the session is built from the bytes, so no
  path next to the model is ever opened;
- a graph that is not one float (batch, C, H, W) input to one (batch, d) output.

`load_onnx_model` then runs a probe batch at the declared input size and normalisation: the model
must accept it, give finite (2, d) embeddings that differ between two different images, and give
each image the same embedding alone as in the batch (the batch axis is really dynamic).
`OnnxBackbone` is an `nn.Module` whose forward runs the session, so `FaceModel.embed`,
`ml.metrics.verification.embed_images` and `evaluate_embeddings` take it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from torch import nn

from ml.arcface.model import MAX_IMAGE_SIDE, Normalization
from ml.faces.models import FaceModel

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
MAX_ONNX_BYTES = 2 * 1024**3 - 1  # protobuf's own limit for one message


class OnnxModelError(ValueError):
    """An ONNX file that is corrupt, needs code or files beside it, or does not fit its declaration."""


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph of its control-flow nodes (If, Loop, Scan), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def check_onnx_bytes(data: bytes, name: str = "model.onnx") -> onnx.ModelProto:
    """The parsed model, or `OnnxModelError` saying why the file is refused (see the module docstring)."""
    if len(data) > MAX_ONNX_BYTES:
        raise OnnxModelError(f"{name} is {len(data)} bytes; an ONNX model file holds at most {MAX_ONNX_BYTES}")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxModelError(f"{name} is not an ONNX model (the file is corrupt or of another kind): {exc}") from None
    if not model.graph.node:
        raise OnnxModelError(f"{name} is not an ONNX model: it has no graph nodes")
    custom = sorted({o.domain for o in model.opset_import if o.domain not in STANDARD_DOMAINS})
    custom += sorted({n.domain for g in _graphs(model.graph) for n in g.node if n.domain not in STANDARD_DOMAINS})
    if custom or model.functions:
        what = ", ".join(dict.fromkeys(custom)) or "local functions"
        raise OnnxModelError(
            f"{name} uses operators outside the standard ONNX domain ({what}); custom operators need code "
            "(a custom-op library), which is never loaded: export the model with standard operators only"
        )
    for g in _graphs(model.graph):
        for t in _tensors(g):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                raise OnnxModelError(
                    f"{name} keeps tensor {t.name[:100]!r} in an external data file; save the model as one "
                    "self-contained file (onnx.save(model, path, save_as_external_data=False))"
                )
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise OnnxModelError(f"{name} is not a valid ONNX model: {str(exc)[:300]}") from None
    weights = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise OnnxModelError(
            f"{name} has {len(inputs)} inputs and {len(model.graph.output)} outputs; an embedding model takes "
            "one image batch and gives one embedding batch"
        )
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(_dims(inputs[0])) != 4:
        raise OnnxModelError(
            f"{name}: the input must be float32 (batch, channels, height, width), got {_dims(inputs[0])}"
        )
    if len(_dims(model.graph.output[0])) != 2:
        raise OnnxModelError(f"{name}: the output must be (batch, embedding size), got {_dims(model.graph.output[0])}")
    return model


class OnnxBackbone(nn.Module):
    """An onnxruntime session (CPU provider) as a backbone: normalised (N, C, H, W) -> (N, d) float32.

    The input is copied to the CPU and the result comes back on the input's device. Built from the
    model's bytes, so the session can open no other file; no custom-op library is ever registered.
    """

    def __init__(self, data: bytes, threads: int = 1) -> None:
        super().__init__()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(x.detach().float().cpu().numpy())}
        (out,) = self.session.run([self.output_name], feed)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)


def _check_declaration(
    model: onnx.ModelProto, name: str, input_size: tuple[int, int], in_channels: int, normalize: Normalization
) -> None:
    h, w = input_size
    if not all(isinstance(v, int) and 1 <= v <= MAX_IMAGE_SIDE for v in (h, w)):
        raise OnnxModelError(f"input size must be (height, width), each 1..{MAX_IMAGE_SIDE}, got {input_size}")
    if in_channels not in (1, 3):
        raise OnnxModelError(f"in_channels must be 1 or 3, got {in_channels}")
    if len(normalize.mean) != in_channels or len(normalize.std) != in_channels:
        raise OnnxModelError(
            f"normalisation must give one mean and one std per channel ({in_channels}), got {normalize}"
        )
    if not all(math.isfinite(v) for v in (*normalize.mean, *normalize.std)) or min(normalize.std) <= 0:
        raise OnnxModelError(f"normalisation needs finite means and stds > 0, got {normalize}")
    weights = {t.name for t in model.graph.initializer}
    graph_input = next(v for v in model.graph.input if v.name not in weights)
    declared = [in_channels, h, w]
    for axis, (found, want) in enumerate(zip(_dims(graph_input)[1:], declared, strict=True), start=1):
        if isinstance(found, int) and found > 0 and found != want:
            raise OnnxModelError(
                f"{name} takes input of shape {_dims(graph_input)}, but was declared as {in_channels}x{h}x{w} "
                f"(axis {axis}: {found} != {want}); declare the size and channels the model was exported with"
            )


def _probe(
    backbone: OnnxBackbone,
    name: str,
    input_size: tuple[int, int],
    in_channels: int,
    normalize: Normalization,
    embedding_size: int | None,
) -> int:
    """Run two different probe images at the declared size; the embedding size."""
    g = torch.Generator().manual_seed(0)
    probe01 = torch.stack(
        [
            torch.rand(in_channels, *input_size, generator=g),
            torch.linspace(0, 1, input_size[1]).expand(in_channels, *input_size),
        ]
    )
    x = normalize.apply(probe01)
    try:
        both = backbone(x)
        alone = torch.cat([backbone(x[:1]), backbone(x[1:])])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types for a wrong shape
        raise OnnxModelError(
            f"{name} refused a probe batch of 2 x {in_channels} x {input_size[0]} x {input_size[1]}: "
            f"{str(exc)[:300]}; check the declared input size and channels"
        ) from None
    if both.dim() != 2 or both.shape[0] != 2 or not torch.isfinite(both).all():
        raise OnnxModelError(
            f"{name} gave {tuple(both.shape)} (finite: {bool(torch.isfinite(both).all())}) "
            "for 2 probe images; an embedding model gives 2 finite rows"
        )
    if embedding_size is not None and both.shape[1] != embedding_size:
        raise OnnxModelError(f"{name} gives {both.shape[1]}-d embeddings, declared {embedding_size}")
    if torch.allclose(both[0], both[1], atol=1e-6):
        raise OnnxModelError(
            f"{name} gives the same embedding to two different probe images: not an embedding model "
            "at this input size and normalisation"
        )
    if not torch.allclose(both, alone, atol=1e-4, rtol=1e-3):
        raise OnnxModelError(f"{name} embeds an image differently alone and in a batch: the batch axis is not dynamic")
    return int(both.shape[1])


def load_onnx_model(
    path: str | Path,
    model_id: str,
    input_size: tuple[int, int],
    in_channels: int,
    normalize: Normalization,
    embedding_size: int | None = None,
    align_size: int = 112,
    warp: str = "none",
    threshold: float | None = None,
    threads: int = 1,
) -> FaceModel:
    """An ONNX embedding model (one self-contained file) as a `FaceModel`, after its checks and a probe.

    Args:
        path: the .onnx file.
        model_id: what index rows record (e.g. "model:<id>").
        input_size, in_channels, normalize: the declared input (a wrong one is refused).
        embedding_size: d, when declared (checked); None takes the model's.
        align_size, warp: the crop side and RoI-tanh space the model was made for.
        threshold: its cosine-similarity threshold for "same person", if one was evaluated.
        threads: onnxruntime intra-op threads.

    Raises:
        OnnxModelError: see the module docstring.
    """
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"no ONNX file at {path}")
    if path.stat().st_size > MAX_ONNX_BYTES:
        raise OnnxModelError(
            f"{path.name} is {path.stat().st_size} bytes; an ONNX model holds at most {MAX_ONNX_BYTES}"
        )
    data = path.read_bytes()
    model = check_onnx_bytes(data, path.name)
    size = (int(input_size[0]), int(input_size[1]))
    _check_declaration(model, path.name, size, in_channels, normalize)
    try:
        backbone = OnnxBackbone(data, threads)
    except Exception as exc:  # onnxruntime's own error types; the checks above make this rare
        raise OnnxModelError(f"onnxruntime cannot load {path.name}: {str(exc)[:300]}") from None
    d = _probe(backbone, path.name, size, in_channels, normalize, embedding_size)
    return FaceModel(backbone.eval(), model_id, size, in_channels, normalize, align_size, warp, d, threshold)
