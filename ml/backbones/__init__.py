"""Face-embedding backbones, registered by name (the timm `register_model`/`create_model` habit).

Every backbone maps images `(N, C, H, W)` to unnormalised embeddings `(N, d)`. A job's params name
the backbone by key; `create_backbone(name, **kw)` builds it and remembers `name` and the kwargs on
the module (`backbone_name`, `backbone_kwargs`) so a saved state_dict can be rebuilt from config
alone.

Common keyword arguments (each factory documents its own defaults):
    embedding_size: length d of the embedding.
    in_channels: 1 for grey input, 3 for RGB.
    input_size: side (int) or (height, width) of the input; the head's Linear layer follows it.
    dropout: dropout probability before the head's Linear layer.
    base_width: width of the first stage (64 in the published layouts; stages double it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ml.core.errors import InputError

BackboneFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, BackboneFactory] = {}


class BackboneError(InputError):
    """A backbone name or configuration is wrong."""


class UnknownBackboneError(BackboneError, LookupError):
    """No backbone of that name is registered."""


def register_backbone(name: str | None = None) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering a factory under `name` (default: the function's name).

    Example:
        @register_backbone()
        def my_net(embedding_size: int = 128, **kw) -> nn.Module: ...
    """

    def deco(fn: BackboneFactory) -> BackboneFactory:
        key = name or fn.__name__
        if key in _REGISTRY and _REGISTRY[key] is not fn:
            raise BackboneError(f"backbone {key!r} is registered twice")
        _REGISTRY[key] = fn
        return fn

    return deco


def list_backbones() -> list[str]:
    """Names of the registered backbones, sorted."""
    return sorted(_REGISTRY)


def backbone_defaults(name: str) -> dict[str, Any]:
    """The factory's keyword arguments and their defaults (for config files and docs)."""
    fn = _get(name)
    return {
        p.name: p.default for p in inspect.signature(fn).parameters.values() if p.default is not inspect.Parameter.empty
    }


def _get(name: str) -> BackboneFactory:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_backbones())
        raise UnknownBackboneError(f"unknown backbone {name!r}; registered backbones: {known}") from None


def check_backbone_kwargs(name: str, **kw: Any) -> None:
    """Raise `BackboneError` when `name` is unknown or a kwarg is not accepted, without building."""
    fn = _get(name)
    accepted = set(inspect.signature(fn).parameters)
    unknown = sorted(set(kw) - accepted)
    if unknown:
        raise BackboneError(
            f"backbone {name!r} does not take {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}"
        )


def create_backbone(name: str, **kw: Any) -> nn.Module:
    """Build the backbone registered as `name` with keyword arguments `kw`.

    Raises:
        UnknownBackboneError: `name` is not registered.
        BackboneError: a keyword argument is not accepted or its value is invalid.
    """
    check_backbone_kwargs(name, **kw)
    model = _get(name)(**kw)
    model.backbone_name = name  # type: ignore[assignment]
    model.backbone_kwargs = dict(kw)  # type: ignore[assignment]
    return model


# Importing the families registers them.
from ml.backbones import iresnet, rtnet, se_resnet  # noqa: E402

__all__ = [
    "BackboneError",
    "UnknownBackboneError",
    "backbone_defaults",
    "check_backbone_kwargs",
    "create_backbone",
    "iresnet",
    "list_backbones",
    "register_backbone",
    "rtnet",
    "se_resnet",
]
