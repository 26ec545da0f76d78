"""The Python client against the real app (in-process through the TestClient's transport)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from client.sdk import ApiError, Client, WaitTimeout
from jobs.models import Job, Worker
from jobs.states import JobStatus, utcnow
from tests.support.factories import add_artifact, tiny_weights


@pytest.fixture
def fj(stack: Any) -> Client:
    return Client("http://testserver", stack.key, http=stack.client)


def test_client_jobs_round_trip(stack: Any, fj: Client) -> None:
    first = fj.submit("probe", {"matmul_size": 32}, idempotency_key="once")
    assert fj.submit("probe", {"matmul_size": 32}, idempotency_key="once")["id"] == first["id"]
    ids = [first["id"]] + [fj.submit("probe", queue="cpu")["id"] for _ in range(4)]
    assert fj.get_job(first["id"])["params"]["matmul_size"] == 32
    assert [j["id"] for j in fj.iter_jobs(page_size=2)] == ids[::-1]
    assert [j["id"] for j in fj.list_jobs(limit=2)["data"]] == ids[:2:-1]
    assert fj.list_jobs(kind="probe", status="cancelled")["data"] == []

    assert fj.cancel(ids[1])["status"] == "cancelled"
    assert fj.retry(ids[1])["status"] == "queued"
    events = fj.events(ids[1])
    assert [e["message"] for e in events] == ["queued", "cancelled before it started", "queued again (retry)"]
    assert [e["message"] for e in fj.events(ids[1], after=events[0]["id"])] == [e["message"] for e in events[1:]]
    with pytest.raises(ApiError) as err:
        fj.retry(ids[1])
    assert (err.value.status, err.value.code) == (409, "conflict")
    with pytest.raises(ApiError) as err:
        fj.submit("probe", {"matmul_size": 1})
    assert (err.value.status, err.value.code, err.value.details[0]["loc"]) == (422, "invalid_params", ["matmul_size"])
    with pytest.raises(ApiError) as err:
        fj.get_job("f" * 32)
    assert (err.value.status, err.value.code) == (404, "not_found")

    seen: list[str] = []
    with pytest.raises(WaitTimeout):
        fj.wait(ids[2], timeout=0.25, poll=0.1, on_update=lambda j: seen.append(j["status"]))
    assert len(seen) >= 2 and set(seen) == {"queued"}
    with stack.session() as s:
        s.execute(update(Job).where(Job.id == ids[2]).values(status=JobStatus.SUCCEEDED, result={"gflops": 1.5}))
    assert fj.wait(ids[2], timeout=5, poll=0.05)["result"] == {"gflops": 1.5}


def test_client_files_and_infrastructure(stack: Any, fj: Client, orl_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mini-orl"
    for ident in ("s5", "s6"):
        (folder / ident).mkdir(parents=True)
        for n in (1, 2):
            shutil.copyfile(orl_dir / ident / f"{n}.pgm", folder / ident / f"{n}.pgm")
    (folder / ".hidden").write_text("left out")
    ds = fj.upload_dataset(folder)
    assert (ds["name"], ds["layout"], ds["num_files"], ds["num_identities"], ds["skipped"]) == (
        "mini-orl",
        "identities",
        4,
        2,
        [],
    )
    assert fj.get_dataset(ds["id"])["ref"] == f"dataset:{ds['id']}"
    assert [d["id"] for d in fj.list_datasets()["data"]] == [ds["id"]]

    weights = tmp_path / "facenet.pt"
    weights.write_bytes(tiny_weights())
    model = fj.upload_model(weights, kind="facenet", meta={"pretrained": "vggface2"})
    size = len(tiny_weights())
    assert (model["filename"], model["size"], model["meta"]) == ("facenet.pt", size, {"pretrained": "vggface2"})
    assert fj.get_model(model["id"]) == model
    assert [m["id"] for m in fj.list_models()["data"]] == [model["id"]]
    with pytest.raises(ApiError) as err:
        fj.upload_model(weights, kind="generator")
    assert (err.value.status, err.value.code) == (400, "not_torchscript")

    job_id = fj.submit("probe")["id"]
    grid = bytes(range(256)) * 1000
    add_artifact(stack, job_id, "images/grid.png", grid, "image/png")
    assert [a["name"] for a in fj.artifacts(job_id)] == ["images/grid.png"]
    dest = fj.download_artifact(job_id, "images/grid.png", tmp_path / "out" / "grid.png")
    assert dest.read_bytes() == grid
    with pytest.raises(ApiError) as err:
        fj.download_artifact(job_id, "nope.png", tmp_path / "nope.png")
    assert err.value.status == 404 and not (tmp_path / "nope.png").exists()

    with stack.session() as s:
        s.add(Worker(id="w1", hostname="h", pid=1, queues="gpu,cpu", last_heartbeat=utcnow()))
    assert [(w["id"], w["stale"]) for w in fj.workers()] == [("w1", False)]
    assert "probe" in {k["name"] for k in fj.kinds()}
    assert fj.health() == {"status": "ok"}
    assert fj.ready()["status"] == "ok"
