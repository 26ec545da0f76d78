"""What a job kind is: a name, a params model, a queue, a runner entry point and its device facts.

A kind is declared once, in its family's `jobs/params/<family>.py` (`KINDS`); `jobs.kinds` finds
every family by scanning that package, and the worker reads everything else it needs about a kind
(out-of-memory hints today) from here, so adding a kind touches no list elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

Queue = Literal["gpu", "cpu"]


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
    """

    name: str
    params: type[BaseModel]
    queue: Queue
    runner: str
    description: str
    oom_hints: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [name for name in self.oom_hints if name not in self.params.model_fields]
        if unknown:
            raise KindDeclarationError(
                f"kind {self.name!r}: oom_hints {unknown} are not fields of {self.params.__name__}; "
                "name the params whose smaller values need less memory"
            )
