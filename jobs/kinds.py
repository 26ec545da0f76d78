"""The registry of job kinds: name -> `KindSpec` (params model, queue, runner, device facts).

Each family of kinds declares `KINDS` in `jobs/params/<family>.py` (pydantic only, so the API can
validate params without importing torch). This module finds the families by scanning the package:
a new family file is registered by being there, and one that fails to import, or forgets `KINDS`,
fails loudly instead of vanishing from the registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ValidationError

import jobs.params
from jobs.errors import JobInputError
from jobs.kindspec import KindSpec


class UnknownKind(LookupError):
    """No kind of that name is registered."""


def families() -> list[str]:
    """The modules of `jobs.params` that declare kinds (a leading underscore marks a shared helper)."""
    return sorted(m.name for m in pkgutil.iter_modules(jobs.params.__path__) if not m.name.startswith("_"))


@lru_cache(maxsize=1)
def registry() -> dict[str, KindSpec]:
    """Every declared kind by name.

    Raises:
        RuntimeError: a family module without `KINDS`, or a kind name declared twice.
    """
    kinds: dict[str, KindSpec] = {}
    for family in families():
        module = importlib.import_module(f"jobs.params.{family}")
        specs = getattr(module, "KINDS", None)
        if specs is None:
            raise RuntimeError(
                f"jobs/params/{family}.py declares no KINDS: list its kinds there, or name it _{family}.py "
                "if it only holds shared params code"
            )
        for spec in specs:
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
