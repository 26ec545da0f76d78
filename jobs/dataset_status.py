"""A dataset's upload status, kept in `Dataset.files["status"]` (no column, no migration).

A dataset made in one step (`POST /datasets`, a job's `add_dataset`) has no status and is ready. One
uploaded in parts (`POST /datasets/uploads`) goes `uploading` -> `uploaded` (parts joined, its
`ingest` job queued) -> `ingesting` -> `ready`, or `failed` (the reason in `files["error"]`, nothing
under its prefix). Jobs and refs accept only a ready dataset.
"""

from __future__ import annotations

from typing import Any

READY = "ready"
UPLOADING, UPLOADED, INGESTING, FAILED = "uploading", "uploaded", "ingesting", "failed"


def status_of(files: dict[str, Any] | None) -> str:
    return str((files or {}).get("status", READY))


def is_ready(files: dict[str, Any] | None) -> bool:
    return status_of(files) == READY
