"""The one list of operations an uploaded TorchScript program may call (plain data, no torch).

A generator maps latents to images, which needs only pure tensor arithmetic. Every operation
here reads and writes nothing but its tensor, list and number arguments: no files
(`aten::from_file`, `aten::save`), no threads or remote calls (`prim::fork`, `aten::wait`,
`aten::rpc_*`), no raw or uninitialised memory (`aten::as_strided`, `aten::empty`, `aten::set_`,
`aten::resize_`, which could hand back bytes of other objects in the worker, its credentials
included), no printing (`aten::warn`, which torch's own functional code calls, reaches only the
worker's log), no C++ custom classes. Anything not listed is refused: an allowlist, not a
denylist, because torch grows new operators with every release.

`jobs.torchscript_check` applies it to an archive's serialized source before torch ever sees the
file (at upload, and on the worker before `torch.jit.load`); `ml.gan.script_guard` applies it
again to the loaded graphs (calls inlined, so no `prim::CallFunction`/`prim::CallMethod` is
listed), whose node kinds are the same `namespace::name` strings. The worker passes `ALLOWED_OPS`
to the latter, so this stays the only copy.
"""

from __future__ import annotations


def _aten(*names: str) -> frozenset[str]:
    return frozenset(f"aten::{n}" for n in names)


def _with_inplace(*names: str) -> tuple[str, ...]:
    """Each name and its in-place twin (`relu`, `relu_`): in place on its own argument is still pure."""
    return tuple(v for n in names for v in (n, f"{n}_"))


# Elementwise and reductions over tensors (and scalars: `aten::add` also adds two ints).
_MATH = _aten(
    *_with_inplace(
        "abs", "add", "sub", "rsub", "mul", "div", "neg", "pow", "remainder", "fmod", "floor_divide",
        "exp", "log", "log1p", "log2", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tan", "tanh",
        "sigmoid", "atan", "atan2", "sign", "floor", "ceil", "round", "trunc", "frac", "clamp",
        "clamp_min", "clamp_max", "clip", "lerp", "addcmul", "addcdiv", "hardtanh", "relu", "relu6",
        "leaky_relu", "elu", "selu", "celu", "silu", "mish", "hardsigmoid", "hardswish", "softplus",
        "logit", "erf", "square", "masked_fill", "copy", "fill", "zero",
    ),
    "gelu", "glu", "softmax", "log_softmax", "prelu", "threshold", "where", "maximum", "minimum",
    "max", "min", "amax", "amin", "argmax", "argmin", "mean", "sum", "prod", "var", "std", "var_mean",
    "std_mean", "norm", "frobenius_norm", "linalg_vector_norm", "cumsum", "logsumexp", "lt", "le",
    "gt", "ge", "eq", "ne", "logical_and", "logical_or", "logical_not", "bitwise_not", "isfinite",
    "isnan", "all", "any", "sort", "topk", "normalize",
)  # fmt: skip

# Shapes, views, joins, resampling and the layers of convolutional generators.
_LAYERS = _aten(
    "reshape", "view", "view_as", "reshape_as", "flatten", "unflatten", "unsqueeze", "squeeze", "permute",
    "transpose", "t", "contiguous", "expand", "expand_as", "repeat", "repeat_interleave", "cat", "concat",
    "stack", "split", "split_with_sizes", "chunk", "unbind", "slice", "select", "narrow", "index_select",
    "index", "index_put", "index_put_", "gather", "flip", "roll", "tile", "movedim", "unfold", "constant_pad_nd",
    "pad", "reflection_pad2d",
    "replication_pad2d", "pixel_shuffle", "pixel_unshuffle", "upsample_nearest1d", "upsample_nearest2d",
    "upsample_bilinear2d", "upsample_bicubic2d", "upsample_nearest3d", "upsample_linear1d",
    "upsample_trilinear3d", "_upsample_nearest_exact1d", "_upsample_nearest_exact2d",
    "_upsample_nearest_exact3d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa",
    "_upsample_lanczos2d_aa", "linear", "matmul", "mm", "bmm", "addmm", "einsum", "conv1d", "conv2d",
    "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "_convolution", "convolution",
    "batch_norm", "instance_norm", "layer_norm", "group_norm", "dropout", "feature_dropout", "alpha_dropout",
    "dropout_", "feature_dropout_", "alpha_dropout_", "avg_pool1d", "avg_pool2d", "max_pool1d", "max_pool2d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d", "embedding",
    "scaled_dot_product_attention", "baddbmm", "_native_multi_head_attention", "_transformer_encoder_layer_fwd",
)  # fmt: skip

# New tensors with defined contents (never `empty`: uninitialised memory can hold other data).
_CREATION = _aten(
    "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "new_zeros", "new_ones",
    "new_full", "rand", "randn", "rand_like", "randn_like", "normal", "uniform", "arange", "linspace",
    "tensor", "scalar_tensor", "eye",
)  # fmt: skip

# Types, devices, autograd bookkeeping and the attributes TorchScript reads off a tensor.
_TENSOR_META = _aten(
    "to", "type_as", "float", "double", "half", "int", "long", "bool", "detach", "clone",
    "requires_grad_", "size", "dim", "numel", "item", "is_floating_point", "Int", "Float", "Bool",
    "ScalarImplicit", "IntImplicit", "FloatImplicit", "device", "dtype", "is_grad_enabled",
)  # fmt: skip

# What TorchScript compiles Python's numbers, lists, strings and control flow into.
_LANGUAGE = _aten(
    "__is__", "__isnot__", "__not__", "__and__", "__or__", "__xor__", "__contains__", "__getitem__",
    "__range_length", "__derive_index", "len", "append", "extend", "insert", "pop", "list",
    "_set_item", "format", "str", "floordiv", "warn", "dict", "keys", "values",
    "items", "get", "__round_to_zero_floordiv", "mod",
)  # fmt: skip

_PRIM = frozenset(
    f"prim::{n}"
    for n in (
        "Constant", "GetAttr", "SetAttr", "If", "Loop",
        "ListConstruct", "ListUnpack", "TupleConstruct", "TupleUnpack", "TupleIndex", "TupleSlice",
        "DictConstruct", "DictIndex", "RaiseException", "NumToTensor", "unchecked_cast",
        "unchecked_unwrap_optional", "Uninitialized", "isinstance", "min", "max", "abs", "device",
        "dtype", "shape", "layout", "is_cuda", "requires_grad", "data", "AutogradZero", "AutogradAdd",
        "ImplicitTensorToNum", "StringIndex", "ListIndex", "is_nested", "type",
    )
)  # fmt: skip

ALLOWED_OPS: frozenset[str] = _MATH | _LAYERS | _CREATION | _TENSOR_META | _LANGUAGE | _PRIM
"""Every `namespace::name` an uploaded program may use; everything else is refused."""

ALLOWED_NAMESPACES = ("aten", "prim")
