"""Rows and artifacts the dashboard tests put in place: jobs as a worker leaves them, written the same way.

A running job here is a `Job` row with its status and progress events, and artifacts stored under
`jobs/{id}/{name}` plus their `Artifact` row, exactly what `workers.context.JobContext` writes; so
the dashboard can be checked against known numbers without waiting for a real training run.
"""

from __future__ import annotations

import io
import math
from datetime import datetime, timedelta
from typing import Any

from PIL import Image
from sqlalchemy import delete

from jobs.keys import lookup_key
from jobs.models import Artifact, JobEvent
from jobs.states import JobStatus, utcnow
from jobs.store import join_key
from tests.support.factories import job_row
from tests.support.services import Stack


def owner_id(stack: Stack, key: str | None = None) -> str:
    with stack.session() as s:
        row = lookup_key(s, key or stack.key, stack.settings)
        if row is None:
            raise LookupError("the stack's key is not in its database")
        return row.id


def add_job(stack: Stack, kind: str = "probe", status: JobStatus = JobStatus.QUEUED, key: str | None = None,
            **values: Any) -> str:  # fmt: skip
    """A job row of the stack's key (or `key`), with a `queued` status event at its creation."""
    # updated_at is now even for a row dated in the past (created_at in `values`), as the dashboard shows it.
    job = job_row(owner_id(stack, key), kind, status, **{"updated_at": utcnow(), **values})
    with stack.session() as s:
        s.add(job)
        s.flush()
        s.add(JobEvent(job_id=job.id, attempt=0, type="status", message="queued", created_at=job.created_at))
    return str(job.id)


def add_events(stack: Stack, job_id: str, events: list[dict[str, Any]]) -> None:
    with stack.session() as s:
        s.add_all(JobEvent(job_id=job_id, **e) for e in events)


def progress_events(attempt: int, start: datetime, steps: range, total: int, seconds_per_step: float,
                    metrics: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    """Progress events at `steps`, each metric a function of the step."""
    return [
        {"attempt": attempt, "type": "progress", "created_at": start + timedelta(seconds=i * seconds_per_step),
         "data": {"step": step, "total": total, **{k: float(f(step)) for k, f in metrics.items()}}}
        for i, step in enumerate(steps)
    ]  # fmt: skip


def put_artifact(stack: Stack, job_id: str, name: str, data: bytes, content_type: str) -> None:
    """Store `data` as the job's artifact `name`, replacing one of that name (as `ctx.put_artifact`)."""
    key = join_key(f"jobs/{job_id}", name)
    obj = stack.store.put_bytes(key, data, content_type)
    with stack.session() as s:
        s.execute(delete(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))
        s.add(Artifact(job_id=job_id, name=name, key=key, size=obj.size, sha256=obj.sha256, content_type=content_type))


def solid_png(rgb: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def grid_png(step: int, cells: int = 4, cell: int = 32) -> bytes:
    """A preview-like grid of smooth blobs whose phase moves with `step` (what an inversion preview looks like)."""
    side = cells * cell
    img = Image.new("L", (side, side))
    px = img.load()
    for y in range(side):
        for x in range(side):
            cx, cy = (x % cell) - cell / 2, (y % cell) - cell / 2
            r = math.hypot(cx, cy) / (cell / 2)
            px[x, y] = int(127 + 120 * math.cos(3 * r + step / 400 + (x // cell + y // cell)) * max(0.0, 1 - r * 0.8))
    buf = io.BytesIO()
    img.convert("RGB").resize((side * 2, side * 2), Image.Resampling.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def curve_png(title: str, values: list[float]) -> bytes:
    """A small matplotlib line plot, like the plots the ML runners save (loss.png, roc.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 2.6), dpi=80)
    ax.plot(values)
    ax.set_title(title)
    ax.set_xlabel("step / 250")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def invert_like_job(stack: Stack, step: int = 6000, total: int = 20000, seconds_per_step: float = 0.05,
                    every: int = 250) -> str:  # fmt: skip
    """A running `invert`-like job at `step` of `total`: loss and accuracy recorded every `every` steps."""
    now = utcnow()
    n = step // every
    started = now - timedelta(seconds=n * every * seconds_per_step + 5)
    job_id = add_job(
        stack, kind="invert", status=JobStatus.RUNNING, attempt=1, started_at=started,
        created_at=started - timedelta(seconds=40),
        progress_step=step, progress_total=total, lease_owner="gpu0@node-a/4242", checkpoint_step=step - step % 500,
        params={"model": "job:5f0c", "classes": [0, 1, 2, 3], "iterations": total, "lr": 0.1, "lambda_bn": 0.05},
        metrics={"loss": 1.0 + 9.0 * math.exp(-step / 3000), "accuracy": min(1.0, step / 8000)},
    )  # fmt: skip
    add_events(stack, job_id, [{"attempt": 1, "type": "status", "message": "running on gpu0@node-a/4242 (attempt 1)",
                                "created_at": started}])  # fmt: skip
    add_events(stack, job_id, progress_events(
        1, started + timedelta(seconds=1), range(every, step + 1, every), total, every * seconds_per_step,
        {"loss": lambda s: 1.0 + 9.0 * math.exp(-s / 3000), "loss_bn": lambda s: 4.0 * math.exp(-s / 1500) + 0.2,
         "accuracy": lambda s: min(1.0, s / 8000)},
    ))  # fmt: skip
    add_events(stack, job_id, [{"attempt": 1, "type": "log", "message": f"step {s}: checkpoint saved",
                                "created_at": started + timedelta(seconds=s * seconds_per_step)}
                               for s in range(500, step + 1, 500)])  # fmt: skip
    return job_id
