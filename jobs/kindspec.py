"""What a job kind is: a name, a params model, a queue, a runner entry point and its device facts.

A kind is declared once, in its family's `jobs/params/<family>.py` (`KINDS`); `jobs.kinds` finds
every family by scanning that package, and the worker reads everything else it needs about a kind
(out-of-memory hints today) from here, so adding a kind touches no list elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

# gpu-N: jobs that hold N GPUs of one host (train_embedding with gpus: N); see README, GPU workers.
Queue = Literal["gpu", "gpu-2", "gpu-4", "gpu-8", "cpu"]


@cache
def _ml_package_defaults(package: str) -> dict[str, dict[str, Any]]:
    # find_spec of a top-level name locates `ml` without running any of it: the API process
    # validates params with these defaults and never imports `ml` (tests/api/test_auth.py).
    spec = importlib.util.find_spec("ml")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the ml package is not installed beside jobs: its defaults.json files are missing")
    path = Path(next(iter(spec.submodule_search_locations))) / package / "defaults.json"
    data: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return data


def ml_defaults(package: str, config: str) -> dict[str, Any]:
    """The defaults that ml config `config` of `ml/<package>` shares with a params model.

    A params field that is also a setting of an ml config takes its default from here
    (`Field(D["lr"], gt=0, ...)`): the one definition is `ml/<package>/defaults.json`, which the ml
    dataclass reads too (`ml.core.defaults.shared_defaults`).

    Args:
        package: the ml package, e.g. "arcface".
        config: the ml config class, e.g. "TrainConfig".
    """
    return dict(_ml_package_defaults(package)[config])


class KindDeclarationError(ValueError):
    """A `KindSpec` names something its own params model does not have."""


@dataclass(frozen=True)
class KindSpec:
    """A registered job kind.

    Attributes:
        name: the kind's key in `POST /jobs`.
        params: the pydantic model its params are validated with (no torch imports).
        queue: the Celery queue its jobs go to by default.
        runner: dotted path `module:function` of the runner; imported only on workers.
        description: one line for `GET /kinds` and the dashboard.
        oom_hints: the params whose smaller values need less device memory, most effective first;
            an out-of-memory failure names them with their current values.
        ml_configs: the ml config dataclasses (`module:Class`, imported only by workers and tests)
            the runner builds from these params with `workers.runners.ml_config`, each with the
            params fields it names otherwise (params field -> config field, or None where the
            runner computes that config field itself). Every setting they share takes its default
            from `ml/<package>/defaults.json`; tests/platform/test_kind_declarations.py checks it.
        gpus_param: the params field that says how many GPUs of one host a job holds (None: one);
            `queue_for` sends a job asking for N > 1 to queue `gpu-N`.
    """

    name: str
    params: type[BaseModel]
    queue: Queue
    runner: str
    description: str
    oom_hints: tuple[str, ...] = ()
    ml_configs: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    gpus_param: str | None = None

    def queue_for(self, params: Mapping[str, Any]) -> str:
        """The queue of a job with these (validated) params: `gpu-N` when its `gpus_param` asks for N > 1 GPUs."""
        gpus = int(params.get(self.gpus_param, 1) or 1) if self.gpus_param else 1
        return self.queue if gpus <= 1 or self.queue != "gpu" else f"gpu-{gpus}"

    def __post_init__(self) -> None:
        unknown = [name for name in self.oom_hints if name not in self.params.model_fields]
        if unknown:
            raise KindDeclarationError(
                f"kind {self.name!r}: oom_hints {unknown} are not fields of {self.params.__name__}; "
                "name the params whose smaller values need less memory"
            )
