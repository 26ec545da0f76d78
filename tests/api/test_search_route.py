"""`POST /search` end to end: an ORL gallery index, one image (or one embedding) through a real worker,
the warm worker's cache, and every 4xx."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from jobs.models import Job
from jobs.states import JobStatus
from tests.support.faces import register_model
from tests.support.factories import add_job, bomb_png, key_id
from tests.support.jobs import download, submit
from tests.support.orl_gallery import embed_orl_part, orl_gallery_model
from tests.support.services import Stack


def post_search(stack: Stack, image: bytes | None = None, timeout: float = 120, **fields: str) -> Any:
    """POST /search as multipart: the image as a file part, every other field as a text part."""
    files: dict[str, Any] = {name: (None, value) for name, value in fields.items()}
    if image is not None:
        files["image"] = ("probe.pgm", image, "image/x-portable-graymap")
    return stack.client.post("/search", files=files, params={"timeout": timeout})


def code(resp: Any) -> tuple[int, str]:
    return resp.status_code, resp.json()["error"]["code"]


def gallery_index(stack: Stack, orl_dir: Path) -> tuple[str, str, str, Path]:
    """(model ref, gallery embed job id, index job id, model folder): the ORL gallery indexed through jobs."""
    folder = orl_gallery_model(orl_dir, "se_resnet18")
    model = f"job:{register_model(stack, folder)}"
    _, gallery_job = embed_orl_part(stack, orl_dir, "gallery", model)
    stack.start_worker()
    assert stack.wait_job(gallery_job, timeout=240)["status"] == "succeeded"
    index_id = submit(stack, {"embed_jobs": [f"job:{gallery_job}"]}, kind="index")
    index = stack.wait_job(index_id, timeout=120)
    assert index["status"] == "succeeded", index["error"]
    return model, gallery_job, index_id, folder


@pytest.mark.slow
@pytest.mark.services
def test_an_image_is_searched_against_an_index_and_a_repeat_hits_the_cache(
    stack: Stack, orl_dir: Path, artifacts_dir: Path
) -> None:
    model, gallery_job, index_id, _ = gallery_index(stack, orl_dir)
    threshold = stack.wait_job(index_id)["result"]["threshold"]
    gallery = np.load(io.BytesIO(download(stack, f"/jobs/{gallery_job}/artifacts/embeddings.npy")))
    who = json.loads(download(stack, f"/jobs/{index_id}/artifacts/idmap.json"))
    probe = (orl_dir / "s3" / "7.pgm").read_bytes()  # a mated probe: s3 is in the gallery, image 7 is not

    timings = []
    bodies = []
    for _ in range(3):
        started = time.perf_counter()
        resp = post_search(stack, probe, index=f"job:{index_id}", detector="none", k="5")
        timings.append(time.perf_counter() - started)
        assert resp.status_code == 200, resp.text
        bodies.append(resp.json())
    body = bodies[0]
    assert (body["index"], body["model"], body["threshold"]) == (f"job:{index_id}", model, threshold)
    (face,) = body["faces"]
    assert face["box"] == [0.0, 0.0, 91.0, 111.0] and face["landmarks"] is None and face["score"] == 1.0
    assert face["crop"] == "faces/0.png" and face["crop_url"] == f"/jobs/{body['job_id']}/artifacts/faces/0.png"
    crop = Image.open(io.BytesIO(download(stack, face["crop_url"])))
    assert crop.size == (40, 40)  # the whole frame at the model's input (no alignment without detection)
    emb = np.array(face["embedding"])
    assert emb.shape == (64,) and abs(np.linalg.norm(emb) - 1) < 1e-5
    sims = gallery.astype(np.float64) @ emb
    top = np.argsort(-sims, kind="stable")[:5]
    assert [m["rank"] for m in face["matches"]] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([m["similarity"] for m in face["matches"]], sims[top], atol=1e-5)
    assert [m["identity"] for m in face["matches"]] == [who["identities"][i] for i in top]
    assert [m["source"] for m in face["matches"]] == [who["keys"][i].rsplit("#", 1)[0] for i in top]
    assert face["decision"] == (who["identities"][top[0]] if sims[top[0]] >= threshold else "unknown")
    # The first query loaded the index and the model; the repeats found both in the pool process's cache.
    assert body["cache"] == {"index_hit": False, "model_hit": False}
    assert [b["cache"] for b in bodies[1:]] == [{"index_hit": True, "model_hit": True}] * 2
    assert [b["faces"][0]["embedding"] for b in bodies[1:]] == [face["embedding"]] * 2

    # One embedding instead of an image: the gallery's own row finds itself first.
    row = gallery[10].tolist()
    by_embedding = post_search(stack, None, index=f"job:{index_id}", embedding=json.dumps(row))
    assert by_embedding.status_code == 200, by_embedding.text
    (only,) = by_embedding.json()["faces"]
    assert only["matches"][0]["source"] == who["keys"][10].rsplit("#", 1)[0]
    assert only["matches"][0]["similarity"] == pytest.approx(1.0, abs=1e-5) and only["box"] is None

    # No index: the faces and their embeddings only.
    embed_only = post_search(stack, probe, model=model, detector="none")
    assert embed_only.status_code == 200, embed_only.text
    assert embed_only.json()["faces"][0]["embedding"] == face["embedding"]
    assert embed_only.json()["faces"][0]["matches"] == [] and embed_only.json()["faces"][0]["decision"] is None
    job = stack.client.get(f"/jobs/{body['job_id']}").json()
    assert (job["kind"], job["queue"], job["status"]) == ("search_one", "cpu", "succeeded")
    assert stack.other.get(f"/jobs/{body['job_id']}").status_code == 404

    # A blank frame through MTCNN: no face; with an index that is 422, without one 200 and no faces.
    blank = io.BytesIO()
    Image.new("L", (92, 112), 128).save(blank, "PNG")
    none = post_search(stack, blank.getvalue(), index=f"job:{index_id}")
    assert code(none) == (422, "no_face"), none.text
    empty = post_search(stack, blank.getvalue(), model=model)
    assert empty.status_code == 200 and empty.json()["faces"] == [], empty.text
    warm = [b["worker_seconds"] for b in bodies[1:]]
    figures = {
        "seconds_per_request": timings,
        "worker_seconds_first": body["worker_seconds"],
        "worker_seconds_warm": warm,
    }
    (artifacts_dir / f"search_route_{stack.name}.json").write_text(json.dumps(figures, indent=1))


@pytest.mark.services
@pytest.mark.security
def test_bad_searches_get_a_clear_4xx_and_submit_nothing(stack: Stack, orl_dir: Path) -> None:
    owner = key_id(stack)
    dim = {"dim": 64, "rows": 1, "model": "job:m"}
    good = f"job:{add_job(stack, owner, status=JobStatus.SUCCEEDED, kind='index', result=dim)}"
    running = f"job:{add_job(stack, owner, status=JobStatus.RUNNING, kind='index')}"
    theirs = f"job:{add_job(stack, key_id(stack, stack.other_key), status=JobStatus.SUCCEEDED, kind='index')}"
    not_index = f"job:{add_job(stack, owner, status=JobStatus.SUCCEEDED, kind='embed')}"
    face = (orl_dir / "s1" / "1.pgm").read_bytes()

    assert code(post_search(stack, b"hello, not an image", index=good)) == (400, "invalid_image")
    bomb = post_search(stack, bomb_png(), index=good)
    assert code(bomb) == (400, "invalid_image") and "decompression bomb" in bomb.json()["error"]["message"]
    assert code(post_search(stack, face + b"\0" * (8 * 1024 * 1024), index=good)) == (413, "payload_too_large")
    for index in ("job:nope", theirs, not_index):
        assert code(post_search(stack, face, index=index)) == (404, "not_found"), index
    assert code(post_search(stack, face, index=running)) == (409, "index_not_ready")
    assert code(post_search(stack, None, index=good, embedding=json.dumps([0.1] * 63))) == (422, "embedding_size")
    assert code(post_search(stack, None, index=good, embedding="[1, 2, oops")) == (422, "invalid_embedding")
    assert code(post_search(stack, None, embedding=json.dumps([0.1] * 64))) == (422, "missing_index")
    assert code(post_search(stack, face)) == (422, "missing_model")
    assert code(post_search(stack, face, index=good, model="job:another")) == (422, "model_mismatch")
    assert code(post_search(stack, face, index=good, colour="red")) == (422, "unknown_field")
    assert code(post_search(stack, face, index=good, k="500")) == (422, "invalid_params")
    assert code(post_search(stack, None, index=good)) == (422, "missing_image")
    assert code(stack.client.post("/search", json={"index": good})) == (415, "multipart_required")
    with stack.session() as s:
        assert {j.kind for j in s.query(Job).all()} == {"index", "embed"}  # nothing was submitted
