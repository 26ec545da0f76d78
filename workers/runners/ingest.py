"""The `ingest` kind: a completed multipart upload checked as `POST /datasets` checks an archive
(api/archives.py, the same code), its files stored under the dataset's prefix, the dataset marked ready.

Per-image failures (undecodable, over the pixel limit) are skipped and listed in the `failures.csv`
artifact; a refusal of the archive itself (corrupt, unsafe paths, too large, nothing to train on)
fails the job with the dataset `failed` and nothing under its prefix. The uploaded archive object is
deleted either way.
"""

from __future__ import annotations

import csv
import io
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.params.ingest import IngestParams
from workers.runners import params_as

if TYPE_CHECKING:
    from workers.context import JobContext

PUT_THREADS = 8


def _row_update(ctx: JobContext, ds_id: str, **values: Any) -> dict[str, Any]:
    from jobs.db import session_scope
    from jobs.errors import JobInputError
    from jobs.models import Dataset

    with session_scope(ctx._db) as s:
        ds = s.get(Dataset, ds_id)
        if ds is None or ds.owner_id != ctx.owner_id:
            raise JobInputError(f"dataset {ds_id} not found")
        files = dict(ds.files or {})
        for name, value in values.items():
            if name == "files":
                files = value
            else:
                setattr(ds, name, value)
        ds.files = files
        return dict(files)


def _store_all(ctx: JobContext, prefix: str, items: list[tuple[str, Path, str]]) -> None:
    from jobs.store import join_key

    done, total = 0, len(items)
    with ThreadPoolExecutor(max_workers=PUT_THREADS) as pool:
        futures = [pool.submit(ctx.store.put_file, join_key(prefix, rel), path, ctype) for rel, path, ctype in items]
        for f in as_completed(futures):
            f.result()
            done += 1
            ctx.progress(total + done, 2 * total)  # validating was the first half


def run_ingest(ctx: JobContext) -> dict[str, Any]:
    from api.archives import ArchiveRefused, extract_dataset
    from jobs import dataset_status as st
    from jobs.errors import JobInputError

    p = params_as(ctx, IngestParams)
    ds_id = p.dataset.removeprefix("dataset:")
    files = _row_update(ctx, ds_id)
    if st.status_of(files) not in (st.UPLOADED, st.INGESTING):  # INGESTING: a retried attempt
        raise JobInputError(f"dataset {ds_id} is {st.status_of(files)}, not an uploaded archive to ingest")
    upload = files["upload"]
    prefix = f"datasets/{ds_id}"
    _row_update(ctx, ds_id, files={**files, "status": st.INGESTING})
    for key in ctx.store.list(prefix):  # a retried attempt starts clean
        ctx.store.delete(key)
    work = Path(ctx.workdir) / "ingest"
    shutil.rmtree(work, ignore_errors=True)
    archive = ctx.store.download(upload["key"], work / "archive")
    try:
        if archive.stat().st_size != upload["size"]:
            raise ArchiveRefused(
                "size_mismatch", f"the upload is {archive.stat().st_size} bytes, not the {upload['size']} declared"
            )
        ctx.progress(0, 2)
        content = extract_dataset(
            archive, upload["filename"], work / "extracted", ctx.settings, keep_data=True, tolerate_bad=True,
            check_threads=p.check_threads,  # a worker owns its cores, a request does not
        )  # fmt: skip
        if not content.images and not content.data:
            raise ArchiveRefused("no_images", f"every image failed ({len(content.failures)})")
        items = [(f.rel, f.path, f.content_type) for f in [*content.images, *content.data]]
        ctx.progress(len(items), 2 * len(items))
        try:
            _store_all(ctx, prefix, items)
        except BaseException:
            for key in ctx.store.list(prefix):
                ctx.store.delete(key)
            raise
    except ArchiveRefused as exc:
        error = {"code": exc.code, "message": exc.message}
        _row_update(ctx, ds_id, files={**files, "status": st.FAILED, "error": error})
        ctx.store.delete(upload["key"])
        raise JobInputError(f"dataset {ds_id}: {exc.code}: {exc.message}") from None
    if content.failures:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["member", "reason"])
        writer.writerows([f["member"], f["reason"]] for f in content.failures)
        ctx.put_artifact("failures.csv", out.getvalue().encode(), "text/csv")
    keys = [rel for rel, _, _ in items]
    _row_update(
        ctx, ds_id, num_files=len(keys), num_identities=content.num_identities, size_bytes=content.size_bytes,
        layout=content.layout, files={"keys": keys, "status": st.READY, "data": [d.rel for d in content.data]},
    )  # fmt: skip
    ctx.store.delete(upload["key"])
    shutil.rmtree(work, ignore_errors=True)
    ctx.log(f"dataset {ds_id}: {len(content.images)} images, {len(content.data)} other files, "
            f"{len(content.failures)} failed")  # fmt: skip
    return {"dataset": p.dataset, "images": len(content.images), "files": len(keys),
            "failed": len(content.failures), "skipped": len(content.skipped),
            "identities": content.num_identities, "layout": content.layout}  # fmt: skip
