"""Models: upload weights (a TorchScript generator, FaceNet or backbone weights), list, read."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import CurrentKey, ModelDep, SessionDep, SettingsDep, StoreDep
from api.errors import ApiError
from api.ingest import MODEL_KINDS, ingest_model
from api.pagination import check_limit, keyset, page
from api.routes import keyed_router
from api.routes.uploading import multipart_body, upload_dir
from api.schemas import ErrorBody, ModelPublic, ModelsPage
from api.uploads import receive_multipart
from jobs.models import Model

router = keyed_router("/models", "models")
FORM = multipart_body(
    {
        "file": {"type": "string", "format": "binary"},
        "kind": {"type": "string", "enum": list(MODEL_KINDS)},
        "name": {"type": "string", "maxLength": 200},
        "meta": {"type": "string", "description": "A JSON object stored with the model."},
        "input_size": {"type": "string", "description": 'onnx: the input "height,width" (e.g. "112,112").'},
        "channels": {"type": "integer", "enum": [1, 3], "description": "onnx: input channels (default 3)."},
        "normalize": {"type": "string", "enum": ["arcface", "facenet", "unit"], "description": "onnx: a preset"},
        "mean": {"type": "string", "description": "onnx, instead of normalize: mean(s) of [0, 1] pixels."},
        "std": {"type": "string", "description": "onnx, instead of normalize: std(s)."},
        "threshold": {"type": "number", "description": "onnx: its cosine-similarity threshold, if evaluated."},
        "align_size": {"type": "integer", "enum": [112, 160], "description": "onnx: the aligned crop side."},
    },
    ["file", "kind"],
)


@router.post(
    "",
    status_code=201,
    response_model=ModelPublic,
    openapi_extra=FORM,
    responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def create_model(
    request: Request, key: CurrentKey, session: SessionDep, settings: SettingsDep, store: StoreDep
) -> Model:
    """Upload a model file; a generator must be TorchScript of pure tensor operations (checked without torch).

    Kind `onnx` is an embedding model (insightface's packs, or an `export` job's backbone.onnx):
    declare `input_size`, `channels` and `normalize` (or `mean` and `std`); it is refused (400,
    nothing stored) when its graph's input disagrees, it uses a custom operator domain or external
    data, or a probe batch fails in onnxruntime (run here, on the CPU, one thread).
    """
    # End the key check's read transaction: no pooled connection is held while the body streams in.
    session.commit()
    async with upload_dir(settings) as workdir:
        form = await receive_multipart(request, workdir, settings.max_upload_bytes, {"file"})
        upload = form.files.get("file")
        if upload is None:
            raise ApiError(422, "missing_file", "send the model in the form field 'file'")
        return await run_in_threadpool(ingest_model, session, store, key, upload, form.fields)


@router.get("", response_model=ModelsPage)
def list_models(
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1)] = 50,
) -> ModelsPage:
    """The caller's models, newest first."""
    check_limit(limit, settings.page_size_max)
    stmt = select(Model).where(Model.owner_id == key.id)
    rows = session.scalars(keyset(stmt, Model.created_at, Model.id, cursor, limit)).all()
    data, next_cursor = page(rows, limit)
    return ModelsPage(data=[ModelPublic.model_validate(m) for m in data], next_cursor=next_cursor)


@router.get("/{model_id}", response_model=ModelPublic)
def read_model(model: ModelDep) -> Model:
    """One model: kind, file name, size, sha256, meta and its `model:<id>` reference."""
    return model
