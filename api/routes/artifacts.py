"""A job's artifacts: the list, and each file (a presigned redirect on S3, streamed from a local store)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Path
from fastapi.responses import RedirectResponse, StreamingResponse
from sqlalchemy import select
from starlette.responses import Response

from api.deps import JobDep, SessionDep, SettingsDep, StoreDep
from api.errors import NotFound
from api.routes import keyed_router
from api.schemas import ArtifactPublic
from jobs.models import Artifact

router = keyed_router("/jobs", "artifacts")


def content_disposition(filename: str) -> str:
    """An `attachment` header value that survives any characters in `filename` (RFC 6266)."""
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.get("/{job_id}/artifacts", response_model=list[ArtifactPublic])
def list_artifacts(job: JobDep, session: SessionDep) -> list[Artifact]:
    """A job's artifacts (name, size, sha256, content type), by name."""
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.name)))


@router.get(
    "/{job_id}/artifacts/{name:path}",
    response_class=Response,
    responses={
        200: {"description": "The file (local store).", "content": {"application/octet-stream": {}}},
        307: {"description": "Redirect to a presigned S3 URL."},
    },
)
def download_artifact(
    job: JobDep,
    name: Annotated[str, Path(description="The artifact's name, e.g. `previews/step.png`.")],
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> Response:
    """Download one artifact: a 307 to a presigned URL, or the bytes when the store is local."""
    art = session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name))
    if art is None:
        raise NotFound("artifact", name[:200])
    filename = name.rsplit("/", 1)[-1]
    url = store.presigned_get(art.key, settings.presign_seconds, filename)
    if url is not None:
        return RedirectResponse(url, status_code=307)
    size = store.size(art.key)  # raises ObjectMissing (404) before any byte is sent
    stream = store.open_stream(art.key)
    headers = {"Content-Length": str(size), "Content-Disposition": content_disposition(filename)}
    return StreamingResponse(stream, media_type=art.content_type, headers=headers)
