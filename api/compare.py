"""Comparing jobs: the params that differ, metric series, final metrics, and seed groups with mean and std.

Pure functions over plain values (the route in `api/routes/compare.py` loads the rows); the sweep page
uses the same grouping. Conventions, stated once:
- params are flattened to dotted keys (`{"opt": {"lr": 0.1}}` -> `opt.lr`); lists stay values;
- a job's final metrics are its last progress metrics, overlaid by the numeric leaves of its result
  (flattened the same way), so a finished job reports what it returned and a running one what it has;
- a group is every job with the same kind and the same params except any param named `seed` (at any
  depth); its statistics are over its *succeeded* jobs only: `n` of them, `mean`, and the *sample*
  standard deviation (n - 1 in the denominator, as numpy `ddof=1` and pandas), null when n < 2;
- non-finite numbers (a diverged loss) are sent as null: JSON has no NaN.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SEED = "seed"
MAX_COMPARE = 50


@dataclass
class JobRun:
    """What comparing needs of one job."""

    id: str
    kind: str
    name: str | None
    status: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    result: dict[str, Any] | None
    tags: list[str] = field(default_factory=list)
    series: dict[str, list[list[float | None]]] = field(default_factory=dict)
    plots: list[dict[str, str]] = field(default_factory=list)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys (lists and scalars are leaves)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value} if prefix else {}


def finite(value: Any) -> float | None:
    """A number as float, None for NaN/inf or anything not a number (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def final_metrics(metrics: dict[str, Any], result: dict[str, Any] | None) -> dict[str, float | None]:
    """Last progress metrics overlaid by the numeric leaves of the result."""
    out: dict[str, float | None] = {k: finite(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}
    for k, v in flatten(result or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = finite(v)
    return out


def series_from_events(events: Iterable[dict[str, Any]]) -> dict[str, list[list[float | None]]]:
    """{metric: [[step, value], ...]} from progress events' data, oldest first, as the job page charts them.

    A resumed attempt repeats some steps: the later event's value wins, as on the job page.
    """
    by_metric: dict[str, dict[int, float | None]] = {}
    for data in events:
        try:
            step = int(data["step"])
        except (KeyError, TypeError, ValueError):
            continue
        for k, v in data.items():
            if k in ("step", "total") or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            by_metric.setdefault(k, {})[step] = finite(v)
    return {k: [[float(s), v] for s, v in sorted(points.items())] for k, points in sorted(by_metric.items())}


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def params_diff(runs: Sequence[JobRun]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """(differing, same): differing maps each dotted key to its value per job (None where absent)."""
    flats = [{"kind": r.kind, **flatten(r.params)} for r in runs]
    keys = sorted({k for f in flats for k in f})
    differing: dict[str, list[Any]] = {}
    same: dict[str, Any] = {}
    for k in keys:
        values = [f.get(k) for f in flats]
        present = all(k in f for f in flats)
        if present and len({_key(v) for v in values}) == 1:
            same[k] = values[0]
        else:
            differing[k] = values
    return differing, same


def is_seed(dotted: str) -> bool:
    return dotted.rsplit(".", 1)[-1] == SEED


def stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean and sample std (None below two values)."""
    n = len(values)
    return {
        "n": n,
        "mean": statistics.fmean(values) if n else None,
        "std": statistics.stdev(values) if n >= 2 else None,
    }


def groups(runs: Sequence[JobRun], differing: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Jobs grouped by kind and every param but the seed; per metric n, mean, sample std over succeeded jobs."""
    shown = [k for k in differing if not is_seed(k)]
    by: dict[str, dict[str, Any]] = {}
    for i, run in enumerate(runs):
        flat = {k: v for k, v in {"kind": run.kind, **flatten(run.params)}.items() if not is_seed(k)}
        g = by.setdefault(
            _key(flat), {"params": {k: differing[k][i] for k in shown}, "kind": run.kind, "job_ids": [], "seeds": [],
                         "runs": []},
        )  # fmt: skip
        g["job_ids"].append(run.id)
        g["seeds"].append(next((v for k, v in flatten(run.params).items() if is_seed(k)), None))
        if run.status == "succeeded":
            g["runs"].append(run)
    out = []
    for g in by.values():
        finals = [final_metrics(r.metrics, r.result) for r in g.pop("runs")]
        names = sorted({k for f in finals for k in f})
        metrics = {}
        for name in names:
            values = [v for f in finals if (v := f.get(name)) is not None]
            metrics[name] = stats(values)
        out.append({**g, "n": len(finals), "metrics": metrics})
    return out


def comparison(runs: Sequence[JobRun]) -> dict[str, Any]:
    """The whole comparison of `runs` (in the caller's order)."""
    differing, same = params_diff(runs)
    jobs: list[dict[str, Any]] = [
        {
            "id": r.id,
            "kind": r.kind,
            "name": r.name,
            "status": r.status,
            "tags": r.tags,
            "params": flatten(r.params),
            "final": final_metrics(r.metrics, r.result),
            "series": r.series,
            "plots": r.plots,
        }
        for r in runs
    ]
    names = {k for j in jobs for k in j["final"]} | {k for j in jobs for k in j["series"]}
    return {
        "job_ids": [r.id for r in runs],
        "jobs": jobs,
        "params_diff": differing,
        "params_same": same,
        "metric_names": sorted(names),
        "groups": groups(runs, differing),
        "group_by": "kind and every param except any named 'seed'",
        "std": "sample (n - 1); null when n < 2; over succeeded jobs only",
    }


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return _key(value)
    return value


def jobs_csv(data: dict[str, Any]) -> str:
    """One row per job: id, name, kind, status, each differing param, each final metric."""
    params = list(data["params_diff"])
    metrics = sorted({k for j in data["jobs"] for k in j["final"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "name", "kind", "status", *(f"param.{p}" for p in params), *(f"metric.{m}" for m in metrics)])
    for i, j in enumerate(data["jobs"]):
        values = [_cell(data["params_diff"][p][i]) for p in params] + [_cell(j["final"].get(m)) for m in metrics]
        w.writerow([j["id"], _cell(j["name"]), j["kind"], j["status"], *values])
    return buf.getvalue()


def groups_csv(data: dict[str, Any]) -> str:
    """One row per group: its params, n, and mean, std, n of each metric."""
    params = [p for p in data["params_diff"] if not is_seed(p)]
    metrics = sorted({m for g in data["groups"] for m in g["metrics"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["kind", *(f"param.{p}" for p in params), "n", "seeds", "job_ids"]
    for m in metrics:
        header += [f"{m}.mean", f"{m}.std", f"{m}.n"]
    w.writerow(header)
    for g in data["groups"]:
        row = [g["kind"], *(_cell(g["params"].get(p)) for p in params), g["n"], _key(g["seeds"])]
        row.append(" ".join(g["job_ids"]))
        for m in metrics:
            s = g["metrics"].get(m, {})
            row += [_cell(s.get("mean")), _cell(s.get("std")), s.get("n", 0)]
        w.writerow(row)
    return buf.getvalue()
