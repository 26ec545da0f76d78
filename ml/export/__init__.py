"""ONNX: export a trained backbone with a parity check, and load an ONNX embedding model as a `FaceModel`."""

from ml.export.onnx_export import ExportError, export_backbone, export_trained, input_spec, parity_report
from ml.export.onnx_model import OnnxBackbone, OnnxModelError, check_onnx_bytes, load_onnx_model

__all__ = [
    "ExportError",
    "OnnxBackbone",
    "OnnxModelError",
    "check_onnx_bytes",
    "export_backbone",
    "export_trained",
    "input_spec",
    "load_onnx_model",
    "parity_report",
]
