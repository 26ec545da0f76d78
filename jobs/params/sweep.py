"""What `POST /sweeps` takes: a kind, base params, axes, a budget, early stopping and the ranking metric.

No kind is declared here (`KINDS` is empty): a sweep is a parent job no worker runs (jobs/sweeps.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.kindspec import KindSpec

KINDS: list[KindSpec] = []
MAX_CHILDREN = 1000  # children one sweep may generate (before its budget), so a typo cannot make millions


class RandomAxis(BaseModel):
    """A random axis: uniform in [low, high] (log-uniform with `log`), rounded to an int with `integer`."""

    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    log: bool = False
    integer: bool = False


class Axes(BaseModel):
    """Children = every grid point x `random.count` random draws x every seed."""

    model_config = ConfigDict(extra="forbid")

    grid: dict[str, list[Any]] = Field(default_factory=dict, description="param -> values, every combination.")
    random: dict[str, Any] = Field(
        default_factory=dict,
        description='param -> {"low", "high", "log"?, "integer"?} or a list of choices, and "count": draws.',
    )
    seeds: list[int] = Field(default_factory=list, description="Each combination once per seed (in `seed_param`).")

    @field_validator("grid")
    @classmethod
    def _nonempty_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [k for k, v in grid.items() if not v]
        if empty:
            raise ValueError(f"grid axes without values: {', '.join(empty)}")
        return grid

    def random_axes(self) -> dict[str, RandomAxis | list[Any]]:
        """The random axes parsed (a list: choices), without `count`."""
        out: dict[str, RandomAxis | list[Any]] = {}
        for name, spec in self.random.items():
            if name == "count":
                continue
            if isinstance(spec, list):
                if not spec:
                    raise ValueError(f"random axis {name!r} has no choices")
                out[name] = spec
            else:
                axis = RandomAxis.model_validate(spec)
                if axis.high < axis.low or (axis.log and axis.low <= 0):
                    raise ValueError(f"random axis {name!r}: need low <= high (and low > 0 with log)")
                out[name] = axis
        return out

    @property
    def count(self) -> int:
        count = self.random.get("count", 1 if len(self.random) > 0 else 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError('random "count" must be a whole number >= 0')
        return count


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_jobs: int | None = Field(None, ge=1, description="Children started at most; the rest are cancelled (budget).")
    gpu_hours: float | None = Field(
        None, gt=0, description="Device hours the children may use (on CPU workers: worker hours); then no more start."
    )


class EarlyStop(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(..., min_length=1, max_length=100, description="A progress metric of the kind (e.g. loss).")
    mode: Literal["min", "max"] = Field("min", description="min: lower is better; max: higher is better.")
    min_steps: int = Field(0, ge=0, description="Never stop a child before this step.")
    rule: Literal["median"] = "median"
    min_others: int = Field(3, ge=1, description="Other children that must have reported that far.")


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(..., min_length=1, max_length=64)
    name: str | None = Field(None, max_length=200)
    base: dict[str, Any] = Field(default_factory=dict, description="The params every child starts from.")
    axes: Axes = Field(default_factory=Axes)
    seed_param: str = Field("seed", min_length=1, max_length=100, description="The params field the seeds go into.")
    random_seed: int = Field(0, ge=0, description="Seeds the random axes' draws (a sweep is reproducible).")
    budget: Budget = Field(default_factory=Budget)
    early_stop: EarlyStop | None = None
    rank_by: str | None = Field(None, max_length=100, description="A result metric children are ranked by.")
    rank_mode: Literal["max", "min"] = Field("max", description="max: the highest value ranks first.")
    # The hook for adaptive search: only the built-in grid and random generation exists (optuna is not installed).
    optimizer: Literal["grid_random"] = "grid_random"
    queue: Literal["gpu", "cpu"] | None = None
    priority: int = Field(0, ge=0, le=9)
    max_attempts: int | None = Field(None, ge=1, le=100)
