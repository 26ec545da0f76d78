"""Turning a received upload into stored objects plus one row, all or nothing.

Objects are written first and the row is committed last, so a row always points at complete
objects; if any write or the commit fails, every object written for this upload is deleted and the
caller gets 503 (the store or database is the one at fault, not the upload).
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from api.archives import extract_dataset
from api.errors import ApiError
from api.schemas import DatasetCreated, DatasetPublic
from api.uploads import ReceivedFile, safe_filename
from api.zipdir import TooManyEntries, ZipDirectoryError, check_zip_directory
from jobs.errors import TransientError
from jobs.models import ApiKey, Dataset, Model, new_id
from jobs.onnx_file import OnnxUploadError, check_onnx_upload
from jobs.settings import Settings
from jobs.states import utcnow
from jobs.store import Store, StoredObject, join_key
from jobs.torchscript_check import NotTorchScriptError, UnsafeTorchScriptError, check_torchscript_archive
from jobs.weights_file import WeightsFileError, check_weights_file

log = logging.getLogger(__name__)
PUT_THREADS = 8
MODEL_KINDS = ("generator", "facenet", "backbone", "onnx")
MAX_REFUSED_SHOWN = 50
WEIGHT_KINDS = ("facenet", "backbone")  # state dicts, checked as data (a generator is TorchScript)
MAX_MODEL_ENTRIES = 100_000  # a model archive holds a few hundred tensors; TorchScript's check caps entries too
MAX_META_DEPTH = 32  # levels of nested lists/objects in a model's `meta`


class StoreUnavailable(ApiError):
    def __init__(self, what: str) -> None:
        super().__init__(503, "store_unavailable", f"could not store the {what}; nothing was kept, try again")


def clean_name(raw: str | None, default: str) -> str:
    """A display name: control characters removed, 1..200 characters, else `invalid_name` (422)."""
    name = "".join(c for c in (raw or "") if c.isprintable()).strip() or default
    if len(name) > 200:
        raise ApiError(422, "invalid_name", "a name is at most 200 characters")
    return name


def delete_quietly(store: Store, keys: Iterable[str]) -> None:
    for key in keys:
        try:
            store.delete(key)
        except Exception:
            log.exception("could not delete %s while undoing a failed upload", key)


def put_all(store: Store, items: list[tuple[str, Path, str]], what: str) -> list[StoredObject]:
    """Write every (key, file, content type); on any failure delete them all and raise `StoreUnavailable`."""
    try:
        with ThreadPoolExecutor(max_workers=PUT_THREADS) as pool:
            return list(pool.map(lambda item: store.put_file(*item), items))
    except Exception as exc:
        if not isinstance(exc, TransientError | OSError):
            log.exception("storing the %s failed", what)
        else:
            log.warning("storing the %s failed: %s", what, exc)
        delete_quietly(store, (key for key, _, _ in items))
        raise StoreUnavailable(what) from None


def commit_or_undo(session: Session, store: Store, keys: list[str]) -> None:
    """Commit; if the database refuses, delete the objects just written and re-raise (503 handler)."""
    try:
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        delete_quietly(store, keys)
        raise


def ingest_dataset(
    session: Session, store: Store, settings: Settings, key: ApiKey, upload: ReceivedFile, name: str, workdir: Path
) -> DatasetCreated:
    """Validate the archive, store its images under `datasets/{id}/` and create the Dataset row."""
    content = extract_dataset(upload.path, upload.filename, workdir / "extracted", settings)
    ds_id = new_id()
    prefix = f"datasets/{ds_id}"
    items = [(join_key(prefix, img.rel), img.path, img.content_type) for img in content.images]
    put_all(store, items, "dataset")
    keys = [k for k, _, _ in items]
    ds = Dataset(
        id=ds_id,
        owner_id=key.id,
        name=name,
        key_prefix=prefix,
        num_files=len(content.images),
        num_identities=content.num_identities,
        size_bytes=content.size_bytes,
        layout=content.layout,
        files={"keys": [img.rel for img in content.images]},
        created_at=utcnow(),
    )
    session.add(ds)
    commit_or_undo(session, store, keys)
    public = DatasetPublic.model_validate(ds)
    return DatasetCreated(**public.model_dump(exclude={"ref"}), skipped=content.skipped)


def check_model_zip_directory(path: Path) -> None:
    """Refuse a zip-format model listing over `MAX_MODEL_ENTRIES` entries (400 `too_many_members`)
    before `zipfile` builds an object per entry; a model file that is no zip passes to its kind's check."""
    if not zipfile.is_zipfile(path):
        return
    try:
        check_zip_directory(path, MAX_MODEL_ENTRIES)
    except TooManyEntries as exc:
        raise ApiError(
            400,
            "too_many_members",
            f"the model archive lists {exc.count} entries, more than {MAX_MODEL_ENTRIES}",
            {"limit": MAX_MODEL_ENTRIES},
        ) from None
    except ZipDirectoryError as exc:
        raise ApiError(400, "corrupt_archive", f"the model archive cannot be read: {exc}") from None


def check_generator_upload(path: Path) -> None:
    """Refuse a generator that is not TorchScript (400 `not_torchscript`) or could do more than
    compute on tensors (400 `unsafe_torchscript`, naming each refused operation); torch is not imported.
    """
    try:
        check_torchscript_archive(path)
    except NotTorchScriptError:
        raise ApiError(
            400,
            "not_torchscript",
            "not a TorchScript archive: save the generator with torch.jit.save(torch.jit.script(model), path)",
        ) from None
    except UnsafeTorchScriptError as exc:
        raise ApiError(400, "unsafe_torchscript", str(exc), {"refused": exc.refused[:MAX_REFUSED_SHOWN]}) from None


def _depth(value: Any) -> int:
    """How deeply `value` nests lists and objects, walked without recursion (a scalar is 0)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_META_DEPTH:  # deeper than the limit is refused anyway: stop walking
            stack.extend((child, level + 1) for child in children)
    return deepest


def _too_deep() -> ApiError:
    message = f"meta nests too deeply: at most {MAX_META_DEPTH} levels of lists and objects"
    return ApiError(422, "invalid_meta", message, {"max_depth": MAX_META_DEPTH})


def parse_meta(raw: str | None) -> dict[str, Any]:
    """The `meta` form field: a JSON object nesting at most `MAX_META_DEPTH` levels, else 422 `invalid_meta`."""
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_meta", f"meta must be a JSON object: {exc}") from None
    except RecursionError:
        # json's C decoder recurses once per `[`/`{`: thousands of them exhaust the stack.
        raise _too_deep() from None
    if not isinstance(meta, dict):
        raise ApiError(422, "invalid_meta", "meta must be a JSON object")
    if _depth(meta) > MAX_META_DEPTH:
        # Stored as JSON and encoded again on every read: refuse depths that would recurse there too.
        raise _too_deep()
    return meta


def check_weights_upload(path: Path, kind: str, filename: str) -> None:
    """400 unless `path` is plain tensor data laid out as the worker's loader of `kind` reads it.

    The file is read as data (`jobs.weights_file`: torch is not imported and nothing in it runs);
    the worker reads it again with `weights_only=True` and checks every tensor against the network.
    """
    try:
        check_weights_file(path, kind, filename)
    except WeightsFileError as exc:
        raise ApiError(400, exc.code, str(exc)) from None


def check_onnx_model_upload(path: Path, filename: str, fields: dict[str, str]) -> dict[str, Any]:
    """400 (or 422 for the declaration) unless `path` is a self-contained, standard-operator ONNX
    embedding model taking the declared input; its declared and probed meta (`jobs.onnx_file`)."""
    try:
        return check_onnx_upload(path.read_bytes(), filename, fields)
    except OnnxUploadError as exc:
        status = 422 if exc.code == "invalid_declaration" else 400
        raise ApiError(status, exc.code, str(exc)) from None


def ingest_model(session: Session, store: Store, key: ApiKey, upload: ReceivedFile, fields: dict[str, str]) -> Model:
    """Check the model file, store it under `models/{id}/{filename}` and create the Model row."""
    kind = fields.get("kind", "")
    if kind not in MODEL_KINDS:
        raise ApiError(
            422,
            "invalid_model_kind",
            f"kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}",
            {"allowed": list(MODEL_KINDS)},
        )
    meta = parse_meta(fields.get("meta"))
    filename = safe_filename(upload.filename, default="model.bin")
    name = clean_name(fields.get("name"), Path(filename).stem or "model")
    check_model_zip_directory(upload.path)
    if kind == "generator":
        check_generator_upload(upload.path)
    if kind in WEIGHT_KINDS:
        check_weights_upload(upload.path, kind, filename)
    if kind == "onnx":
        meta = {**meta, **check_onnx_model_upload(upload.path, filename, fields)}
    model_id = new_id()
    object_key = join_key(f"models/{model_id}", filename)
    (stored,) = put_all(store, [(object_key, upload.path, "application/octet-stream")], "model")
    model = Model(
        id=model_id,
        owner_id=key.id,
        name=name,
        kind=kind,
        key=object_key,
        filename=filename,
        size=stored.size,
        sha256=stored.sha256,
        meta=meta,
        created_at=utcnow(),
    )
    session.add(model)
    commit_or_undo(session, store, [object_key])
    return model
