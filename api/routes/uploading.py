"""What the dataset and model upload routes share: a scratch folder per upload and the multipart docs."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from jobs.settings import Settings


@asynccontextmanager
async def upload_dir(settings: Settings) -> AsyncIterator[Path]:
    """A fresh folder under `home/uploads` (not /tmp, often a small tmpfs), removed afterwards."""
    root = (settings.home / "uploads").resolve()
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=root))
    try:
        yield path
    finally:
        # Many extracted files: remove them off the event loop.
        await run_in_threadpool(shutil.rmtree, path, True)


def multipart_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """OpenAPI for a multipart body the handler parses itself (so /docs still shows the form)."""
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
