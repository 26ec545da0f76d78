"""An uploaded ONNX embedding model checked as data, without torch: what `POST /models` kind onnx runs.

The API process never imports torch or `ml`, so this is the upload-time twin of
`ml.export.onnx_model.check_onnx_bytes` + its probe (the worker runs those again before it embeds
with the model, as TorchScript is checked twice). Refused, with `OnnxUploadError`:
- bytes protobuf cannot parse as an ONNX model, or that `onnx.checker` rejects;
- operators, opset imports or local functions outside the standard domain ("" / "ai.onnx"): a
  custom domain needs a custom-op library, which is never loaded;
- tensors kept in external data files (the session is built from the bytes; no path is opened);
- not one float (batch, C, H, W) input and one (batch, d) output; an input whose fixed C, H or W
  disagree with the declared channels and size;
- a probe batch (two different images at the declared size and normalisation, in onnxruntime on
  the CPU with one thread) that fails, gives non-finite or identical rows, or depends on the batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
MAX_SIDE = 1024
# Named normalisations: [0, 1] pixels -> (x - mean) / std per channel.
PRESETS: dict[str, tuple[float, float]] = {
    "arcface": (0.5, 0.5),  # insightface: (x * 255 - 127.5) / 127.5
    "facenet": (127.5 / 255, 128 / 255),  # facenet-pytorch's fixed_image_standardization
    "unit": (0.0, 1.0),  # the [0, 1] pixels as they are
}


class OnnxUploadError(ValueError):
    """The ONNX file or its declaration is refused; `code` is the API's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class OnnxDeclaration:
    """What the uploader declares: (H, W), channels, and the normalisation of [0, 1] pixels."""

    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_meta(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "in_channels": self.channels,
            "normalize": {"mean": list(self.mean), "std": list(self.std)},
        }


def _numbers(text: str, what: str) -> list[float]:
    parts = [p for p in text.replace("x", ",").replace("[", "").replace("]", "").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        message = f"{what} must be numbers separated by commas: {text[:50]!r}"
        raise OnnxUploadError("invalid_declaration", message) from None
    if not all(math.isfinite(v) for v in values):
        raise OnnxUploadError("invalid_declaration", f"{what} must be finite numbers")
    return values


def parse_declaration(fields: dict[str, str]) -> OnnxDeclaration:
    """The declaration from the upload form: input_size ("112,112" or "112x112"), channels (1 or 3),
    and normalize (a preset: arcface, facenet, unit) or mean and std (one number, or one a channel)."""
    size = _numbers(fields.get("input_size", ""), "input_size")
    if len(size) != 2 or not all(v.is_integer() and 1 <= v <= MAX_SIDE for v in size):
        raise OnnxUploadError("invalid_declaration", f"declare input_size as height,width (each 1..{MAX_SIDE})")
    channels = fields.get("channels", "3").strip()
    if channels not in ("1", "3"):
        raise OnnxUploadError("invalid_declaration", f"channels must be 1 or 3, got {channels!r}")
    c = int(channels)
    preset = fields.get("normalize", "").strip()
    if preset:
        if preset not in PRESETS or "mean" in fields or "std" in fields:
            raise OnnxUploadError(
                "invalid_declaration", f"normalize is one of {', '.join(PRESETS)} (or send mean and std instead)"
            )
        m, s = PRESETS[preset]
        mean, std = [m] * c, [s] * c
    elif "mean" in fields and "std" in fields:
        mean, std = _numbers(fields["mean"], "mean"), _numbers(fields["std"], "std")
        mean, std = (mean * c if len(mean) == 1 else mean), (std * c if len(std) == 1 else std)
        if len(mean) != c or len(std) != c or min(std) <= 0:
            raise OnnxUploadError("invalid_declaration", f"mean and std need 1 or {c} values, each std > 0")
    else:
        raise OnnxUploadError("invalid_declaration", f"declare normalize ({', '.join(PRESETS)}) or mean and std")
    return OnnxDeclaration((int(size[0]), int(size[1])), c, tuple(mean), tuple(std))


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def check_graph(data: bytes, name: str, decl: OnnxDeclaration) -> onnx.ModelProto:
    """The parsed model after every static check (see the module docstring)."""
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxUploadError("not_onnx", f"{name} is not an ONNX model: {str(exc)[:200]}") from None
    if not model.graph.node:
        raise OnnxUploadError("not_onnx", f"{name} is not an ONNX model: it has no graph nodes")
    custom = {o.domain for o in model.opset_import if o.domain not in STANDARD_DOMAINS}
    custom |= {n.domain for g in _graphs(model.graph) for n in g.node if n.domain not in STANDARD_DOMAINS}
    if custom or model.functions:
        what = ", ".join(sorted(custom)) or "local functions"
        raise OnnxUploadError(
            "custom_operators",
            f"{name} uses operators outside the standard ONNX domain ({what}); custom operators need code, "
            "which is never loaded: export with standard operators only",
        )
    for g in _graphs(model.graph):
        tensors = [*g.initializer, *(a.t for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR)]
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
            raise OnnxUploadError(
                "external_data", f"{name} keeps tensors in external data files; save it as one self-contained file"
            )
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise OnnxUploadError("invalid_onnx", f"{name} is not a valid ONNX model: {str(exc)[:300]}") from None
    weights = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise OnnxUploadError("not_embedding_model", f"{name} must take one image batch and give one embedding batch")
    dims = _dims(inputs[0])
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4:
        raise OnnxUploadError("not_embedding_model", f"{name}: the input must be float32 (N, C, H, W), got {dims}")
    if len(_dims(model.graph.output[0])) != 2:
        raise OnnxUploadError("not_embedding_model", f"{name}: the output must be (N, d)")
    want = [decl.channels, *decl.input_size]
    for found, expected in zip(dims[1:], want, strict=True):
        if isinstance(found, int) and found > 0 and found != expected:
            raise OnnxUploadError(
                "input_size_mismatch",
                f"{name} takes input of shape {dims}, but was declared {want[0]}x{want[1]}x{want[2]} (C x H x W); "
                "declare the size and channels the model was exported with",
            )
    return model


def probe(data: bytes, name: str, decl: OnnxDeclaration) -> int:
    """Two probe images through onnxruntime (CPU, one thread); the embedding size."""
    import onnxruntime as ort

    h, w = decl.input_size
    rng = np.random.default_rng(0)
    images = np.stack([rng.random((decl.channels, h, w)), np.broadcast_to(np.linspace(0, 1, w), (decl.channels, h, w))])
    mean = np.asarray(decl.mean).reshape(1, -1, 1, 1)
    std = np.asarray(decl.std).reshape(1, -1, 1, 1)
    x = np.ascontiguousarray((images - mean) / std, dtype=np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        both = np.asarray(session.run(None, {feed: x})[0])
        alone = np.concatenate([np.asarray(session.run(None, {feed: x[i : i + 1]})[0]) for i in range(2)])
    except Exception as exc:  # onnxruntime's own Fail / InvalidArgument / RuntimeException
        raise OnnxUploadError(
            "probe_failed", f"{name} refused a probe batch of 2 x {decl.channels} x {h} x {w}: {str(exc)[:300]}"
        ) from None
    if both.ndim != 2 or both.shape[0] != 2 or not np.isfinite(both).all():
        raise OnnxUploadError("probe_failed", f"{name} gave {both.shape} (or non-finite values) for 2 probe images")
    if np.allclose(both[0], both[1], atol=1e-6):
        raise OnnxUploadError("probe_failed", f"{name} gives two different probe images the same embedding")
    if not np.allclose(both, alone, atol=1e-4, rtol=1e-3):
        raise OnnxUploadError("probe_failed", f"{name} embeds an image differently alone and in a batch")
    return int(both.shape[1])


def check_onnx_upload(data: bytes, name: str, fields: dict[str, str]) -> dict[str, Any]:
    """The model's meta (declared input, embedding size) after every check, or `OnnxUploadError`."""
    decl = parse_declaration(fields)
    check_graph(data, name, decl)
    meta = {**decl.to_meta(), "embedding_size": probe(data, name, decl)}
    if fields.get("threshold", "").strip():
        values = _numbers(fields["threshold"], "threshold")
        if len(values) != 1 or not -1.0 <= values[0] <= 1.0:
            raise OnnxUploadError("invalid_declaration", "threshold is one cosine similarity in [-1, 1]")
        meta["threshold"] = values[0]
    if fields.get("align_size", "").strip():
        if fields["align_size"].strip() not in ("112", "160"):
            raise OnnxUploadError("invalid_declaration", "align_size is 112 or 160")
        meta["align_size"] = int(fields["align_size"])
    return meta
