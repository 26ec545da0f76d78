"""GET /datasets/{id}/files (pages per identity, an embed job's faces and failures) and the thumbnails."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from jobs.states import JobStatus
from tests.support.factories import add_artifact, add_job, key_id, make_zip, upload
from tests.support.services import Stack

COLUMNS = ["key", "face", "x1", "y1", "x2", "y2", "prob", *[f"lm{i}_{a}" for i in range(5) for a in "xy"],
           "image_width", "image_height"]  # fmt: skip


def face_row(key: str, face: int, x: float) -> dict[str, Any]:
    lms = {f"lm{i}_{a}": x + i if a == "x" else 50 + i for i in range(5) for a in "xy"}
    return {"key": key, "face": face, "x1": x, "y1": 20, "x2": x + 60, "y2": 100, "prob": 0.99, **lms,
            "image_width": 92, "image_height": 112}  # fmt: skip


def csv_bytes(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def embed_job(stack: Stack, dataset_id: str, status: JobStatus = JobStatus.SUCCEEDED, key: str | None = None) -> str:
    """An embed job of the dataset as a worker leaves it: index.csv and failures.csv artifacts."""
    job_id = add_job(
        stack, key_id(stack, key), status=status, kind="embed", params={"dataset": f"dataset:{dataset_id}"}
    )
    faces = [face_row("s1/1.pgm", 0, 10.5), face_row("s1/2.pgm", 0, 12), face_row("s1/2.pgm", 1, 30),
             face_row("s2/1.pgm", 0, 8), face_row("s2/10.pgm", 0, 9)]  # fmt: skip
    add_artifact(stack, job_id, "index.csv", csv_bytes(COLUMNS, faces), "text/csv")
    failures = [{"key": "s2/2.pgm", "reason": "no_face", "detail": "MTCNN found no face"}]
    add_artifact(stack, job_id, "failures.csv", csv_bytes(["key", "reason", "detail"], failures), "text/csv")
    return job_id


@pytest.fixture
def dataset(stack: Stack, orl_dir: Path) -> dict[str, Any]:
    names = ["s1/1.pgm", "s1/2.pgm", "s2/10.pgm", "s2/1.pgm", "s2/2.pgm"]  # s2/10 after s2/2 in natural order
    members = {n: (orl_dir / n.split("/")[0] / n.split("/")[1]).read_bytes() for n in names}
    resp = upload(stack.client, "/datasets", "five.zip", make_zip(members))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


@pytest.mark.services
def test_pages_per_identity_with_an_embed_jobs_faces_and_failures(stack: Stack, dataset: dict[str, Any]) -> None:
    base = f"/datasets/{dataset['id']}/files"
    first = stack.client.get(base, params={"limit": 3}).json()
    assert [f["path"] for f in first["data"]] == ["s1/1.pgm", "s1/2.pgm", "s2/1.pgm"]
    assert (first["total"], first["offset"], first["next_offset"], first["embed"]) == (5, 0, 3, None)
    assert first["identities"] == [{"name": "s1", "files": 2}, {"name": "s2", "files": 3}]
    assert first["data"][0] == {"path": "s1/1.pgm", "identity": "s1", "faces": None, "failure": None,
                                "thumbnail": f"/datasets/{dataset['id']}/thumbnails/s1/1.pgm"}  # fmt: skip
    rest = stack.client.get(base, params={"limit": 3, "offset": 3}).json()
    assert [f["path"] for f in rest["data"]] == ["s2/2.pgm", "s2/10.pgm"] and rest["next_offset"] is None

    job_id = embed_job(stack, dataset["id"])
    page = stack.client.get(base, params={"embed": f"job:{job_id}", "identity": "s2"}).json()
    assert page["embed"] == {"job_id": job_id, "files": 5, "faces": 5, "failures": 1, "failure_reasons": {"no_face": 1}}
    by_path = {f["path"]: f for f in page["data"]}
    assert list(by_path) == ["s2/1.pgm", "s2/2.pgm", "s2/10.pgm"] and page["total"] == 3
    assert by_path["s2/2.pgm"]["faces"] == [] and by_path["s2/2.pgm"]["failure"] == {
        "reason": "no_face", "detail": "MTCNN found no face"}  # fmt: skip
    face = by_path["s2/1.pgm"]["faces"][0]
    assert face["box"] == [8.0, 20.0, 68.0, 100.0] and face["landmarks"][4] == [12.0, 54.0]
    assert (face["prob"], face["image_width"], face["image_height"]) == (0.99, 92, 112)
    two = stack.client.get(base, params={"embed": job_id, "identity": "s1"}).json()["data"][1]["faces"]
    assert [f["face"] for f in two] == [0, 1]
    failed = stack.client.get(base, params={"embed": f"job:{job_id}", "failed": "true"}).json()
    assert [f["path"] for f in failed["data"]] == ["s2/2.pgm"] and failed["total"] == 1


@pytest.mark.services
@pytest.mark.security
def test_refusals(stack: Stack, dataset: dict[str, Any], orl_dir: Path) -> None:
    base = f"/datasets/{dataset['id']}/files"

    def code(resp: Any) -> tuple[int, str]:
        return resp.status_code, resp.json()["error"]["code"]

    assert code(stack.other.get(base)) == (404, "not_found")
    assert code(stack.client.get(base, params={"failed": "true"})) == (422, "embed_required")
    assert code(stack.client.get(base, params={"limit": 201})) == (422, "limit_too_large")
    assert code(stack.client.get(base, params={"embed": "job:nope"})) == (404, "not_found")
    theirs = embed_job(stack, dataset["id"], key=stack.other_key)
    assert code(stack.client.get(base, params={"embed": f"job:{theirs}"})) == (404, "not_found")
    running = embed_job(stack, dataset["id"], JobStatus.RUNNING)
    assert code(stack.client.get(base, params={"embed": f"job:{running}"})) == (409, "embed_not_finished")
    other_ds = upload(stack.client, "/datasets", "one.zip", make_zip({"s1/1.pgm": (orl_dir / "s1/1.pgm").read_bytes()}))
    elsewhere = embed_job(stack, other_ds.json()["id"])
    assert code(stack.client.get(base, params={"embed": f"job:{elsewhere}"})) == (422, "other_dataset")


@pytest.mark.services
@pytest.mark.security
def test_thumbnails_are_small_pngs_of_the_datasets_own_images(stack: Stack, dataset: dict[str, Any]) -> None:
    thumbs = f"/datasets/{dataset['id']}/thumbnails"
    resp = stack.client.get(f"{thumbs}/s2/10.pgm", params={"size": 64})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert resp.headers["cache-control"] == "private, max-age=3600"
    with Image.open(io.BytesIO(resp.content)) as im:
        assert (im.format, im.size, im.mode) == ("PNG", (53, 64), "RGB")  # 92x112, aspect kept
    assert Image.open(io.BytesIO(stack.client.get(f"{thumbs}/s1/1.pgm").content)).size == (92, 112)  # never enlarged

    def code(resp: Any) -> tuple[int, str]:
        return resp.status_code, resp.json()["error"]["code"]

    assert code(stack.other.get(f"{thumbs}/s1/1.pgm")) == (404, "not_found")
    assert code(stack.client.get(f"{thumbs}/s1/9.pgm")) == (404, "image_not_found")
    assert code(stack.client.get(f"{thumbs}/s1/%2E%2E/s1/1.pgm")) == (404, "image_not_found")  # only listed paths
    assert code(stack.client.get(f"{thumbs}/s1/1.pgm", params={"size": 4096})) == (422, "invalid_request")
