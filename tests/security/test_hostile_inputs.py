"""Inputs that answered 5xx, leaked what the caller does not own, or showed server internals.

Each was reproduced before the fix: `after=2**63` was an OverflowError (500), 30,000 nested `[` in
a model's meta a RecursionError (500), `GET /workers` showed every key the ids of others' running
jobs, image and archive errors named the server's temp folders, a 500 and a failed job's error
carried the traceback, and a params ref to another key's object was accepted with 201.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.ingest import MAX_META_DEPTH, parse_meta
from jobs.models import Job, Model, Worker, new_id
from jobs.redact import redact_url, scrub_paths
from jobs.refs import Ref, find_refs, parse_ref
from jobs.states import JobStatus, utcnow
from tests.support.faces import post_verify
from tests.support.factories import add_job, key_id, make_zip, upload
from tests.support.services import Stack

pytestmark = pytest.mark.security
SERVER_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+~-]+/)+")


def error(resp: Any) -> tuple[int, str]:
    return resp.status_code, resp.json()["error"]["code"]


def test_event_ids_past_64_bits_are_refused_not_overflowed(stack: Stack) -> None:
    job_id = stack.client.post("/jobs", json={"kind": "probe", "params": {}}).json()["id"]
    r = stack.client.get(f"/jobs/{job_id}/events", params={"after": 2**63})
    assert error(r) == (422, "invalid_request")
    assert r.json()["error"]["details"][0]["loc"] == ["query", "after"]
    r = stack.client.get(f"/jobs/{job_id}/events", params={"after": 2**63 - 1})
    assert (r.status_code, r.json()) == (200, {"data": [], "next_after": 2**63 - 1})


def test_deeply_nested_model_meta_is_a_422(stack: Stack) -> None:
    r = upload(stack.client, "/models", "w.pt", b"weights", kind="facenet", meta="[" * 30_000)
    assert error(r) == (422, "invalid_meta")
    assert r.json()["error"]["details"] == {"max_depth": MAX_META_DEPTH}
    deep = '{"a": ' + "[" * MAX_META_DEPTH + "]" * MAX_META_DEPTH + "}"  # one level too many
    assert error(upload(stack.client, "/models", "w.pt", b"weights", kind="facenet", meta=deep)) == (
        422,
        "invalid_meta",
    )
    assert stack.store.list("models") == []
    ok = '{"a": ' + "[" * (MAX_META_DEPTH - 1) + "]" * (MAX_META_DEPTH - 1) + "}"  # exactly the limit
    expected: list[Any] = []
    for _ in range(MAX_META_DEPTH - 2):
        expected = [expected]
    assert parse_meta(ok) == {"a": expected}


def test_workers_show_only_the_callers_own_running_jobs(stack: Stack) -> None:
    mine = add_job(stack, key_id(stack), status=JobStatus.RUNNING)
    theirs = add_job(stack, key_id(stack, stack.other_key), status=JobStatus.RUNNING)
    now = utcnow()
    with stack.session() as s:
        for name, job in (("w-mine", mine), ("w-theirs", theirs), ("w-idle", None)):
            s.add(Worker(id=name, hostname="h", pid=1, queues="gpu", device="cpu", current_job_id=job,
                         started_at=now, last_heartbeat=now))  # fmt: skip
    seen = {w["id"]: (w["current_job_id"], w["busy"]) for w in stack.client.get("/workers").json()}
    assert seen == {"w-idle": (None, False), "w-mine": (mine, True), "w-theirs": (None, True)}
    seen = {w["id"]: (w["current_job_id"], w["busy"]) for w in stack.other.get("/workers").json()}
    assert seen == {"w-idle": (None, False), "w-mine": (None, True), "w-theirs": (theirs, True)}


def test_image_and_archive_errors_name_the_upload_not_the_server_folders(stack: Stack, orl_dir: Path) -> None:
    good = f"job:{add_job(stack, key_id(stack), status=JobStatus.SUCCEEDED, kind='train_embedding')}"
    face = (orl_dir / "s1" / "1.pgm").read_bytes()
    r = post_verify(stack.client, b"hello, not an image", face, model=good)
    assert error(r) == (400, "invalid_image")
    message = r.json()["error"]["message"]
    assert message == "image_a: not a decodable image (UnidentifiedImageError: cannot identify image file 'image_a')"

    r = upload(stack.client, "/datasets", "d.zip", make_zip({"s1/1.pgm": face, "s1/2.png": b"\x89PNG broken"}))
    assert error(r) == (400, "invalid_images")
    (bad,) = r.json()["error"]["details"]["members"]
    assert bad == {
        "member": "2.png",  # the single wrapping folder is stripped
        "reason": "not a decodable image (UnidentifiedImageError: cannot identify image file '2.png')",
    }
    assert SERVER_PATH.search(r.text) is None and str(stack.home) not in r.text


def test_an_unexpected_error_answers_an_error_id_and_logs_the_traceback(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise RuntimeError("secret internals at /srv/facejobs/app.py")

    stack.app.add_api_route("/boom", boom)
    client = TestClient(stack.app, raise_server_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="api.errors"):
        r = client.get("/boom")
    assert r.status_code == 500
    err = r.json()["error"]
    error_id = err["details"]["error_id"]
    assert re.fullmatch(r"[0-9a-f]{12}", error_id)
    assert (err["code"], err["message"]) == (
        "internal_error",
        f"internal error; it has been logged as error {error_id}",
    )
    assert "secret" not in r.text and "Traceback" not in r.text
    (record,) = [rec for rec in caplog.records if error_id in rec.getMessage()]
    assert record.getMessage() == f"unhandled error {error_id} on GET /boom"
    assert record.exc_info is not None and str(record.exc_info[1]) == "secret internals at /srv/facejobs/app.py"


def _theirs(stack: Stack) -> dict[str, str]:
    """Ids of another key's job, uploaded model and dataset."""
    other = key_id(stack, stack.other_key)
    job = add_job(stack, other, status=JobStatus.SUCCEEDED, kind="train_embedding")
    model = new_id()
    with stack.session() as s:
        s.add(Model(id=model, owner_id=other, name="g", kind="generator", key=f"models/{model}/g.pt",
                    filename="g.pt", size=1, sha256="0", created_at=utcnow()))  # fmt: skip
    face = b"P5\n2 2\n255\n\x00\x01\x02\x03"
    ds = upload(stack.other, "/datasets", "d.zip", make_zip({"a.pgm": face, "b.pgm": face}))
    assert ds.status_code == 201, ds.text
    return {"job": job, "model": model, "dataset": ds.json()["id"]}


def test_every_kind_refuses_another_keys_refs_at_submit(stack: Stack) -> None:
    theirs = _theirs(stack)
    mine = add_job(stack, key_id(stack), status=JobStatus.SUCCEEDED, kind="train_embedding")
    cases = [
        ("invert", {"model": f"job:{theirs['job']}"}, f"job:{theirs['job']}"),
        ("invert", {"model": f"model:{theirs['model']}"}, f"model:{theirs['model']}"),
        (
            "evaluate",
            {"model": f"job:{mine}", "dataset": f"dataset:{theirs['dataset']}"},
            f"dataset:{theirs['dataset']}",
        ),
        ("train_embedding", {"dataset": f"dataset:{theirs['dataset']}"}, f"dataset:{theirs['dataset']}"),
        ("embed", {"dataset": f"dataset:{theirs['dataset']}", "model": f"job:{mine}"}, f"dataset:{theirs['dataset']}"),
        ("train_encoder", {"generator": f"model:{theirs['model']}"}, f"model:{theirs['model']}"),
        ("recover_latent", {"generator": "job:nosuchjob"}, "job:nosuchjob"),
        ("train_generator", {"dataset": "dataset:nosuchdataset"}, "dataset:nosuchdataset"),
    ]
    for kind, params, ref in cases:
        r = stack.client.post("/jobs", json={"kind": kind, "params": params})
        assert error(r) == (404, "not_found"), (kind, r.text)
        parsed = parse_ref(ref)
        assert parsed is not None
        assert r.json()["error"] == {
            "code": "not_found",
            "message": f"{parsed.kind} {parsed.id} not found",
            "details": {"ref": ref},
        }
    with stack.session() as s:
        assert s.query(Job).filter(Job.owner_id == key_id(stack), Job.kind != "train_embedding").count() == 0
    # The caller's own objects and the builtin datasets are accepted.
    r = stack.client.post(
        "/jobs", json={"kind": "evaluate", "params": {"model": f"job:{mine}", "dataset": "builtin:digits"}}
    )
    assert r.status_code == 201, r.text
    # The owner of the objects may use them.
    r = stack.other.post("/jobs", json={"kind": "invert", "params": {"model": f"job:{theirs['job']}"}})
    assert r.status_code == 201, r.text


def test_verify_refuses_another_keys_dataset_image(stack: Stack) -> None:
    theirs = _theirs(stack)
    good = f"job:{add_job(stack, key_id(stack), status=JobStatus.SUCCEEDED, kind='train_embedding')}"
    r = post_verify(
        stack.client, f"dataset:{theirs['dataset']}/a.pgm", f"dataset:{theirs['dataset']}/b.pgm", model=good
    )
    assert (error(r), r.json()["error"]["message"]) == ((404, "not_found"), f"dataset {theirs['dataset']} not found")
    mine = upload(stack.client, "/datasets", "d.zip", make_zip({"a.pgm": b"P5\n2 2\n255\n\x00\x01\x02\x03"}))
    r = post_verify(
        stack.client, f"dataset:{mine.json()['id']}/a.pgm", f"dataset:{mine.json()['id']}/zz.pgm", model=good
    )
    assert error(r) == (404, "image_not_found")


def test_one_parser_for_every_kind_of_ref() -> None:
    assert parse_ref("job:abc") == Ref("job", "abc")
    assert parse_ref("job:abc/backbone.pt") == Ref("job", "abc", "backbone.pt")
    assert parse_ref("model:m1") == Ref("model", "m1")
    assert parse_ref("dataset:d1/s1/1.pgm") == Ref("dataset", "d1", "s1/1.pgm")
    assert parse_ref("builtin:digits") == Ref("builtin", "digits")
    for text in ("facenet:vggface2", "input:image_a", "builtin:imagenet", "job:", "job:../x", "model:a/b", "x"):
        assert parse_ref(text) is None, text
    params = {"model": "job:a", "nested": {"refs": ["dataset:b", "free text", 3]}, "weights": "model:c"}
    assert list(find_refs(params)) == [
        ("model", Ref("job", "a")),
        ("nested.refs[0]", Ref("dataset", "b")),
        ("weights", Ref("model", "c")),
    ]


def test_urls_and_paths_are_redacted_for_logs_and_callers() -> None:
    assert redact_url("redis://:s3cret@127.0.0.1:6379/11") == "redis://:***@127.0.0.1:6379/11"
    assert redact_url("postgresql+psycopg://app:pw@db:5432/fj") == "postgresql+psycopg://app:***@db:5432/fj"
    assert redact_url("rediss://h:6380/0?password=x&ssl=1") == "rediss://h:6380/0?password=***&ssl=1"
    assert redact_url("sqla+sqlite:////home/u/.facejobs/broker.db") == "sqla+sqlite:////home/u/.facejobs/broker.db"
    assert scrub_paths("no images in /home/u/.facejobs/cache/ds/x.png") == "no images in .../x.png"
    assert scrub_paths("jobs/abc/checkpoint.pt at http://h:1/a/b") == "jobs/abc/checkpoint.pt at http://h:1/a/b"
