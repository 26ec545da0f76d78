"""The GAN kinds through real processes: train_generator -> train_encoder -> recover_latent on a worker.

The runners' own tests (tests/ml/gan/test_gan_runners.py) use an in-process context; here the same
chain runs on the real services through a Celery worker, so the worker's JobContext (model refs
resolved from earlier jobs' artifacts in S3, checkpoints, previews, artifacts) is what they meet.
An uploaded "generator" that is not TorchScript fails its job with the contract's message.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch

from tests.support.factories import upload
from tests.support.jobs import FAST_LEASES, download, submit
from tests.support.services import Stack

pytestmark = [pytest.mark.services, pytest.mark.slow]

GENERATOR = {"dataset": "builtin:digits", "max_images": 256, "image_size": 16, "latent_dim": 8,
             "g_width": 8, "d_width": 8, "epochs": 2, "batch_size": 32, "seed": 1}  # fmt: skip
METHODS = ["gradient", "gradient+clip", "encoder", "encoder+refine"]


def names(stack: Stack, job_id: str) -> list[str]:
    return sorted(a["name"] for a in stack.client.get(f"/jobs/{job_id}/artifacts").json())


def test_generator_encoder_and_recovery_chain_through_a_worker(services_stack: Stack) -> None:
    stack = services_stack
    stack.start_worker(extra_env=FAST_LEASES)

    gen = submit(stack, GENERATOR, kind="train_generator")
    job = stack.wait_job(gen, timeout=180)
    assert job["status"] == "succeeded", job
    assert (job["result"]["latent_dim"], job["result"]["image_size"], job["result"]["epochs"]) == (8, 16, 2)
    assert {"config.json", "generator.json", "generator.pt", "samples.png"} <= set(names(stack, gen))

    enc = submit(stack, {"generator": f"job:{gen}", "steps": 6, "batch_size": 8, "checkpoint_every": 3,
                         "preview_every": 3}, kind="train_encoder")  # fmt: skip
    job = stack.wait_job(enc, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["steps"] == 6 and job["checkpoint_step"] == 6
    assert {"config.json", "encoder.pt"} <= set(names(stack, enc))

    rec = submit(stack, {"generator": f"job:{gen}", "encoder": f"job:{enc}", "num_targets": 6, "iterations": 10,
                         "seed": 2}, kind="recover_latent")  # fmt: skip
    job = stack.wait_job(rec, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    assert [m for m in job["result"] if m != "sys"] == METHODS  # "sys": the worker's peak memory
    z = np.load(io.BytesIO(download(stack, f"/jobs/{rec}/artifacts/z.npy")))
    assert z.shape == (4, 6, 8) and z.dtype == np.float32
    metrics = json.loads(download(stack, f"/jobs/{rec}/artifacts/metrics.json"))
    assert metrics["methods"] == METHODS
    for method in METHODS:
        per = metrics["results"][method]
        assert len(per["per_image"]["psnr"]) == 6 and len(per["per_image"]["latent_cosine"]) == 6
        # A tiny generator saturates some images to all -1: their reconstruction is exact, PSNR inf,
        # which the artifact keeps and the job row (JSON, no Infinity) records as null.
        mean = per["psnr"]["mean"]
        assert job["result"][method]["psnr"] == (pytest.approx(mean) if math.isfinite(mean) else None)
    assert download(stack, f"/jobs/{rec}/artifacts/reconstructions.png").startswith(b"\x89PNG")


class OutOfRange(torch.nn.Module):
    """A TorchScript "generator" whose pixels reach 3: it breaks the [-1, 1] contract."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(z[:, :1, None, None].expand(-1, 1, 16, 16))


def test_generator_uploads_that_break_the_contract_are_refused(services_stack: Stack) -> None:
    stack = services_stack
    state_dict = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, state_dict)
    resp = upload(stack.client, "/models", "my_gan.pt", state_dict.getvalue(), kind="generator")
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "not_torchscript"
    assert "torch.jit.save(torch.jit.script(model), path)" in resp.json()["error"]["message"]

    scripted = io.BytesIO()
    torch.jit.save(torch.jit.script(OutOfRange()), scripted)
    # A TorchScript archive is accepted at upload (running it is the worker's business) ...
    resp = upload(stack.client, "/models", "loud_gan.pt", scripted.getvalue(), kind="generator")
    assert resp.status_code == 201, resp.text
    stack.start_worker(extra_env=FAST_LEASES)
    # ... and the first job that loads it refuses it, before any work, with the contract's words.
    rec = submit(stack, {"generator": f"model:{resp.json()['id']}", "latent_dim": 8, "num_targets": 2,
                         "iterations": 2}, kind="recover_latent")  # fmt: skip
    job = stack.wait_job(rec, timeout=120)
    assert (job["status"], job["attempt"]) == ("failed", 1), job
    assert "[-1, 1]" in job["error"], job["error"]
    assert names(stack, rec) == []
