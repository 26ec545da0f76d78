"""Names cannot climb out of their prefix, and a job cannot read another key's data or models.

tests/platform/test_store.py checks the store's key rules and tests/api/test_datasets.py the archive
members with '..', absolute paths and links; these check the same walls from the job's side (its
artifact names, its dataset and model references) and from the names an upload carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from jobs.errors import JobInputError
from jobs.models import Artifact, Job
from jobs.params.probe import ProbeParams
from jobs.states import JobStatus
from jobs.store import InvalidKey
from tests.support import app_routes
from tests.support.factories import add_artifact, add_job, key_id, make_tar, make_zip, orl_files, tiny_weights, upload
from workers.context import JobContext

HOSTILE_NAMES = [
    "../other/probe.json", "../../../../escape.txt", "/etc/passwd", "a/../../b", "a/./b", "a//b", "a\\..\\b",
    "images/", "", ".", "..", "x\x00.png",
]  # fmt: skip


def context(stack: Any, owner: str, tmp_path: Path) -> JobContext:
    """A running job's context, as a worker builds it (no worker process needed to call it)."""
    job_id = add_job(stack, owner, status=JobStatus.RUNNING, attempt=1, lease_owner="w/1")
    with stack.session() as s:
        job = s.get(Job, job_id)
    return JobContext(job, 1, "w/1", ProbeParams(), stack.settings, stack.store, None, tmp_path)


@pytest.mark.security
def test_artifact_names_cannot_leave_the_jobs_prefix(stack: Any, tmp_path: Path) -> None:
    ctx = context(stack, key_id(stack), tmp_path / "work")
    for name in HOSTILE_NAMES:
        with pytest.raises(InvalidKey):
            ctx.put_artifact(name, b"x", "text/plain")
    ctx.put_artifact("images/0_0.png", b"png", "image/png")
    assert stack.store.list("jobs") == [f"jobs/{ctx.job_id}/images/0_0.png"]
    with stack.session() as s:
        assert s.scalar(select(func.count()).select_from(Artifact)) == 1
    if stack.name == "embedded":  # nothing was written beside or above the local store's folder
        root = stack.store.root
        assert sorted(p.name for p in root.parent.iterdir() if p.name.startswith("escape")) == []
        assert not (root.parent.parent / "escape.txt").exists()


@pytest.mark.security
def test_artifact_urls_cannot_reach_another_jobs_files(stack: Any) -> None:
    owner = key_id(stack)
    mine, other = (add_job(stack, owner, status=JobStatus.SUCCEEDED) for _ in range(2))
    add_artifact(stack, other, "probe.json", b'{"secret": 1}', "application/json")
    # Every route that serves an artifact by name, from the app itself: the dashboard's link route is
    # not in the OpenAPI schema, and a copy of it without checks once passed every schema-driven test.
    by_name = sorted(p for _, p in app_routes(stack.app) if p.endswith("/{job_id}/artifacts/{name}"))
    assert by_name == ["/jobs/{job_id}/artifacts/{name}", "/ui/links/jobs/{job_id}/artifacts/{name}"]
    for route in by_name:
        for name in (f"../{other}/probe.json", f"..%2F{other}%2Fprobe.json", f"%2E%2E/{other}/probe.json",
                     f"jobs/{other}/probe.json", "probe.json"):  # fmt: skip
            r = stack.client.get(route.format(job_id=mine, name=name), follow_redirects=False)
            assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found"), (route, name, r.text)
        r = stack.client.get(route.format(job_id=other, name="probe.json"), follow_redirects=False)
        assert r.status_code in (200, 307), (route, r.text)  # the right job's name is served


@pytest.mark.security
def test_a_job_cannot_open_another_keys_dataset_or_model(stack: Any, orl_dir: Path, tmp_path: Path) -> None:
    theirs = upload(stack.other, "/datasets", "faces.zip", make_zip(orl_files(orl_dir, ids=("s1",), per_id=2)))
    model = upload(stack.other, "/models", "w.pt", tiny_weights(), kind="facenet")
    assert (theirs.status_code, model.status_code) == (201, 201)
    their_job = add_job(stack, key_id(stack, stack.other_key), status=JobStatus.SUCCEEDED)
    ctx = context(stack, key_id(stack), tmp_path / "work")
    refused = {
        ctx.open_dataset: [f"dataset:{theirs.json()['id']}", "dataset:../../datasets", "dataset:", "s3://bucket/x"],
        ctx.open_model: [f"model:{model.json()['id']}", f"job:{their_job}", f"job:{their_job}/backbone.pt",
                         "job:../x", "file:///etc/passwd"],
    }  # fmt: skip
    for opener, refs in refused.items():
        for ref in refs:
            with pytest.raises(JobInputError, match=r"not found|unknown"):
                opener(ref)
    assert not (stack.settings.home / "cache" / "datasets" / theirs.json()["id"]).exists()  # nothing fetched
    # The owner's own job reads the same dataset.
    own = context(stack, key_id(stack, stack.other_key), tmp_path / "own")
    folder = own.open_dataset(f"dataset:{theirs.json()['id']}")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.pgm")) == ["1.pgm", "2.pgm"]


@pytest.mark.security
def test_upload_names_stay_inside_their_prefix(stack: Any, orl_dir: Path) -> None:
    faces = orl_files(orl_dir, ids=("s1", "s2"), per_id=1)
    r = upload(stack.client, "/datasets", "../../../etc/faces.zip", make_zip(faces), name="../../../etc")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == "../../../etc"  # a display name, never a path
    prefix = f"datasets/{ds['id']}"
    assert stack.store.list("datasets") == sorted(f"{prefix}/{k}" for k in faces)

    face = faces["s1/1.pgm"]
    for archive, member in (
        (make_zip({"s1/1.pgm": face, "s1\\..\\..\\evil.pgm": face}), "s1\\..\\..\\evil.pgm"),
        (make_tar({"s1/1.pgm": face, "s1/../../evil.pgm": face}), "s1/../../evil.pgm"),
        (make_zip({"s1/1.pgm": face, "C:/evil.pgm": face}), "C:/evil.pgm"),
        (make_zip({"s1/1.pgm": face, "s1/\x1b[2Jevil.pgm": face}), "s1/\x1b[2Jevil.pgm"),
    ):
        r = upload(stack.client, "/datasets", "x.tar.gz" if "/../" in member else "x.zip", archive)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "unsafe_path"), (member, r.text)
        assert [m["member"] for m in r.json()["error"]["details"]["members"]] == [member]
    assert stack.store.list("datasets") == sorted(f"{prefix}/{k}" for k in faces)  # nothing more was stored
