"""`POST /verify` end to end: uploads and dataset images through a real worker, 202, and every 4xx."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from client.sdk import Client
from jobs.models import Job, Model, new_id
from jobs.states import JobStatus, utcnow
from tests.support.faces import orl_model_folder, post_verify, register_model
from tests.support.factories import add_job, bomb_png, key_id, make_zip, upload
from tests.support.services import Stack
from tests.support.threads import one_torch_thread


@pytest.fixture(scope="module")
def orl_model(orl_dir: Path) -> tuple[Path, tuple[str, ...]]:
    return orl_model_folder(orl_dir)


class LocalVerifier:
    """What the verify job must give, computed in this process: the same model files, the runner's
    default embedding settings, one MTCNN detector for every image."""

    def __init__(self, folder: Path) -> None:
        from ml.faces.detect import make_detector
        from ml.faces.embed import EmbedSettings
        from ml.faces.models import load_trained_model, read_threshold

        self.model = load_trained_model(folder, "local")
        self.settings = EmbedSettings()
        self.detector = make_detector(self.settings.detector, "cpu")
        similarity = read_threshold(folder)
        assert similarity is not None, f"{folder} has no metrics.json threshold"
        self.threshold = 1.0 - similarity  # the runner's cosine-distance threshold

    def embedding(self, data: bytes) -> Any:
        from ml.faces.embed import embed_image

        with one_torch_thread():  # as the worker runs (FACEJOBS_TORCH_THREADS=1)
            out = embed_image(data, self.model, self.settings, "cpu", self.detector)
        assert isinstance(out, tuple), out
        return out[0].astype("float64")

    def distance(self, a: bytes, b: bytes) -> float:
        import numpy as np

        return 1.0 - float(np.dot(self.embedding(a), self.embedding(b)))


def unseen_people_separation(local: LocalVerifier, orl_dir: Path, people: list[str]) -> dict[str, float]:
    """Every pair of the unseen people's 10 images each: mean same- and different-person distance, and
    the AUC of -distance for "same person" (what the model guarantees on people it never saw, where a
    single pair's verdict depends on float sums, hence on the machine and its thread count)."""
    import numpy as np

    from ml.metrics.verification import auc, roc_curve

    keys = [(who, n) for who in people for n in range(1, 11)]
    emb = np.stack([local.embedding((orl_dir / who / f"{n}.pgm").read_bytes()) for who, n in keys])
    who = np.array([k[0] for k in keys])
    i, j = np.triu_indices(len(keys), 1)
    distance = 1.0 - np.einsum("ij,ij->i", emb[i], emb[j])
    same = who[i] == who[j]
    fpr, tpr, _ = roc_curve(-distance, same)
    return {
        "same_pairs": int(same.sum()),
        "different_pairs": int((~same).sum()),
        "mean_same": float(distance[same].mean()),
        "mean_different": float(distance[~same].mean()),
        "auc": float(auc(fpr, tpr)),
        "accuracy_at_threshold": float(((distance <= local.threshold) == same).mean()),
    }


def assert_job_verdict(body: dict[str, Any], local: LocalVerifier, a: bytes, b: bytes, model: str) -> None:
    """The job's answer is the local distance, judged by the model's own threshold."""
    assert body["distance"] == pytest.approx(local.distance(a, b), abs=1e-4)
    assert body["distance"] == pytest.approx(1.0 - body["similarity"], abs=1e-9)
    assert body["threshold"] == pytest.approx(local.threshold, abs=1e-9)
    assert body["threshold_source"] == "model metrics" and body["model"] == model
    assert body["same"] is (body["distance"] <= body["threshold"])


@pytest.mark.slow
@pytest.mark.services
def test_same_person_and_different_people_through_a_worker(
    stack: Stack, orl_dir: Path, orl_model: tuple[Path, tuple[str, ...]], artifacts_dir: Path
) -> None:
    folder, trained_on = orl_model
    unseen = sorted({p.name for p in orl_dir.iterdir()} - set(trained_on), key=lambda n: int(n[1:]))
    assert len(unseen) == 10
    p, q = unseen[0], unseen[1]  # people the model never saw
    a, a2, b = (orl_dir / p / "1.pgm").read_bytes(), (orl_dir / p / "6.pgm").read_bytes(), (orl_dir / q / "1.pgm")
    model = f"job:{register_model(stack, folder)}"
    members = {f"{who}/{n}.pgm": (orl_dir / who / f"{n}.pgm").read_bytes() for who in (p, q) for n in (2, 1)}
    ds = upload(stack.client, "/datasets", "two.zip", make_zip(members))
    assert ds.status_code == 201, ds.text
    stack.start_worker(queues="cpu")
    local = LocalVerifier(folder)

    same = post_verify(stack.client, a, a2, timeout=120, model=model)
    assert same.status_code == 200, same.text
    body = same.json()
    assert_job_verdict(body, local, a, a2, model)
    assert set(body["faces"]) == {"image_a", "image_b"} and body["faces"]["image_a"]["prob"] > 0.95
    # Each face's 5 landmarks lie in its box; the aligned crop the model embedded is an artifact; the
    # model's own accuracy at its threshold comes from its metrics.json.
    for name, face in body["faces"].items():
        assert len(face["landmarks"]) == 5 and face["crop"] == f"crops/{name}.png"
        assert all(face["x1"] <= x <= face["x2"] and face["y1"] <= y <= face["y2"] for x, y in face["landmarks"])
        crop = stack.store.get_bytes(f"jobs/{body['job_id']}/{face['crop']}")
        assert Image.open(io.BytesIO(crop)).size == (112, 112)
        view = stack.store.get_bytes(f"jobs/{body['job_id']}/{face['view']}")
        assert Image.open(io.BytesIO(view)).size == (face["image_width"], face["image_height"]) == (92, 112)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert body["evaluation"] == {k: metrics[k] for k in ("accuracy", "accuracy_std", "auc", "num_pairs")}

    # The second image by reference to the caller's dataset, through the client.
    with Client("http://testserver", stack.key, http=stack.client) as client:
        diff = client.verify(orl_dir / p / "1.pgm", f"dataset:{ds.json()['id']}/{q}/1.pgm", model, timeout=60)
    assert_job_verdict(diff, local, a, b.read_bytes(), model)

    # Which side of the threshold one pair falls on is the model's call, and a small model's call on
    # one pair differs between machines: what holds is the separation over all pairs of unseen people.
    separation = unseen_people_separation(local, orl_dir, unseen)
    pairs = {f"{p}/1 vs {p}/6": body, f"{p}/1 vs {q}/1": diff, "unseen_people": separation}
    (artifacts_dir / f"verify_route_{stack.name}.json").write_text(json.dumps(pairs, indent=1))
    assert (separation["same_pairs"], separation["different_pairs"]) == (450, 4500)
    assert separation["mean_same"] < separation["mean_different"] - 0.2, separation
    assert separation["auc"] >= 0.9, separation

    job = stack.client.get(f"/jobs/{diff['job_id']}").json()
    assert (job["kind"], job["queue"], job["status"]) == ("verify", "cpu", "succeeded")
    assert job["params"]["image_a"] == "input:image_a" and job["params"]["image_b"].startswith("dataset:")
    assert job["result"]["distance"] == diff["distance"]
    assert stack.other.get(f"/jobs/{diff['job_id']}").status_code == 404  # owned by the caller's key

    # A decodable image with no face: the job fails on the caller's input, answered 422 with its reason.
    blank = io.BytesIO()
    Image.new("L", (92, 112), 128).save(blank, "PNG")
    none = post_verify(stack.client, a, blank.getvalue(), timeout=60, model=model)
    assert none.status_code == 422, none.text
    assert none.json()["error"]["code"] == "verify_failed" and "no_face" in none.json()["error"]["message"]


@pytest.mark.services
def test_no_worker_answers_202_with_the_queued_job(stack: Stack, orl_dir: Path) -> None:
    owner = key_id(stack)
    model_job = add_job(stack, owner, status=JobStatus.SUCCEEDED, kind="train_embedding")
    a = (orl_dir / "s1" / "1.pgm").read_bytes()
    resp = post_verify(stack.client, a, a, timeout=0.3, model=f"job:{model_job}")
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    assert resp.headers["location"] == f"/jobs/{job_id}" and resp.json()["status"] == "queued"
    job = stack.client.get(f"/jobs/{job_id}").json()
    assert (job["kind"], job["queue"], job["status"]) == ("verify", "cpu", "queued")
    assert (job["params"]["image_a"], job["params"]["image_b"]) == ("input:image_a", "input:image_b")
    assert stack.store.get_bytes(f"jobs/{job_id}/inputs/image_a") == a


@pytest.mark.services
@pytest.mark.security
def test_bad_requests_get_a_clear_4xx(stack: Stack, orl_dir: Path) -> None:
    owner = key_id(stack)
    good = f"job:{add_job(stack, owner, status=JobStatus.SUCCEEDED, kind='train_embedding')}"
    running = f"job:{add_job(stack, owner, status=JobStatus.RUNNING, kind='train_embedding')}"
    others = f"job:{add_job(stack, key_id(stack, stack.other_key), status=JobStatus.SUCCEEDED, kind='train_embedding')}"
    not_a_model = f"job:{add_job(stack, owner, status=JobStatus.SUCCEEDED, kind='probe')}"
    face = (orl_dir / "s1" / "1.pgm").read_bytes()

    def code(resp: Any) -> tuple[int, str]:
        return resp.status_code, resp.json()["error"]["code"]

    assert code(post_verify(stack.client, b"hello, not an image", face, model=good)) == (400, "invalid_image")
    bomb = post_verify(stack.client, bomb_png(), face, model=good)
    assert code(bomb) == (400, "invalid_image") and "decompression bomb" in bomb.json()["error"]["message"]
    big = post_verify(stack.client, face + b"\0" * (8 * 1024 * 1024), face, model=good)
    assert code(big) == (413, "payload_too_large")
    for model in ("job:nope", others, not_a_model):
        assert code(post_verify(stack.client, face, face, model=model)) == (404, "not_found"), model
    assert code(post_verify(stack.client, face, face, model=running)) == (409, "model_not_ready")
    assert code(post_verify(stack.client, face, face, model="facenet:vggface2")) == (422, "threshold_required")
    theirs = new_id()
    with stack.session() as s:
        s.add(
            Model(
                id=theirs,
                owner_id=key_id(stack, stack.other_key),
                name="w",
                kind="facenet",
                key="models/x/w.pt",
                filename="w.pt",
                size=1,
                sha256="0",
                created_at=utcnow(),
            )
        )
    weights = post_verify(
        stack.client, face, face, model="facenet:vggface2", weights=f"model:{theirs}", threshold="0.6"
    )
    assert code(weights) == (404, "not_found")
    assert code(post_verify(stack.client, face, face, model="nonsense")) == (422, "invalid_params")
    assert code(post_verify(stack.client, face, "dataset:nope/s1/1.pgm", model=good)) == (404, "not_found")
    # Another key's dataset holding that very image reads as unknown; the caller's own copy passes the
    # dataset check (and fails on the path it does not have), so the 404 is the owner check's.
    archive = make_zip({"s1/1.pgm": face, "s2/1.pgm": (orl_dir / "s2" / "1.pgm").read_bytes()})
    theirs_ds = upload(stack.other, "/datasets", "theirs.zip", archive)
    mine_ds = upload(stack.client, "/datasets", "mine.zip", archive)
    assert (theirs_ds.status_code, mine_ds.status_code) == (201, 201), (theirs_ds.text, mine_ds.text)
    their_image = f"dataset:{theirs_ds.json()['id']}/s1/1.pgm"
    refused = post_verify(stack.client, face, their_image, timeout=1, model=good)
    assert refused.status_code == 404, refused.text
    assert code(refused) == (404, "not_found") and theirs_ds.json()["id"] in refused.json()["error"]["message"]
    missing_path = post_verify(stack.client, face, f"dataset:{mine_ds.json()['id']}/s1/9.pgm", timeout=1, model=good)
    assert code(missing_path) == (404, "image_not_found")
    assert code(post_verify(stack.client, face, "aGVsbG8=", model=good)) == (422, "invalid_image_ref")
    assert code(post_verify(stack.client, face, face, model=good, colour="red")) == (422, "unknown_field")
    assert code(post_verify(stack.client, face, face, timeout=1000, model=good)) == (422, "invalid_request")
    missing = stack.client.post("/verify", files={"image_a": ("a.pgm", face)}, data={"model": good})
    assert code(missing) == (422, "missing_image")
    assert code(stack.client.post("/verify", json={"model": good})) == (415, "multipart_required")
    with stack.session() as s:
        assert {j.kind for j in s.query(Job).all()} == {"train_embedding", "probe"}  # nothing was submitted
