"""Multipart dataset uploads (`/datasets/uploads`): parts straight to the store (presigned S3 URLs, or
this API's part route on the local store), an `ingest` job that validates and stores, nothing
half-stored on a bad part, a truncated archive or an abort, and another key seeing nothing."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from jobs import multipart
from jobs.models import Dataset
from tests.support.factories import client_for, make_zip, orl_files, upload
from tests.support.jobs import download

# S3 parts but the last are at least 5 MiB: an incompressible data file makes the archive two of them.
BLOB = random.Random(15).randbytes(multipart.MIN_PART_BYTES * 2 + 1000)


def send_parts(stack: Any, client: Any, started: dict[str, Any], data: bytes) -> list[dict[str, Any]]:
    """PUT each part where `started` says; the [{number, etag}] to complete with."""
    size, done = started["part_size"], []
    for part in started["parts"]:
        n = part["number"]
        chunk = data[(n - 1) * size : n * size]
        if part["api_key"]:
            assert stack.name == "embedded"
            resp = client.put(part["url"], content=chunk)
        else:
            assert stack.name == "services" and "uploadId=" in part["url"]
            resp = httpx.put(part["url"], content=chunk)
        assert resp.status_code == 200, resp.text
        done.append({"number": n, "etag": resp.headers["etag"].strip('"')})
    return done


def start(client: Any, name: str, size: int, parts: int) -> dict[str, Any]:
    resp = client.post("/datasets/uploads", json={"name": name, "size": size, "parts": parts})
    assert resp.status_code == 201, resp.text
    started: dict[str, Any] = resp.json()
    assert started["upload_id"] == started["dataset_id"] and len(started["parts"]) == parts
    return started


def upload_row(stack: Any, ds_id: str) -> dict[str, Any]:
    with stack.session() as s:
        row = s.scalar(select(Dataset).where(Dataset.id == ds_id))
        return dict(row.files) if row is not None else {}


def refuses_ref(stack: Any, ds_id: str) -> None:
    r = stack.client.post("/jobs", json={"kind": "convert_dataset", "params": {"dataset": f"dataset:{ds_id}"}})
    assert r.status_code == 404, r.text


def test_archive_over_the_body_limit_lands_through_parts_and_ingests(stack: Any, orl_dir: Path) -> None:
    faces = orl_files(orl_dir, ids=("s1", "s2", "s3"), per_id=3)
    broken = faces["s3/1.pgm"][:500]  # a truncated PGM: one per-file failure, not a refused archive
    members = {f"orl/{k}": v for k, v in faces.items()} | {"orl/s3/9.pgm": broken, "orl/pairs.txt": b"3\ns1 1 2\n"}
    archive = make_zip(members | {"orl/train.rec": BLOB})
    limit = len(archive) // 2 + 1
    small = client_for(stack, max_upload_bytes=limit)
    assert upload(small, "/datasets", "orl.zip", archive).status_code == 413  # today's path cannot take it

    started = start(small, "orl.zip", len(archive), 2)
    ds_id = started["dataset_id"]
    assert started["part_size"] == -(-len(archive) // 2) <= limit
    shown = small.get(f"/datasets/{ds_id}").json()
    assert (shown["status"], shown["name"], shown["num_files"]) == ("uploading", "orl", 0)
    refuses_ref(stack, ds_id)  # not usable by jobs until ingested
    parts = send_parts(stack, small, started, archive)

    # Another key can neither complete nor read nor abort it.
    assert stack.other.post(f"/datasets/uploads/{ds_id}/complete", json={"parts": parts}).status_code == 404
    assert stack.other.get(f"/datasets/{ds_id}").status_code == 404
    assert stack.other.delete(f"/datasets/uploads/{ds_id}").status_code == 404

    r = small.post(f"/datasets/uploads/{ds_id}/complete", json={"parts": parts})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert small.post(f"/datasets/uploads/{ds_id}/complete", json={"parts": parts}).status_code == 409
    stack.start_worker(queues="cpu")
    job = stack.wait_job(job_id, timeout=120)
    assert job["status"] == "succeeded", job
    assert job["kind"] == "ingest" and job["queue"] == "cpu"
    result = {k: v for k, v in job["result"].items() if k != "sys"}
    assert result == {"dataset": f"dataset:{ds_id}", "images": 9, "files": 11, "failed": 1, "skipped": 0,
                      "identities": 3, "layout": "identities"}  # fmt: skip
    rows = list(csv.reader(io.StringIO(download(stack, f"/jobs/{job_id}/artifacts/failures.csv").decode())))
    assert rows[0] == ["member", "reason"] and [r[0] for r in rows[1:]] == ["s3/9.pgm"]
    assert rows[1][1].startswith("not a decodable image")

    ds = stack.client.get(f"/datasets/{ds_id}").json()
    assert (ds["status"], ds["layout"], ds["num_files"], ds["num_identities"]) == ("ready", "identities", 11, 3)
    prefix = f"datasets/{ds_id}"
    assert stack.store.list(prefix) == sorted([f"{prefix}/{k}" for k in [*faces, "pairs.txt", "train.rec"]])
    assert stack.store.get_bytes(f"{prefix}/s2/3.pgm") == faces["s2/3.pgm"]
    assert stack.store.get_bytes(f"{prefix}/pairs.txt") == b"3\ns1 1 2\n"
    assert not stack.store.exists(f"uploads/{ds_id}/archive")
    assert stack.other.get(f"/datasets/{ds_id}/files").status_code == 404
    # Usable: a job that reads it runs on it (and another key's job may not name it).
    r = stack.other.post("/jobs", json={"kind": "convert_dataset", "params": {"dataset": f"dataset:{ds_id}"}})
    assert r.status_code == 404
    r = stack.client.post("/jobs", json={"kind": "convert_dataset", "params": {"dataset": f"dataset:{ds_id}"}})
    assert r.status_code == 201, r.text
    conv = stack.wait_job(r.json()["id"], timeout=120)
    assert conv["status"] == "succeeded", conv
    assert conv["result"]["images"] == 9 and conv["result"]["identities"] == 3


def test_bad_parts_truncated_archives_and_aborts_leave_nothing(stack: Any, orl_dir: Path) -> None:
    archive = make_zip(orl_files(orl_dir, ids=("s4", "s5"), per_id=2) | {"blob.bin": BLOB})
    c = stack.client

    # A wrong ETag: complete is refused, the upload stays open and unusable, nothing is stored.
    started = start(c, "faces.zip", len(archive), 2)
    ds_id = started["dataset_id"]
    parts = send_parts(stack, c, started, archive)
    bad = [parts[0], {"number": 2, "etag": "0" * 32}]
    r = c.post(f"/datasets/uploads/{ds_id}/complete", json={"parts": bad})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_parts"), r.text
    assert c.post(f"/datasets/uploads/{ds_id}/complete", json={"parts": parts[:1]}).status_code == 422
    assert c.get(f"/datasets/{ds_id}").json()["status"] == "uploading"
    refuses_ref(stack, ds_id)
    assert stack.store.list(f"datasets/{ds_id}") == []

    # Aborted: its parts are gone and so is the dataset.
    files = upload_row(stack, ds_id)["upload"]
    assert multipart.pending_parts(stack.store, files["key"], files["id"]) == 2
    assert c.delete(f"/datasets/uploads/{ds_id}").status_code == 204
    assert multipart.pending_parts(stack.store, files["key"], files["id"]) == 0
    assert c.get(f"/datasets/{ds_id}").status_code == 404
    assert upload_row(stack, ds_id) == {}

    # A truncated archive: the parts join, the ingest job fails, the dataset is failed and empty.
    cut = archive[: len(archive) - 200]
    started = start(c, "faces.zip", len(cut), 1)
    ds_id = started["dataset_id"]
    r = c.post(f"/datasets/uploads/{ds_id}/complete", json={"parts": send_parts(stack, c, started, cut)})
    assert r.status_code == 202, r.text
    stack.start_worker(queues="cpu")
    job = stack.wait_job(r.json()["job_id"], timeout=120)
    assert job["status"] == "failed" and "corrupt_archive" in job["error"], job
    shown = c.get(f"/datasets/{ds_id}").json()
    assert (shown["status"], shown["num_files"]) == ("failed", 0)
    assert upload_row(stack, ds_id)["error"]["code"] == "corrupt_archive"
    refuses_ref(stack, ds_id)
    assert stack.store.list(f"datasets/{ds_id}") == []
    assert not stack.store.exists(f"uploads/{ds_id}/archive")
    assert c.delete(f"/datasets/uploads/{ds_id}").status_code == 204  # a failed upload can be dropped
    assert stack.store.list("uploads") == [] and stack.store.list("datasets") == []


def test_upload_limits_are_refused_before_anything_is_stored(stack: Any) -> None:
    c = client_for(stack, max_upload_bytes=1000, max_archive_uncompressed_bytes=10 * multipart.MIN_PART_BYTES)
    r = c.post("/datasets/uploads", json={"name": "big.zip", "size": 10 * multipart.MIN_PART_BYTES + 1})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
    r = c.post("/datasets/uploads", json={"name": "f.zip", "size": 3, "parts": 4})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_parts")
    assert c.post("/datasets/uploads", json={"name": "f.zip", "size": 10, "extra": 1}).status_code == 422
    if stack.name == "services":  # S3 parts but the last are at least 5 MiB
        r = c.post("/datasets/uploads", json={"name": "f.zip", "size": 2000, "parts": 2})
        assert r.json()["error"]["details"] == {"min_part_bytes": multipart.MIN_PART_BYTES}
    else:  # a part through this API is one request body, under its limit
        r = c.post("/datasets/uploads", json={"name": "f.zip", "size": 2001, "parts": 2})
        assert r.json()["error"]["details"] == {"limit_bytes": 1000}
        started = start(c, "f.zip", 1500, 2)
        url = started["parts"][0]["url"]
        r = c.put(url, content=iter([b"x" * 500, b"x" * 500, b"x"]))  # chunked: cut off while it streams
        assert (r.status_code, r.json()["error"]["details"]) == (413, {"limit_bytes": 750})
        ds_id = started["dataset_id"]
        assert c.put(f"/datasets/uploads/{ds_id}/parts/3", content=b"x").status_code == 404  # 2 parts
        assert multipart.pending_parts(stack.store, f"uploads/{ds_id}/archive", "") == 0
        assert c.delete(f"/datasets/uploads/{ds_id}").status_code == 204
    assert stack.store.list("datasets") == [] and stack.store.list("uploads") == []
    assert c.get("/datasets").json()["data"] == []
