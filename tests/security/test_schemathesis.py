"""schemathesis against the running API's own OpenAPI schema: no 5xx, no response outside its schema.

The app is served by uvicorn on the real services with a valid key. Every documented operation gets
generated requests, both schema-valid and schema-violating ones; half of the generated ids are
replaced by ids of stored objects and half the submitted jobs name a real kind, so the 2xx answers (a
job with its result, events, artifacts, a new job) are checked against their schemas too, not only
the 4xx ones.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from jobs.states import JobStatus
from tests.support import app_routes
from tests.support.factories import add_artifact, add_job, key_id, make_zip, orl_files, tiny_weights, upload
from tests.support.served import ServedApp
from tests.support.services import Stack

HIDDEN_FROM_SCHEMA = {
    ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
    ("GET", "/"), ("GET", "/ui/jobs/{job_id}"), ("GET", "/ui/submit"), ("GET", "/ui/datasets"),
    ("GET", "/ui/workers"), ("MOUNT", "/ui/static"), ("GET", "/ui/links/jobs/{job_id}/artifacts/{name}"),
    ("GET", "/ui/verify"), ("GET", "/ui/search"), ("GET", "/ui/datasets/{dataset_id}"),
    ("GET", "/ui/compare"), ("GET", "/ui/pipelines/{pipeline_id}"), ("GET", "/ui/sweeps/{sweep_id}"),
}  # fmt: skip
EXAMPLES_PER_OPERATION = 12  # x 2 modes x 19 operations: about 450 requests


def seed_objects(stack: Stack, orl_dir: Any) -> dict[str, str]:
    """One of each thing the paths name, owned by the stack's key."""
    owner = key_id(stack)
    job = add_job(stack, owner, status=JobStatus.SUCCEEDED, attempt=1, result={"gflops": 1.5}, metrics={"loss": 0.5})
    add_artifact(stack, job, "probe.json", b"{}", "application/json")
    ds = upload(stack.client, "/datasets", "d.zip", make_zip(orl_files(orl_dir, ids=("s1",), per_id=1)))
    model = upload(stack.client, "/models", "w.pt", tiny_weights(), kind="facenet")
    assert (ds.status_code, model.status_code) == (201, 201)
    doomed = add_job(stack, owner, status=JobStatus.FAILED)  # what DELETE /jobs/{job_id} may delete
    return {"job_id": job, "dataset_id": ds.json()["id"], "model_id": model.json()["id"], "name": "probe.json",
            "doomed_job_id": doomed}  # fmt: skip


def fuzz(operation: Any, mode: Any, url: str, headers: dict[str, str], known: dict[str, str],
         seen: Counter[tuple[str, int]]) -> None:  # fmt: skip
    """Generated requests for one operation; raises on the first check a response fails."""
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
    rng = random.Random(0)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case: Any) -> None:
        # A DELETE gets a job of its own: deleting the shared one would turn every later 200 into a 404.
        ids = {**known, "job_id": known["doomed_job_id"]} if operation.label.startswith("DELETE ") else known
        for name in set(case.path_parameters or {}) & set(ids):
            if rng.random() < 0.5:
                case.path_parameters[name] = ids[name]
        if operation.label == "POST /jobs" and isinstance(case.body, dict) and rng.random() < 0.5:
            case.body.update(kind="probe", params={"matmul_size": 16})  # a real kind: 201s get checked too
        response = case.call_and_validate(base_url=url, headers=headers, checks=checks)
        seen[(operation.label, response.status_code)] += 1

    try:
        check()
    except Unsatisfiable:
        assert mode.value == "negative", operation.label  # an operation without inputs has nothing to violate
    except Exception as exc:
        raise AssertionError(f"{operation.label} ({mode.value}): {exc}") from exc


@pytest.mark.security
def test_the_api_keeps_to_its_openapi_schema(
    serve: Callable[..., ServedApp], services_stack: Stack, orl_dir: Any
) -> None:
    import schemathesis
    from schemathesis.generation import GenerationMode

    served = serve()
    known = seed_objects(services_stack, orl_dir)
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in services_stack.app.openapi()["paths"].values())  # all of them
    # What the schema leaves out is known: the dashboard's pages, the docs and its link route, each
    # checked for its key and owner by tests/api/test_auth.py, which walks `app.routes` instead.
    documented = {tuple(op.label.split(" ", 1)) for op in operations}
    assert app_routes(services_stack.app) - documented == HIDDEN_FROM_SCHEMA
    seen: Counter[tuple[str, int]] = Counter()
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, served.url, {"X-API-Key": services_stack.key}, known, seen)

    assert all(status < 500 for (_, status) in seen), seen
    assert sum(seen.values()) >= 300, sum(seen.values())
    ok = {label for (label, status) in seen if status < 300}
    assert {"POST /jobs", "GET /jobs/{job_id}", "GET /jobs/{job_id}/events", "GET /jobs/{job_id}/artifacts",
            "GET /datasets/{dataset_id}", "GET /models/{model_id}", "GET /kinds"} <= ok, sorted(ok)  # fmt: skip
