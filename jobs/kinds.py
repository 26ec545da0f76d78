"""The registry of job kinds: name -> params model, queue and runner entry point.

Each family of kinds declares `KINDS` in `jobs/params/<family>.py` (pydantic only, so the API can
validate params without importing torch); this module collects them.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError

from jobs.errors import JobInputError
from jobs.kindspec import KindSpec

FAMILIES = ("probe", "embedding", "invert", "gan", "embed")


class UnknownKind(LookupError):
    """No kind of that name is registered."""


@lru_cache(maxsize=1)
def registry() -> dict[str, KindSpec]:
    kinds: dict[str, KindSpec] = {}
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"jobs.params.{family}")
        except ModuleNotFoundError as exc:
            if exc.name == f"jobs.params.{family}":
                continue  # a family not built yet
            raise
        for spec in module.KINDS:
            if spec.name in kinds:
                raise RuntimeError(f"job kind {spec.name!r} is registered twice")
            kinds[spec.name] = spec
    return kinds


def get_kind(name: str) -> KindSpec:
    try:
        return registry()[name]
    except KeyError:
        known = ", ".join(sorted(registry()))
        raise UnknownKind(f"unknown job kind {name!r}; known kinds: {known}") from None


def validate_params(kind: str, params: dict[str, Any]) -> BaseModel:
    """The kind's params model built from `params`, or `JobInputError` with pydantic's details."""
    spec = get_kind(kind)
    try:
        return spec.params.model_validate(params)
    except ValidationError as exc:
        raise JobInputError(f"invalid params for {kind}: {exc.error_count()} error(s)") from exc


def load_runner(spec: KindSpec) -> Any:
    module_name, func = spec.runner.split(":")
    return getattr(importlib.import_module(module_name), func)
