"""What the Verify, Search and dataset page tests share: the ORL model as an evaluated job of a key,
ORL images as files a browser can show, and the uploads every page must refuse clearly."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from jobs.models import Job
from tests.support.faces import register_model
from tests.support.factories import bomb_png
from tests.support.services import Stack

# The result keys a train_embedding job copies from its metrics (workers.runners.embedding.SUMMARY_KEYS).
SUMMARY_KEYS = ("auc", "accuracy", "accuracy_std", "threshold", "num_pairs", "num_identities", "num_images")


def register_evaluated_model(stack: Stack, folder: Path, key: str | None = None) -> str:
    """`register_model`, with the job's result holding its evaluation as a real train_embedding job's
    does (the Verify page lists only models with one); the job's id."""
    job_id = register_model(stack, folder, key)
    metrics = json.loads((folder / "metrics.json").read_text())
    with stack.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.result = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
    return job_id


def as_png(source: Path, dest: Path) -> Path:
    """An ORL image (PGM, which no browser shows) saved as PNG, its pixels unchanged."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as im:
        im.save(dest, "PNG")
    return dest


def refused_uploads(folder: Path) -> dict[str, Path]:
    """A photo with no face (flat grey), a corrupt file and a decompression bomb, as files."""
    folder.mkdir(parents=True, exist_ok=True)
    blank = io.BytesIO()
    Image.new("L", (92, 112), 128).save(blank, "PNG")
    files = {
        "no_face": blank.getvalue(),
        "corrupt": b"\x89PNG\r\n\x1a\n this is not the rest of a PNG",
        "bomb": bomb_png(),
    }
    out = {}
    for name, data in files.items():
        (folder / f"{name}.png").write_bytes(data)
        out[name] = folder / f"{name}.png"
    return out
