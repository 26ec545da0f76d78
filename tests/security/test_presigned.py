"""The API's artifact links: presigned for one object, for `presign_seconds`, then refused by S3."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from jobs.states import JobStatus
from tests.support import wait_for
from tests.support.factories import add_artifact, add_job, client_for, key_id
from tests.support.services import Stack


@pytest.mark.security
def test_artifact_links_expire_and_cannot_be_pointed_at_another_object(services_stack: Stack) -> None:
    stack = services_stack
    owner = key_id(stack)
    job_id, other_id = (add_job(stack, owner, status=JobStatus.SUCCEEDED) for _ in range(2))
    add_artifact(stack, job_id, "probe.json", b'{"mine": 1}', "application/json")
    add_artifact(stack, other_id, "probe.json", b'{"other": 2}', "application/json")
    client = client_for(stack, presign_seconds=2)

    r = client.get(f"/jobs/{job_id}/artifacts/probe.json", follow_redirects=False)
    assert r.status_code == 307
    url = r.headers["location"]
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["2"]
    assert (httpx.get(url).status_code, httpx.get(url).content) == (200, b'{"mine": 1}')
    # The signature covers the key: the same link re-aimed at another job's object is refused.
    assert httpx.get(url.replace(f"/jobs/{job_id}/", f"/jobs/{other_id}/")).status_code == 403
    assert httpx.get(url.split("?", 1)[0]).status_code == 403  # and the object is not public without it
    # Refused once its 2 s are up: waited for (the server's clock decides), not slept through.
    wait_for(lambda: httpx.get(url).status_code == 403, 30, "the 2 s link to expire", poll=0.2)
    fresh = client.get(f"/jobs/{job_id}/artifacts/probe.json", follow_redirects=False).headers["location"]
    assert httpx.get(fresh).content == b'{"mine": 1}'  # the owner just asks the API for a new link
