"""The `embed` kind end to end: an ORL upload through the API, a real worker, and every output checked."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from client.sdk import Client
from jobs.models import Dataset
from jobs.store import join_key
from ml.metrics.verification import auc, roc_curve
from tests.support.faces import orl_model_folder, register_model
from tests.support.factories import make_zip, upload
from tests.support.services import Stack

PEOPLE = [f"s{i}" for i in range(1, 11)]  # 100 images: the detector's CPU time stays a few seconds
# Decodable images the API stores, which still give no face (reason per file).
EXTRAS_REASONS = {
    "zz_extras/tiny.png": "too_small",  # 1 pixel
    "zz_extras/blank.png": "no_face",  # a grey frame
    "zz_extras/big.png": "too_large",  # 1,440,000 pixels, over the job's max_image_pixels
}
# Objects the API would refuse at upload, put straight into the dataset's stored files (a store gone bad).
STORED_REASONS = {"zz_extras/corrupt.jpg": "undecodable", "zz_extras/notes.png": "not_image"}


def _png(size: tuple[int, int], value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, "PNG")
    return buf.getvalue()


def _artifact(client: Client, job_id: str, name: str, dest: Path) -> Path:
    return client.download_artifact(job_id, name, dest / name)


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.pretrained("orl_model")
def test_an_orl_upload_is_embedded_face_by_face_with_failure_rows(
    stack: Stack, orl_dir: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    folder, _ = orl_model_folder(orl_dir)
    model = f"job:{register_model(stack, folder)}"
    members = {f"{p}/{f.name}": f.read_bytes() for p in PEOPLE for f in sorted((orl_dir / p).iterdir())}
    members["zz_extras/tiny.png"] = _png((1, 1))
    members["zz_extras/blank.png"] = _png((92, 112))
    members["zz_extras/big.png"] = _png((1200, 1200))
    members["zz_extras/notes.txt"] = b"not an image: the API skips it by its extension"
    resp = upload(stack.client, "/datasets", "orl10.zip", make_zip(members))
    assert resp.status_code == 201, resp.text
    ds = resp.json()
    assert ds["num_files"] == 103 and ds["skipped"] == ["zz_extras/notes.txt"]

    corrupt = b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50
    with stack.session() as s:
        row = s.get(Dataset, ds["id"])
        assert row is not None
        for rel, data in (("zz_extras/corrupt.jpg", corrupt), ("zz_extras/notes.png", b"plain text, no image")):
            stack.store.put_bytes(join_key(row.key_prefix, rel), data, "application/octet-stream")
        row.files = {"keys": [*row.files["keys"], *STORED_REASONS]}
    keys = [k for k in members if not k.endswith(".txt")] + list(STORED_REASONS)

    params = {
        "dataset": f"dataset:{ds['id']}",
        "model": model,
        "min_face_size": 40,
        "chunk_size": 40,  # three chunks, each checkpointed
        "max_image_pixels": 1_000_000,
        "detect_batch_size": 50,
    }
    job_id = stack.client.post("/jobs", json={"kind": "embed", "params": params}).json()["id"]
    stack.start_worker()
    job = stack.wait_job(job_id, timeout=240)
    assert job["status"] == "succeeded", job["error"]
    failures_expected = {**EXTRAS_REASONS, **STORED_REASONS}
    assert job["result"]["files"] == len(keys) == 105
    assert (job["result"]["faces"], job["result"]["failures"]) == (100, 5)

    with Client("http://testserver", stack.key, http=stack.client) as client:
        names = {a["name"] for a in client.artifacts(job_id)}
        assert names == {"embeddings.npy", "index.csv", "failures.csv", "config.json"}
        emb = np.load(_artifact(client, job_id, "embeddings.npy", tmp_path))
        index = list(csv.DictReader(_artifact(client, job_id, "index.csv", tmp_path).open()))
        failures = list(csv.DictReader(_artifact(client, job_id, "failures.csv", tmp_path).open()))
        config = json.loads(_artifact(client, job_id, "config.json", tmp_path).read_text())

    # Every file: exactly one face row or exactly one failure row, never both.
    face_keys = [r["key"] for r in index]
    assert len(face_keys) == len(set(face_keys)) == 100 and {r["face"] for r in index} == {"0"}
    assert {r["key"]: r["reason"] for r in failures} == failures_expected and len(failures) == 5
    assert sorted(face_keys + [r["key"] for r in failures]) == sorted(keys)
    assert [int(r["row"]) for r in index] == list(range(100))
    assert emb.shape == (100, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert min(float(r["prob"]) for r in index) > 0.95 and {r["model"] for r in index} == {model}

    assert (config["model"], config["dataset"], config["job_id"]) == (model, params["dataset"], job_id)
    assert (config["files"], config["faces"], config["failures"]) == (105, 100, 5)
    assert config["settings"]["detector"]["min_face_size"] == 40 and config["settings"]["align_size"] == 112
    assert config["failure_reasons"] == {"too_small": 1, "no_face": 1, "too_large": 1, "undecodable": 1, "not_image": 1}

    # The embeddings separate the ten people.
    people = np.array([k.split("/")[0] for k in face_keys])
    a, b = np.triu_indices(len(people), 1)
    fpr, tpr, _ = roc_curve(np.einsum("ij,ij->i", emb[a], emb[b]), people[a] == people[b])
    pair_auc = auc(fpr, tpr)
    (artifacts_dir / f"embed_job_orl10_{stack.name}.json").write_text(
        json.dumps({"auc_all_pairs": pair_auc, "faces": 100, "failures": failures_expected}, indent=1)
    )
    assert pair_auc >= 0.95


@pytest.mark.slow
@pytest.mark.pretrained("orl_model")
def test_the_demos_builtin_digits_embed_whole_through_a_worker(embedded_stack: Stack, orl_dir: Path) -> None:
    """`make demo`'s embed params: builtin:digits without detection (the ORL model stands in for the
    demo's digits model: what is checked is the path, one row per digit, not the embedding's quality)."""
    stack = embedded_stack
    folder, _ = orl_model_folder(orl_dir)
    params = {"dataset": "builtin:digits", "model": f"job:{register_model(stack, folder)}", "detector": "none"}
    resp = stack.client.post("/jobs", json={"kind": "embed", "params": {**params, "flip_tta": False}})
    assert resp.status_code == 201, resp.text
    stack.start_worker()
    job = stack.wait_job(resp.json()["id"], timeout=180)
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert (result["files"], result["faces"], result["failures"], result["embedding_size"]) == (1797, 1797, 0, 64)
