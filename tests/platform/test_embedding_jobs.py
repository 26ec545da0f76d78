"""The `train_embedding` and `evaluate` kinds end to end: API -> broker -> a real worker process -> store.

Training runs on sklearn's digits at 16x16 with a narrow se_resnet18, so one job takes seconds on a
CPU; what is checked is the platform path (kill, lease expiry, resume, artifacts), not the quality
(tests/ml/arcface/test_train_embedding.py holds the quality bars).
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.factories import make_zip, upload
from tests.support.jobs import FAST_LEASES, download, submit
from tests.support.jobs import wait_job_until as wait_for
from tests.support.services import Stack

EPOCHS = 4
# The 1,348 training images of 16x16 digits, base width 8: an epoch is a few seconds on 2 busy cores.
TRAIN_PARAMS: dict[str, Any] = {
    "dataset": "builtin:digits",
    "backbone": "se_resnet18",
    "base_width": 8,
    "embedding_size": 32,
    "image_size": 16,
    "epochs": EPOCHS,
    "batch_size": 64,
    "lr": 0.1,
    "split_by": "sample",
    "augment_shift": 1,
    "max_pairs": 500,
    "seed": 3,
}
MODEL_ARTIFACTS = ["arcface.pt", "backbone.pt", "config.json", "distances.png", "loss.png", "metrics.json", "pca.png",
                   "roc.png"]  # fmt: skip


def rounded(value: Any, places: int = 3) -> Any:
    """`value` with every float rounded to `places` decimals (NaN kept comparable), recursively."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else round(value, places)
    if isinstance(value, dict):
        return {k: rounded(v, places) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, places) for v in value]
    return value


def artifact_names(stack: Stack, job_id: str) -> list[str]:
    return sorted(a["name"] for a in stack.client.get(f"/jobs/{job_id}/artifacts").json())


def events(stack: Stack, job_id: str, type_: str) -> list[dict[str, Any]]:
    page = stack.client.get(f"/jobs/{job_id}/events", params={"type": type_, "limit": 200}).json()
    data: list[dict[str, Any]] = page["data"]
    return data


def metrics_json(stack: Stack, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(download(stack, f"/jobs/{job_id}/artifacts/metrics.json"))
    return data


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.timeout(300)
def test_killed_training_resumes_from_its_epoch_checkpoint_and_matches_an_uninterrupted_run(
    services_stack: Stack,
) -> None:
    stack = services_stack
    # The reference run, then the victim, on the same worker (one job at a time).
    reference = submit(stack, TRAIN_PARAMS, kind="train_embedding")
    victim_id = submit(stack, TRAIN_PARAMS, kind="train_embedding")
    victim = stack.start_worker(name="victim", extra_env=FAST_LEASES)
    ref = stack.wait_job(reference, timeout=120)
    assert (ref["status"], ref["attempt"]) == ("succeeded", 1), ref
    job = wait_for(stack, victim_id, lambda j: (j.get("checkpoint_step") or 0) >= 1, timeout=60)
    os.killpg(victim.pid, signal.SIGKILL)  # no chance to checkpoint or say goodbye
    victim.wait(10)
    killed_at = stack.client.get(f"/jobs/{victim_id}").json()
    assert killed_at["status"] == "running" and 1 <= killed_at["checkpoint_step"] < EPOCHS, killed_at
    assert job["attempt"] == 1

    # The reaper of the second worker requeues the job once the lease (5 s) expires; it resumes.
    stack.start_worker(name="rescuer", extra_env=FAST_LEASES)
    done = stack.wait_job(victim_id, timeout=120)
    assert (done["status"], done["attempt"], done["preemptions"]) == ("succeeded", 2, 0), done
    assert done["checkpoint_step"] == EPOCHS and done["result"]["epochs"] == EPOCHS
    statuses = events(stack, victim_id, "status")
    assert "requeued by the reaper: lease expired" in [e["message"] for e in statuses]
    logs = events(stack, victim_id, "log")
    step = killed_at["checkpoint_step"]
    assert f"resumed from the checkpoint of epoch {step}" in [e["message"] for e in logs], logs
    # The second attempt trained only the epochs after the checkpoint.
    second = [e for e in logs if e["attempt"] == 2 and e["message"].startswith("epoch ")]
    assert [e["message"].split(":")[0] for e in second] == [f"epoch {i}/{EPOCHS}" for i in range(step + 1, EPOCHS + 1)]

    # Same artifacts, each once, and the same metrics to 3 decimals as the uninterrupted run.
    assert artifact_names(stack, victim_id) == MODEL_ARTIFACTS == artifact_names(stack, reference)
    resumed, uninterrupted = metrics_json(stack, victim_id), metrics_json(stack, reference)
    assert rounded(resumed) == rounded(uninterrupted)
    assert len(resumed["history"]) == EPOCHS and resumed["accuracy"] > 0.8
    config = json.loads(download(stack, f"/jobs/{victim_id}/artifacts/config.json"))
    assert (config["backbone"], config["embedding_size"], config["image_size"]) == ("se_resnet18", 32, [16, 16])
    assert config["num_classes"] == 10 and config["backbone_kwargs"]["base_width"] == 8
    for key in ("accuracy", "auc", "identification_accuracy"):
        assert done["result"][key] == pytest.approx(ref["result"][key], abs=1e-3)

    # evaluate: the resumed model on its own held-out split rebuilds the training-time metrics.
    eval_id = submit(stack, {"model": f"job:{victim_id}", "dataset": "builtin:digits", "max_pairs": 500, "seed": 3},
                     kind="evaluate")  # fmt: skip
    evaluated = stack.wait_job(eval_id, timeout=60)
    assert evaluated["status"] == "succeeded", evaluated
    result = evaluated["result"]
    assert result["evaluated_on"] == "the model's held-out split (by sample)"
    assert result["num_images"] == resumed["num_images"] and result["num_identities"] == 10
    for key in ("auc", "accuracy", "identification_accuracy"):
        assert result[key] == pytest.approx(resumed[key], abs=1e-3), key
    assert artifact_names(stack, eval_id) == ["distances.png", "metrics.json", "pca.png", "roc.png"]
    metrics = metrics_json(stack, eval_id)
    assert metrics["model"] == f"job:{victim_id}" and metrics["auc"] == pytest.approx(result["auc"])


def test_bad_params_are_refused_by_the_api(embedded_stack: Stack) -> None:
    c = embedded_stack.client
    for params, loc in (({"backbone": "resnet9000"}, "backbone"), ({"embedding_size": 0}, "embedding_size")):
        r = c.post("/jobs", json={"kind": "train_embedding", "params": {**TRAIN_PARAMS, **params}})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_params" and err["details"][0]["loc"] == [loc], err
    r = c.post("/jobs", json={"kind": "evaluate", "params": {"model": "not a model", "dataset": "builtin:digits"}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == ["model"]
    assert c.get("/jobs").json()["data"] == []


@pytest.mark.slow
def test_dataset_with_one_identity_fails_before_training(embedded_stack: Stack, orl_dir: Path) -> None:
    stack = embedded_stack
    faces = {f"people/s1/{n}.pgm": (orl_dir / "s1" / f"{n}.pgm").read_bytes() for n in range(1, 7)}
    r = upload(stack.client, "/datasets", "one.zip", make_zip(faces))
    assert r.status_code == 201, r.text
    ds = r.json()
    assert (ds["layout"], ds["num_identities"]) == ("identities", 1)
    job_id = submit(
        stack, {"dataset": ds["ref"], "base_width": 4, "image_size": 32, "epochs": 1}, kind="train_embedding"
    )
    stack.start_worker(extra_env=FAST_LEASES)
    job = stack.wait_job(job_id, timeout=90)
    assert (job["status"], job["attempt"]) == ("failed", 1), job
    assert job["error"].startswith(f"dataset {ds['ref']}: ") and "single identity ('s1')" in job["error"], job["error"]
    assert "at least two identities" in job["error"] and "Traceback" not in job["error"]
    assert job["checkpoint_step"] is None and not job.get("progress")
    assert artifact_names(stack, job_id) == []
