"""Runners: one function per job kind, called with the JobContext by the task wrapper.

Two helpers every runner shares: `params_as` (the job's params as its kind's model, typed) and
`ml_config` (the ml config dataclass built from those params in one step, so no runner copies a
setting by hand and the one default of each lives in `ml/<package>/defaults.json`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from workers.context import JobContext

P = TypeVar("P", bound=BaseModel)
C = TypeVar("C")


class Preempted(Exception):
    """Raised by a runner that saved a checkpoint because `ctx.should_stop()` answered True."""


def params_as(ctx: JobContext, model: type[P]) -> P:
    """`ctx.params`, checked to be of `model` (the kind's params model), for typed access.

    Raises:
        TypeError: the context holds another kind's params (a wiring bug, not the caller's input).
    """
    params = ctx.params
    if not isinstance(params, model):
        raise TypeError(f"expected {model.__name__} params, got {type(params).__name__}")
    return params


def ml_config(config: type[C], params: BaseModel, renames: Mapping[str, str | None] | None = None, **values: Any) -> C:
    """The ml config dataclass `config` made from `params`: every field of the same name, then `values`.

    Params fields that the config lacks (refs, choices the runner resolves) are left out; config
    fields that the params lack keep the config's default. A list goes in as a tuple where the
    config's default is one (JSON and pydantic speak lists; frozen settings hash tuples).

    Args:
        config: an ml config dataclass (`TrainConfig`, `InversionConfig`, `DetectorSettings`...).
        params: the job's params model.
        renames: params field -> config field, where the two layers name a setting differently, or
            None for a params field that is not the config's field of the same name (the runner
            computes that one from it); the kind's `KindSpec.ml_configs` holds them.
        values: settings the runner computes (they win over the params).
    """
    renames = renames or {}
    fields = {f.name: f for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    taken: dict[str, Any] = {}
    for name, value in params.model_dump().items():
        target = renames.get(name, name)
        if target is None or target not in fields:
            continue
        if isinstance(value, list) and isinstance(fields[target].default, tuple):
            value = tuple(value)
        taken[target] = value
    return config(**{**taken, **values})
