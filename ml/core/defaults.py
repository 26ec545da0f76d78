"""The defaults an ml config shares with a job kind's params, read from its package's `defaults.json`.

A setting that a job's params model exposes (`jobs/params/`) and an ml config dataclass uses has one
default, written once, as plain data: `ml/<package>/defaults.json`, one object per config class.
Plain data because the API validates params without importing `ml` at all (`jobs.kindspec.ml_defaults`
reads the same file), and `ml` never imports `jobs`. Settings only ml uses keep their defaults in
the dataclass.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any


@cache
def _package_defaults(package: str) -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads((Path(__file__).parents[1] / package / "defaults.json").read_text())
    return data


def shared_defaults(package: str, config: str) -> dict[str, Any]:
    """The shared defaults of config class `config` in `ml/<package>/defaults.json` (a copy).

    Args:
        package: the ml package, e.g. "arcface".
        config: the dataclass's name, e.g. "TrainConfig".
    """
    return dict(_package_defaults(package)[config])
