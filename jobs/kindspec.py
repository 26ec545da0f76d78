"""What a job kind is: a name, a params model, a queue and a runner entry point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

Queue = Literal["gpu", "cpu"]


@dataclass(frozen=True)
class KindSpec:
    """A registered job kind.

    Attributes:
        name: the kind's key in `POST /jobs`.
        params: the pydantic model its params are validated with (no torch imports).
        queue: the Celery queue its jobs go to by default.
        runner: dotted path `module:function` of the runner; imported only on workers.
        description: one line for `GET /kinds` and the dashboard.
    """

    name: str
    params: type[BaseModel]
    queue: Queue
    runner: str
    description: str
