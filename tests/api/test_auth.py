"""Authentication on every route, key isolation (404 for another key's things), key lifecycle."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from jobs.keys import KEY_RE, create_key, hash_key, lookup_key, revoke_key
from jobs.models import ApiKey
from jobs.states import JobStatus
from tests.support import app_routes
from tests.support.factories import add_artifact, add_job, client_for, key_id, make_zip, tiny_weights, upload

# Every route the app serves is in exactly one of these two sets; a route in neither fails
# `test_every_route_is_classified_public_or_keyed`, so a new one cannot slip past the checks below.
# The routes come from `app.routes` (tests/support/__init__.py), not the OpenAPI schema: the dashboard's routes
# are left out of the schema, and the schema once hid a copy of the artifact-link route without any
# key or owner check from these tests.
PUBLIC_ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    # The dashboard's page shells hold no data (the browser fetches it with the key) and its static files.
    ("GET", "/"),
    ("GET", "/ui/jobs/{job_id}"),
    ("GET", "/ui/submit"),
    ("GET", "/ui/datasets"),
    ("GET", "/ui/workers"),
    ("GET", "/ui/pipelines/{pipeline_id}"),
    ("GET", "/ui/sweeps/{sweep_id}"),
    ("GET", "/ui/verify"),
    ("GET", "/ui/search"),
    ("GET", "/ui/datasets/{dataset_id}"),
    ("GET", "/ui/compare"),
    ("MOUNT", "/ui/static"),
}
PRIVATE_ROUTES = {
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/{job_id}"),
    ("PATCH", "/jobs/{job_id}"),
    ("DELETE", "/jobs/{job_id}"),
    ("POST", "/jobs/{job_id}/cancel"),
    ("POST", "/jobs/{job_id}/retry"),
    ("GET", "/jobs/{job_id}/events"),
    ("GET", "/jobs/{job_id}/artifacts"),
    ("GET", "/jobs/{job_id}/artifacts/{name}"),
    ("GET", "/jobs/{job_id}/logs"),
    ("GET", "/jobs/{job_id}/logs/download"),
    ("GET", "/ui/links/jobs/{job_id}/artifacts/{name}"),
    ("GET", "/kinds"),
    ("GET", "/datasets"),
    ("POST", "/datasets"),
    ("GET", "/datasets/{dataset_id}"),
    ("GET", "/datasets/{dataset_id}/files"),
    ("GET", "/datasets/{dataset_id}/thumbnails/{path}"),
    ("POST", "/datasets/uploads"),
    ("PUT", "/datasets/uploads/{upload_id}/parts/{number}"),
    ("POST", "/datasets/uploads/{upload_id}/complete"),
    ("DELETE", "/datasets/uploads/{upload_id}"),
    ("GET", "/models"),
    ("POST", "/models"),
    ("GET", "/models/{model_id}"),
    ("GET", "/workers"),
    ("POST", "/verify"),
    ("GET", "/jobs/{job_id}/graph"),
    ("POST", "/pipelines"),
    ("GET", "/pipelines/{pipeline_id}"),
    ("POST", "/sweeps"),
    ("GET", "/sweeps/{sweep_id}"),
    ("POST", "/search"),
    ("GET", "/compare"),
    ("GET", "/keys/me/storage"),
}
OWNED_PARAMS = ("{job_id}", "{dataset_id}", "{model_id}")  # a path naming one of these names a key's thing


def fill(path: str, ids: dict[str, str]) -> str:
    """`path` with each `{param}` replaced by `ids[param]`."""
    for param, value in ids.items():
        path = path.replace("{" + param + "}", value)
    assert "{" not in path, f"no value for a parameter of {path}: add it to the test's ids"
    return path


@pytest.mark.security
def test_every_route_is_classified_public_or_keyed(stack: Any) -> None:
    routes = app_routes(stack.app)
    assert PUBLIC_ROUTES.isdisjoint(PRIVATE_ROUTES)
    assert routes - PUBLIC_ROUTES - PRIVATE_ROUTES == set(), "unclassified routes: add each to PUBLIC or PRIVATE"
    assert (PUBLIC_ROUTES | PRIVATE_ROUTES) - routes == set(), "classified routes the app no longer serves"
    # The schema documents every keyed route but the dashboard's link helper, and no public page shell.
    schema = {(m.upper(), p) for p, ops in stack.app.openapi()["paths"].items() for m in ops}
    assert PRIVATE_ROUTES - schema == {("GET", "/ui/links/jobs/{job_id}/artifacts/{name}")}


@pytest.mark.security
def test_every_route_but_the_public_ones_needs_a_valid_key(stack: Any) -> None:
    assert app_routes(stack.app) == PUBLIC_ROUTES | PRIVATE_ROUTES  # what this test walks is all there is
    owner = key_id(stack)
    job_id = add_job(stack, owner, status=JobStatus.SUCCEEDED)
    add_artifact(stack, job_id, "a.txt", b"a", "text/plain")  # so a missing key check would answer 200 or 307
    with stack.session() as s:
        row, revoked = create_key(s, "revoked")
    with stack.session() as s:
        assert revoke_key(s, row.id) is True
        assert revoke_key(s, row.id) is False
    anonymous = TestClient(stack.app)
    bad_keys = [None, "", "nonsense", "fj_00000000_" + "0" * 32, stack.key + "x", revoked]
    ids = {"job_id": job_id, "dataset_id": "0" * 32, "model_id": "0" * 32, "name": "a.txt", "pipeline_id": "0" * 32,
           "sweep_id": "0" * 32, "path": "a.pgm", "upload_id": "0" * 32, "number": "1"}  # fmt: skip
    for method, path in sorted(PRIVATE_ROUTES):
        url = fill(path, ids)
        for key in bad_keys:
            headers = {} if key is None else {"X-API-Key": key}
            r = anonymous.request(method, url, headers=headers, follow_redirects=False)
            assert r.status_code == 401, (method, url, key, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "ApiKey"
    for method, path in sorted(PUBLIC_ROUTES):
        url = fill(path, ids) if method == "GET" else f"{path}/favicon.svg"
        r = anonymous.get(url)
        assert r.status_code == 200, (method, url, r.status_code)


@pytest.mark.security
def test_another_keys_things_read_as_unknown(stack: Any, orl_dir: Any) -> None:
    owner = key_id(stack)
    job_id = add_job(stack, owner, status=JobStatus.FAILED)
    add_artifact(stack, job_id, "x.json", b"{}", "application/json")
    ds = upload(stack.client, "/datasets", "faces.zip", make_zip({"a.pgm": (orl_dir / "s1" / "1.pgm").read_bytes()}))
    model = upload(stack.client, "/models", "w.pt", tiny_weights(), kind="facenet")
    assert (ds.status_code, model.status_code) == (201, 201)
    ds_id, model_id = ds.json()["id"], model.json()["id"]
    ids = {"job_id": job_id, "dataset_id": ds_id, "model_id": model_id, "name": "x.json", "path": "a.pgm"}
    unknown_ids = {**ids, "job_id": "f" * 32, "dataset_id": "f" * 32, "model_id": "f" * 32}

    # Every keyed route that names one of the owner's things, taken from the app (hidden ones included).
    by_id = sorted((m, p) for m, p in app_routes(stack.app) & PRIVATE_ROUTES if any(o in p for o in OWNED_PARAMS))
    assert len(by_id) == 16, by_id
    for method, path in by_id:
        url = fill(path, ids)
        if method == "GET":  # the owner reads it, so the other key's 404 is the owner check, not a bad URL
            assert stack.client.get(url, follow_redirects=False).status_code in (200, 307), url
        theirs = stack.other.request(method, url, follow_redirects=False)
        unknown = stack.other.request(method, fill(path, unknown_ids), follow_redirects=False)
        assert theirs.status_code == unknown.status_code == 404, (method, url, theirs.text)
        assert theirs.json()["error"]["code"] == "not_found"
    for route in ("/jobs", "/datasets", "/models"):
        assert stack.other.get(route).json()["data"] == []
        assert len(stack.client.get(route).json()["data"]) == 1
    assert stack.client.get(f"/jobs/{job_id}").json()["status"] == "failed"  # the other key changed nothing


@pytest.mark.security
def test_keys_are_random_hashed_and_revocable(stack: Any) -> None:
    with stack.session() as s:
        row, key = create_key(s, "ci")
        _, key2 = create_key(s, "ci")
    match = KEY_RE.match(key)
    assert match is not None and match.group(1) == row.prefix and key != key2
    with stack.session() as s:
        stored = s.get(ApiKey, row.id)
        assert stored is not None and stored.key_hash == hash_key(key, stack.settings) and key not in stored.key_hash
        assert lookup_key(s, key, stack.settings) is not None
        # The pepper is part of the hash: the same key under another pepper is unknown.
        other = stack.settings.model_copy(update={"key_pepper": SecretStr("another-pepper")})
        assert lookup_key(s, key, other) is None


@pytest.mark.security
def test_hostile_inputs_never_cause_a_5xx(stack: Any) -> None:
    import base64
    import json

    job_id = stack.client.post("/jobs", json={"kind": "probe", "params": {"fail_with": "nul \x00 byte ☃"}}).json()["id"]
    assert stack.client.get(f"/jobs/{job_id}").json()["params"]["fail_with"] == "nul \x00 byte ☃"

    def cursor(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()

    deep = "[" * 5000 + "]" * 5000
    requests = [
        ("GET", "/jobs?kind=%00"), ("GET", "/jobs?status=%00"), ("GET", "/jobs?limit=-1"), ("GET", "/jobs?limit=x"),
        ("GET", f"/jobs?cursor={cursor(['2020-01-01T00:00:00', 'a' + chr(0)])}"),
        ("GET", f"/jobs?cursor={cursor(['not a date', 'a'])}"), ("GET", f"/jobs?cursor={cursor([1, 2])}"),
        ("GET", f"/jobs?cursor={cursor({'a': 1})}"), ("GET", "/jobs?cursor=%ff%fe"),
        ("GET", f"/jobs/{job_id}/events?type=%00"), ("GET", f"/jobs/{job_id}/events?after=-5"),
        ("GET", f"/jobs/{job_id}/artifacts/%00"), ("GET", f"/jobs/{job_id}/artifacts/../../etc/passwd"),
        ("GET", "/jobs/" + "a" * 5000), ("GET", "/datasets/%00"), ("GET", "/models/..%2f..%2f"),
        ("POST", "/jobs/%00/cancel"), ("DELETE", "/jobs"), ("PUT", f"/jobs/{job_id}"),
    ]  # fmt: skip
    for method, url in requests:
        r = stack.client.request(method, url)
        assert r.status_code < 500, (method, url, r.status_code, r.text)
        if r.status_code >= 400:
            assert set(r.json()["error"]) == {"code", "message", "details"}
        else:  # only a filter that matches nothing may succeed (SQLite accepts a NUL in a string)
            assert url in {"/jobs?kind=%00", f"/jobs/{job_id}/events?type=%00"} and r.json()["data"] == []
    for body in (deep, "[]", "null", '{"kind": 5}', '{"kind": "probe", "params": []}', "\xff\xfe"):
        r = stack.client.post("/jobs", content=body.encode("utf-8", "surrogatepass"),
                              headers={"Content-Type": "application/json"})  # fmt: skip
        assert 400 <= r.status_code < 500, (body[:20], r.status_code, r.text)
    r = stack.client.post("/jobs", json={"kind": "probe"}, headers={"Idempotency-Key": ("ü" * 300).encode("latin-1")})
    assert r.status_code == 422
    r = stack.client.post("/jobs", content=b"{" + b" " * 2_000_000 + b"}", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
    chunks = iter([b'{"kind": "probe", "params": {"x": "'] + [b"a" * 65536] * 40 + [b'"}}'])
    r = stack.client.post("/jobs", content=chunks, headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
    small = client_for(stack, max_params_bytes=50)
    r = small.post("/jobs", json={"kind": "probe", "params": {"fail_with": "x" * 60}})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "params_too_large")
