"""Row factories for the platform tests."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.orm import Session

from jobs.models import ApiKey, Job


def make_key(s: Session, name: str = "k") -> ApiKey:
    key = ApiKey(name=name, prefix=secrets.token_hex(4), key_hash=secrets.token_hex(32))
    s.add(key)
    s.flush()
    return key


def make_job(s: Session, owner: ApiKey, kind: str = "probe", **values: Any) -> Job:
    job = Job(kind=kind, params=values.pop("params", {"matmul_size": 64}), queue="gpu", owner_id=owner.id, **values)
    s.add(job)
    s.flush()
    return job
