"""Where the browser can fetch an artifact from, without sending the API key anywhere but the API.

`GET /jobs/{id}/artifacts/{name}` answers a 307 to a presigned S3 URL. A browser `fetch` that sends
`X-API-Key` would follow it to the object store with the key still attached, and the store would
have to answer a CORS preflight for that header. Instead the dashboard asks here first: on S3 it
gets the presigned URL itself and uses it as an `<img src>` or a download link (no key, no CORS);
on the local store it gets `null` and fetches the API route with the key into a blob URL.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import JobDep, SessionDep, SettingsDep, StoreDep
from api.errors import NotFound
from jobs.models import Artifact

router = APIRouter(prefix="/ui/links")


class ArtifactLink(BaseModel):
    """A URL the browser may open without the key, or null: fetch the API route with the key instead."""

    url: str | None = Field(description="A presigned URL of the object store, or null (local store).")
    sha256: str


@router.get("/jobs/{job_id}/artifacts/{name:path}", response_model=ArtifactLink)
def read_artifact_link(
    job: JobDep,
    name: Annotated[str, Path(max_length=512)],
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> ArtifactLink:
    """A presigned URL of one of the caller's artifacts (null when the store is a local folder)."""
    art = session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name))
    if art is None:
        raise NotFound("artifact", name[:200])
    filename = name.rsplit("/", 1)[-1]
    return ArtifactLink(url=store.presigned_get(art.key, settings.presign_seconds, filename), sha256=art.sha256)
