"""References from a job's params to stored objects: `job:`, `model:`, `dataset:`, `builtin:`.

One regex per kind of reference, one parser (`parse_ref`), one ownership check against the
database (`resolve_ref`), and `check_params_refs`, which finds every reference anywhere in a kind's
params and checks them all. `POST /jobs` and `POST /verify` call it before a job is stored, so a
reference to another key's object (or to none) answers 404 up front instead of a 201 and a job that
fails on the worker; the worker checks again when it opens the object (a row can go away between
submit and run).

    job:<id>[/<artifact>]     a job of the caller's (its artifacts: a trained model)
    model:<id>                an uploaded model of the caller's
    dataset:<id>[/<path>]     an uploaded dataset of the caller's (optionally one file in it)
    builtin:digits|mnist      a dataset shipped with the platform (no owner)

Other strings (`facenet:vggface2`, `input:image_a`, free text) are not references and are left alone.
Pydantic and SQLAlchemy only: the API imports this module and must not import torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.dataset_status import is_ready
from jobs.models import Dataset, Job, Model

RefKind = Literal["job", "model", "dataset", "builtin"]
# Ids are what `new_id` makes (hex); params patterns also allow '.', '_' and '-', never a leading dot.
_ID = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}"
JOB_REF = re.compile(rf"^job:(?P<id>{_ID})(?:/(?P<path>[^\x00-\x1f]+))?$")
MODEL_REF = re.compile(rf"^model:(?P<id>{_ID})$")
DATASET_REF = re.compile(rf"^dataset:(?P<id>{_ID})(?:/(?P<path>[^\x00-\x1f]+))?$")
BUILTIN_DATASETS = ("digits", "mnist")
BUILTIN_REF = re.compile(rf"^builtin:(?P<id>{'|'.join(BUILTIN_DATASETS)})$")
PATTERNS: dict[RefKind, re.Pattern[str]] = {
    "job": JOB_REF,
    "model": MODEL_REF,
    "dataset": DATASET_REF,
    "builtin": BUILTIN_REF,
}


def ref_pattern(*kinds: RefKind, also: tuple[str, ...] = ()) -> str:
    """A params field's `pattern=`: a reference of one of `kinds` (an id, no path) or a literal of `also`.

    Built from the parsers' id rule, so a string a params model accepts is one `parse_ref` reads.

    Args:
        kinds: the kinds of reference the field takes ("builtin" is one of `BUILTIN_DATASETS`).
        also: further values the field takes, plain names (e.g. "facenet:vggface2"), not escaped so the
            schema's pattern stays readable.
    """
    alternatives = list(also)
    alternatives += ["builtin:(" + "|".join(BUILTIN_DATASETS) + ")" if k == "builtin" else f"{k}:{_ID}" for k in kinds]
    return "^(" + "|".join(alternatives) + ")$"


# Every params model takes its reference fields' patterns from here, one definition each.
DATASET_REF_PATTERN = ref_pattern("builtin", "dataset")
MODEL_REF_PATTERN = ref_pattern("job", "model")
WEIGHTS_REF_PATTERN = ref_pattern("model")
JOB_REF_PATTERN = ref_pattern("job")
# A file inside a caller's dataset ("dataset:<id>/<key>"): the dataset ref, then the key.
DATASET_FILE = re.compile(rf"^(dataset:{_ID})/(.+)$")
# What each kind of object is called in a "not found" message.
NOUNS: dict[RefKind, str] = {"job": "job", "model": "model", "dataset": "dataset", "builtin": "builtin dataset"}


@dataclass(frozen=True)
class Ref:
    """A parsed reference: its kind, the object's id and, for `job:` and `dataset:`, a path inside it."""

    kind: RefKind
    id: str
    path: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}" + (f"/{self.path}" if self.path else "")


class RefNotFound(LookupError):
    """The reference names no object of this owner (another owner's reads the same); answered 404."""

    def __init__(self, ref: Ref, what: str | None = None) -> None:
        self.ref = ref
        self.what = what or NOUNS[ref.kind]
        self.ident = ref.id
        super().__init__(f"{self.what} {ref.id} not found")


class RefPathNotFound(RefNotFound):
    """The object exists and is the caller's, but holds no file at the reference's path."""

    def __init__(self, ref: Ref) -> None:
        super().__init__(ref)
        self.args = (f"{NOUNS[ref.kind]} {ref.id} has no file {ref.path!r}",)


def parse_ref(text: str) -> Ref | None:
    """The reference `text` is, or None when it is not one (no `job:`/`model:`/`dataset:`/`builtin:` shape)."""
    for kind, pattern in PATTERNS.items():
        m = pattern.match(text)
        if m is not None:
            return Ref(kind, m.group("id"), m.groupdict().get("path"))
    return None


def find_refs(params: Any, where: str = "") -> Iterator[tuple[str, Ref]]:
    """(field path, ref) of every string anywhere in `params` (nested dicts and lists) that is a reference."""
    if isinstance(params, str):
        ref = parse_ref(params)
        if ref is not None:
            yield where, ref
    elif isinstance(params, dict):
        for key, value in params.items():
            yield from find_refs(value, f"{where}.{key}" if where else str(key))
    elif isinstance(params, list | tuple):
        for i, value in enumerate(params):
            yield from find_refs(value, f"{where}[{i}]")


def resolve_ref(session: Session, owner_id: str, ref: Ref) -> Job | Model | Dataset | None:
    """The row `ref` names if `owner_id` owns it (None for a builtin dataset); else `RefNotFound`."""
    row: Job | Model | Dataset | None
    if ref.kind == "builtin":
        return None
    if ref.kind == "job":
        row = session.scalar(select(Job).where(Job.id == ref.id, Job.owner_id == owner_id))
    elif ref.kind == "model":
        row = session.scalar(select(Model).where(Model.id == ref.id, Model.owner_id == owner_id))
    else:
        row = session.scalar(select(Dataset).where(Dataset.id == ref.id, Dataset.owner_id == owner_id))
    if row is None:
        raise RefNotFound(ref)
    if isinstance(row, Dataset) and not is_ready(row.files):
        raise RefNotFound(ref, "ready dataset")  # an upload not yet ingested (or failed) is no dataset yet
    if isinstance(row, Dataset) and ref.path is not None and ref.path not in set(row.files.get("keys", [])):
        raise RefPathNotFound(ref)
    return row


def check_params_refs(session: Session, owner_id: str, params: Any) -> dict[str, Job | Model | Dataset | None]:
    """Check every reference in `params` against `owner_id`; field path -> the row it names.

    Raises:
        RefNotFound: the first reference naming no object of this owner.
    """
    return {where: resolve_ref(session, owner_id, ref) for where, ref in find_refs(params)}
