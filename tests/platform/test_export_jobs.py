"""The `export` kind end to end: trained se_resnet18 and iresnet18 backbones exported by a worker, their
parity with PyTorch measured in onnxruntime on the model's held-out ORL images."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from jobs.states import JobStatus
from ml.data import make_split
from tests.support.faces import MODEL_FILES
from tests.support.factories import add_artifact, add_job, key_id, make_zip, upload
from tests.support.jobs import download, submit
from tests.support.orl_gallery import orl_gallery_model, orl_members
from tests.support.services import Stack


def register_with_dataset(stack: Stack, folder: Path, dataset: str) -> str:
    """The trained folder as a succeeded train_embedding job whose config names `dataset` (the uploaded
    copy of what it was trained on), as the worker's train_embedding records it."""
    job_id = add_job(stack, key_id(stack), status=JobStatus.SUCCEEDED, kind="train_embedding")
    for name, ctype in MODEL_FILES.items():
        data = (folder / name).read_bytes()
        if name == "config.json":
            data = json.dumps({**json.loads(data), "dataset": dataset}).encode()
        add_artifact(stack, job_id, name, data, ctype)
    return job_id


@pytest.mark.slow
def test_trained_backbones_export_within_the_parity_bounds(
    embedded_stack: Stack, orl_dir: Path, artifacts_dir: Path
) -> None:
    stack = embedded_stack
    resp = upload(stack.client, "/datasets", "orl-gallery.zip", make_zip(orl_members(orl_dir, "gallery")))
    assert resp.status_code == 201, resp.text
    dataset = f"dataset:{resp.json()['id']}"
    jobs = {}
    for backbone in ("se_resnet18", "iresnet18"):
        folder = orl_gallery_model(orl_dir, backbone)
        model = f"job:{register_with_dataset(stack, folder, dataset)}"
        jobs[backbone] = (folder, submit(stack, {"model": model}, kind="export"))
    stack.start_worker(queues="cpu")
    figures = {}
    for backbone, (folder, job_id) in jobs.items():
        job = stack.wait_job(job_id, timeout=300)
        assert job["status"] == "succeeded", job["error"]
        result = job["result"]
        config = json.loads((folder / "config.json").read_text())
        split = config["split"]
        import torch

        labels = torch.tensor([i // 5 for i in range(100)])  # 20 people, images 1-5, in natural order
        held_out = make_split(labels, split["by"], split["test_fraction"], split["seed"]).test
        assert result["num_images"] == len(held_out), result["parity_images"]
        assert "held-out split" in result["parity_images"]
        assert result["passed"] is True and result["max_abs_diff"] <= 1e-3
        assert result["accuracy_diff_points"] <= 0.1
        assert result["accuracy_torch"] >= 0.75  # a real model: equal accuracies mean something
        assert result["input"]["input_size"] == [40, 40] and result["input"]["backbone"] == backbone
        onnx_bytes = download(stack, f"/jobs/{job_id}/artifacts/backbone.onnx")
        model = onnx.load_from_string(onnx_bytes)
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
        assert (
            json.loads(download(stack, f"/jobs/{job_id}/artifacts/onnx.json"))["max_abs_diff"] == result["max_abs_diff"]
        )
        figures[backbone] = {k: result[k] for k in ("max_abs_diff", "accuracy_torch", "accuracy_onnx", "num_pairs")}
    (artifacts_dir / "export_jobs_orl.json").write_text(json.dumps(figures, indent=1))
