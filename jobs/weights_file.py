"""Checking an uploaded weights file without torch: is it plain tensor data in the layout its kind needs?

`jobs.torch_pickle.read_tree` reads the file as data (nothing in it runs; refused globals are named);
`check_weights_file(path, kind, name)` then checks the tree against what the worker will load
(`ml/faces/models.py` and `ml/gan/perceptual.py` for `facenet`, `ml/arcface/model.py` for
`backbone`). The worker reads it again with `weights_only=True` and checks every tensor's name,
shape and dtype against the network.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jobs.torch_pickle import (
    DTYPES,
    STATE_DICT_HINT,
    DType,
    Storage,
    StorageType,
    TensorInfo,
    WeightsFileError,
    ints,
    read_tree,
)

BACKBONE_FORMAT = "facejobs.embedding/1"  # ml/arcface/model.py FORMAT
WARPS = ("none", "roi_tanh", "roi_tanh_polar", "roi_tanh_circular")  # ml/arcface/model.py WARPS
MAX_IMAGE_SIDE = 1024  # ml/arcface/model.py MAX_IMAGE_SIDE
PLAIN = (str, int, float, bool, type(None))
__all__ = ["TensorInfo", "WeightsFileError", "check_weights_file"]


def _values(tree: Any) -> Iterator[Any]:
    """Every value reachable from `tree` through dicts, lists and tuples (cycles visited once)."""
    seen: set[int] = set()
    stack = [tree]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        yield value
        if isinstance(value, Mapping):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list | tuple | set | frozenset):
            stack.extend(value)


def _tensor_dict(obj: Any, name: str, field: str) -> dict[str, TensorInfo]:
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsFileError(f"{name}: {field} must be a non-empty dict of tensors: {STATE_DICT_HINT}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, TensorInfo):
            raise WeightsFileError(
                f"{name}: {field}[{str(key)[:80]!r}] is a {type(value).__name__}, not a tensor: {STATE_DICT_HINT}"
            )
    return dict(obj)


def _plain_kwarg(value: Any) -> bool:
    """A number, string, bool or None, or a list/tuple of them (what backbone kwargs are)."""
    return isinstance(value, PLAIN) or (isinstance(value, list | tuple) and all(isinstance(v, PLAIN) for v in value))


def _check_backbone(tree: Any, name: str) -> dict[str, TensorInfo]:
    """A facejobs backbone file: the architecture header `ml.arcface.model.save_trained` writes."""
    if not isinstance(tree, Mapping) or "state_dict" not in tree or "backbone" not in tree:
        raise WeightsFileError(
            f"{name} is not a facejobs backbone file: a backbone upload is the backbone.pt a train_embedding job "
            "writes ({format, backbone, backbone_kwargs, state_dict, image_size, in_channels, normalize, warp}), "
            "since a bare state dict does not say which network to build"
        )
    if tree.get("format", BACKBONE_FORMAT) != BACKBONE_FORMAT:
        raise WeightsFileError(f"{name}: format must be {BACKBONE_FORMAT!r}")
    arch, kwargs = tree["backbone"], tree.get("backbone_kwargs", {})
    if not isinstance(arch, str) or not 0 < len(arch) <= 100:
        raise WeightsFileError(f"{name}: backbone must be a registered backbone's name")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) and _plain_kwarg(v) for k, v in kwargs.items()):
        raise WeightsFileError(f"{name}: backbone_kwargs must be a dict of numbers, strings and lists of them")
    size = tree.get("image_size", [1, 1])
    if not (ints(size, 2) and all(1 <= v <= MAX_IMAGE_SIDE for v in size)):
        raise WeightsFileError(f"{name}: image_size must be [height, width], each 1..{MAX_IMAGE_SIDE}")
    channels = tree.get("in_channels", 1)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise WeightsFileError(f"{name}: in_channels must be 1 or 3")
    norm = tree.get("normalize", {"mean": [0.0] * channels, "std": [1.0] * channels})
    if not isinstance(norm, Mapping) or not all(
        isinstance(norm.get(k), list | tuple) and len(norm[k]) == channels
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in norm[k])
        for k in ("mean", "std")
    ) or any(v <= 0 for v in norm["std"]):  # fmt: skip
        raise WeightsFileError(f"{name}: normalize must be {{mean, std}} with one finite number per channel, std > 0")
    if tree.get("warp", "none") not in WARPS:
        raise WeightsFileError(f"{name}: warp must be one of {', '.join(WARPS)}")
    return _tensor_dict(tree["state_dict"], name, "state_dict")


def _check_facenet(tree: Any, name: str) -> dict[str, TensorInfo]:
    """InceptionResnetV1 weights: a state dict, or {"state_dict": ...} (`ml.core.safe_load.facenet_state_dict`)."""
    if isinstance(tree, Mapping) and isinstance(tree.get("state_dict"), Mapping):
        tree = tree["state_dict"]
    return _tensor_dict(tree, name, "the state dict")


CHECKS = {"backbone": _check_backbone, "facenet": _check_facenet}


def check_weights_file(path: Path, kind: str, name: str) -> dict[str, TensorInfo]:
    """The tensors (name -> dtype and shape) of an upload of `kind` ("backbone" or "facenet").

    Args:
        path: the received file.
        kind: which loader the worker will give it to (`CHECKS`).
        name: how messages name the file (the caller's file name).

    Raises:
        WeightsFileError: anything that is not plain tensor data in the layout `kind` needs; the
            message names the file and what was found.
    """
    tree = read_tree(path, name)
    tensors = CHECKS[kind](tree, name)
    for value in _values(tree):
        if isinstance(value, StorageType | Storage | DType):  # a bare storage or dtype: no weights file has one
            raise WeightsFileError(f"{name} holds a bare {type(value).__name__}; {STATE_DICT_HINT}")
        if isinstance(value, TensorInfo) and value.dtype not in DTYPES:
            raise WeightsFileError(f"{name} holds a {value.dtype} tensor")
    return tensors
