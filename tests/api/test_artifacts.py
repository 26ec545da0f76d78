"""Artifacts: listing, and downloads (presigned redirect on S3, streamed from the local store)."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote

import httpx

from jobs.states import JobStatus
from tests.support.factories import add_artifact, add_job, key_id


def test_list_and_download_artifacts(stack: Any) -> None:
    job_id = add_job(stack, key_id(stack), status=JobStatus.SUCCEEDED)
    probe = json.dumps({"device": "cpu", "gflops": 12.5}).encode()
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    add_artifact(stack, job_id, "probe.json", probe, "application/json")
    add_artifact(stack, job_id, "previews/step 10.png", png, "image/png")
    add_artifact(stack, job_id, "lost.bin", b"gone", "application/octet-stream", store=False)

    listed = stack.client.get(f"/jobs/{job_id}/artifacts").json()
    assert [(a["name"], a["size"], a["content_type"]) for a in listed] == [
        ("lost.bin", 4, "application/octet-stream"),
        ("previews/step 10.png", len(png), "image/png"),
        ("probe.json", len(probe), "application/json"),
    ]
    assert listed[2]["sha256"] == hashlib.sha256(probe).hexdigest()

    for name, data, ctype in (("probe.json", probe, "application/json"), ("previews/step 10.png", png, "image/png")):
        r = stack.client.get(f"/jobs/{job_id}/artifacts/{quote(name)}", follow_redirects=False)
        if stack.name == "services":
            assert r.status_code == 307
            location = r.headers["location"]
            assert location.startswith(f"http://{stack.settings.s3_endpoint}/") and "X-Amz-Signature" in location
            fetched = httpx.get(location)  # the presigned URL works with no API key
            assert fetched.status_code == 200 and fetched.content == data
        else:
            assert r.status_code == 200
            assert r.content == data
            assert r.headers["content-type"] == ctype
            assert r.headers["content-length"] == str(len(data))
            assert r.headers["content-disposition"].startswith('attachment; filename="')

    r = stack.client.get(f"/jobs/{job_id}/artifacts/nope.txt")
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
    if stack.name == "embedded":
        r = stack.client.get(f"/jobs/{job_id}/artifacts/lost.bin")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "object_missing")
