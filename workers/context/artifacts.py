"""Artifacts: files a job stores under `jobs/{id}/`, each with its row, and the live previews."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from jobs.models import Artifact, new_id
from jobs.states import utcnow
from jobs.store import join_key
from workers.context.base import ContextBase

log = logging.getLogger(__name__)


class Artifacts(ContextBase):
    """Store a job's results and previews where the API serves them from."""

    def put_artifact(self, name: str, data: bytes | Path, content_type: str = "application/octet-stream") -> Artifact:
        """Store an artifact under `jobs/{id}/{name}` and record it (replacing one of the same name).

        While writes are held (`hold_writes`) the row is recorded with the job's end, and the row
        returned is not in the database yet.
        """
        key = join_key(f"jobs/{self.job_id}", name)
        if isinstance(data, Path):
            obj = self.store.put_file(key, data, content_type)
        else:
            obj = self.store.put_bytes(key, data, content_type)

        values = {"id": new_id(), "job_id": self.job_id, "name": name, "key": key, "size": obj.size,
                  "sha256": obj.sha256, "content_type": content_type, "created_at": utcnow()}  # fmt: skip

        def record(s: Session) -> Artifact:
            # One statement, not a DELETE and an INSERT: a row of the same name (an earlier attempt's,
            # a preview's last frame) is replaced in place by the new one, id and all.
            insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
            stmt = insert(Artifact).values(**values)
            replaced = {c: stmt.excluded[c] for c in values if c not in ("job_id", "name")}
            s.execute(stmt.on_conflict_do_update(index_elements=["job_id", "name"], set_=replaced))
            return Artifact(**values)

        if self._hold(record):
            return Artifact(**values)  # recorded with the job's end (`hold_writes`)
        return self._write(record)

    def preview(self, name: str, png: bytes) -> None:
        """Replace the live preview `previews/{name}.png`; the dashboard shows the newest."""
        try:
            self.put_artifact(f"previews/{name}.png", png, "image/png")
        except Exception:
            log.exception("preview of job %s failed (the job goes on)", self.job_id)
