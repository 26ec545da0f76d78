"""Row factories for the platform tests."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy.orm import Session

from jobs.models import ApiKey, Job

# Params of a `train_embedding` job that makes a tiny ArcFace model in seconds on a CPU worker
# (se_resnet18 at base width 4, sklearn's digits at 16x16, one epoch): what the end-to-end tests
# of `invert` (platform, fault and browser) invert as `job:<id>`.
TINY_ARCFACE: dict[str, Any] = {
    "dataset": "builtin:digits",
    "backbone": "se_resnet18",
    "base_width": 4,
    "embedding_size": 32,
    "image_size": 16,
    "epochs": 1,
    "batch_size": 64,
    "split_by": "sample",
    "max_pairs": 100,
    "folds": 2,
    "seed": 0,
}


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
