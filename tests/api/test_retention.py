"""Retention: DELETE /jobs/{id} removes files then rows (children too), never half; the key's storage figure."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import func, select

from jobs.models import Artifact, Dataset, Job, JobEvent, Model
from jobs.states import JobStatus
from tests.support.factories import add_artifact, add_job, add_progress, client_for, key_id
from tests.support.servers import TripwireProxy


def stored(stack: Any, job_id: str) -> list[str]:
    return stack.store.list(f"jobs/{job_id}")


def counts(stack: Any, ids: list[str]) -> tuple[int, int, int]:
    with stack.session() as s:
        return (
            s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(ids))),
            s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id.in_(ids))),
            s.scalar(select(func.count()).select_from(Artifact).where(Artifact.job_id.in_(ids))),
        )  # type: ignore[return-value]


def a_sweep(stack: Any, owner: str) -> tuple[str, list[str]]:
    """A succeeded parent with two ended children, each with artifacts, a checkpoint and progress events."""
    parent = add_job(stack, owner, status=JobStatus.SUCCEEDED, kind="sweep_parent")
    children = [
        add_job(stack, owner, status=status, parent_id=parent, checkpoint_key=f"jobs/{i}/checkpoint.pt")
        for i, status in ((None, JobStatus.SUCCEEDED), (None, JobStatus.FAILED))
    ]
    add_artifact(stack, parent, "summary.json", b"{}", "application/json")
    for n, child in enumerate(children):
        add_artifact(stack, child, "probe.json", b'{"n": %d}' % n, "application/json")
        add_artifact(stack, child, "logs/attempt-1.txt", b"line\n" * (n + 1), "text/plain")
        stack.store.put_bytes(f"jobs/{child}/checkpoint.pt", b"ckpt" * 10)  # no artifact row, as a worker saves it
        add_progress(stack, child, [{"step": 1, "total": 2, "loss": 1.0}])
    return parent, children


def test_delete_removes_objects_rows_and_children(stack: Any) -> None:
    owner = key_id(stack)
    parent, children = a_sweep(stack, owner)
    family = [parent, *children]
    keep = add_job(stack, owner, status=JobStatus.SUCCEEDED)
    add_artifact(stack, keep, "probe.json", b"kept", "application/json")
    assert [len(stored(stack, j)) for j in family] == [1, 3, 3]
    assert counts(stack, family) == (3, 2, 5)

    assert stack.other.delete(f"/jobs/{parent}").status_code == 404  # another key's delete finds nothing
    r = stack.client.delete(f"/jobs/{parent}")
    assert r.status_code == 200, r.text
    # 2 + 5 + 6 bytes of JSON and 5 + 10 of logs; the checkpoints count as objects, not bytes (no row holds their size).
    assert r.json() == {"job_ids": family, "objects": 7, "bytes": 2 + 8 + 8 + 5 + 10}
    assert [stored(stack, j) for j in family] == [[], [], []]
    assert counts(stack, family) == (0, 0, 0)
    for j in family:
        assert stack.client.get(f"/jobs/{j}").status_code == 404
    assert stack.client.delete(f"/jobs/{parent}").status_code == 404  # gone is gone
    assert stack.store.get_bytes(f"jobs/{keep}/probe.json") == b"kept" and counts(stack, [keep]) == (1, 0, 1)


def test_running_jobs_and_live_children_are_not_deleted(stack: Any) -> None:
    owner = key_id(stack)
    running = add_job(stack, owner, status=JobStatus.RUNNING)
    add_artifact(stack, running, "preview.png", b"png", "image/png")
    r = stack.client.delete(f"/jobs/{running}")
    assert (r.status_code, r.json()["error"]["code"]) == (409, "conflict")
    assert r.json()["error"]["details"] == {"live": [{"id": running, "status": "running"}]}
    assert "cancel it" in r.json()["error"]["message"]
    parent, children = a_sweep(stack, owner)
    queued = add_job(stack, owner, status=JobStatus.QUEUED, parent_id=parent)
    r = stack.client.delete(f"/jobs/{parent}")
    assert (r.status_code, r.json()["error"]["details"]) == (409, {"live": [{"id": queued, "status": "queued"}]})
    assert counts(stack, [parent, *children, queued]) == (4, 2, 5) and len(stored(stack, children[0])) == 3
    assert counts(stack, [running]) == (1, 0, 1) and stored(stack, running) == [f"jobs/{running}/preview.png"]
    stack.client.post(f"/jobs/{queued}/cancel")
    assert stack.client.delete(f"/jobs/{parent}").json()["job_ids"] == [parent, *children, queued]


def test_a_store_failure_half_way_leaves_every_row_and_the_retry_finishes(services_stack: Any) -> None:
    stack = services_stack
    owner = key_id(stack)
    parent, children = a_sweep(stack, owner)
    family = [parent, *children]
    keys = sorted(k for j in family for k in stored(stack, j))
    # Objects go in key order: the one in the middle never gets deleted through this proxy (its DELETE is cut).
    victim = keys[len(keys) // 2]
    port = int(stack.settings.s3_endpoint.rsplit(":", 1)[1])
    proxy = TripwireProxy(port, f"DELETE /{stack.settings.s3_bucket}/{victim} ".encode(), on_trip=lambda: None)
    proxy.open()
    try:
        flaky = client_for(stack, s3_endpoint=f"127.0.0.1:{proxy.port}", store_retries=1, store_backoff_seconds=0.05)
        r = flaky.delete(f"/jobs/{parent}")
        assert (r.status_code, r.json()["error"]["code"]) == (503, "store_unavailable")
        assert proxy.tripped.is_set()
        left = sorted(k for j in family for k in stored(stack, j))
        assert left == keys[keys.index(victim) :]  # those before it are gone, it and the rest are not
        assert counts(stack, family) == (3, 2, 5)  # but every row is still there, so the job still shows
        assert stack.client.get(f"/jobs/{children[0]}").status_code == 200
    finally:
        proxy.cut()
    r = stack.client.delete(f"/jobs/{parent}")  # the same delete again, through the store: it finishes
    assert (r.status_code, r.json()["objects"]) == (200, len(left))
    assert [stored(stack, j) for j in family] == [[], [], []] and counts(stack, family) == (0, 0, 0)


def test_storage_of_a_key(stack: Any) -> None:
    owner = key_id(stack)
    empty = stack.client.get("/keys/me/storage").json()
    assert empty == {"artifacts_bytes": 0, "datasets_bytes": 0, "models_bytes": 0, "total_bytes": 0, "jobs": 0,
                     "artifacts": 0, "datasets": 0, "models": 0, "checkpoints": 0}  # fmt: skip
    parent, _ = a_sweep(stack, owner)
    theirs = add_job(stack, key_id(stack, stack.other_key), status=JobStatus.SUCCEEDED)
    add_artifact(stack, theirs, "big.bin", b"x" * 1000, "application/octet-stream")
    with stack.session() as s:
        s.add(Dataset(owner_id=owner, name="d", key_prefix="datasets/d", size_bytes=12345))
        s.add(Model(owner_id=owner, name="m", kind="facenet", key="models/m/w.pt", filename="w.pt", size=678,
                    sha256=hashlib.sha256(b"").hexdigest()))  # fmt: skip
    mine = stack.client.get("/keys/me/storage").json()
    assert mine == {"artifacts_bytes": 33, "datasets_bytes": 12345, "models_bytes": 678,
                    "total_bytes": 33 + 12345 + 678, "jobs": 3, "artifacts": 5, "datasets": 1, "models": 1,
                    "checkpoints": 2}  # fmt: skip
    assert stack.other.get("/keys/me/storage").json()["artifacts_bytes"] == 1000
    stack.client.delete(f"/jobs/{parent}")
    after = stack.client.get("/keys/me/storage").json()
    assert (after["artifacts_bytes"], after["jobs"], after["total_bytes"]) == (0, 0, 12345 + 678)
