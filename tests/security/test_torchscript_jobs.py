"""Generators that read or write files: refused at `POST /models`, and refused by the worker when
written straight into the store, before they run (issue 11, section 2).

The programs are those of tests/security/programs.py, which tests/security/test_torchscript.py
shows reading the secret into pixels and writing files when nothing guards them. Here they meet
the API on both stacks, and a real worker on PostgreSQL, Redis and S3 that loads them for
`recover_latent` and `train_encoder`; a legitimate uploaded generator goes through the same worker.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from jobs.models import Model, new_id
from jobs.states import utcnow
from ml.gan.dcgan import DCGANGenerator
from ml.gan.generator import save_generator
from tests.security.programs import (
    LATENT_DIM,
    SECRET,
    FileReader,
    FileWriter,
    LoadTimeWriter,
    scripted,
)
from tests.support.factories import key_id, upload
from tests.support.jobs import FAST_LEASES, download, submit
from tests.support.services import Stack

pytestmark = pytest.mark.security


def program_files(tmp_path: Path) -> tuple[dict[str, bytes], Path, Path, Path]:
    """({name: archive}, the secret file, a file the writer targets, a path the load-time writer targets)."""
    secret, existing, planted = tmp_path / "worker.env", tmp_path / "weights.bin", tmp_path / "planted.bin"
    secret.write_bytes(SECRET)
    existing.write_bytes(b"original weights")
    programs = {
        "reader": scripted(FileReader(str(secret))),
        "writer": scripted(FileWriter(str(existing))),
        "loadtime": scripted(LoadTimeWriter(str(planted))),
    }
    return programs, secret, existing, planted


EXPECTED = {
    "reader": ["aten::from_file"],
    "writer": ["aten::from_file"],
    "loadtime": ["a __setstate__ method in class LoadTimeWriter (code run while loading)", "aten::from_file"],
}


def refused_ops(error: dict[str, Any]) -> list[str]:
    return sorted({r.rsplit(" (", 1)[0] for r in error["details"]["refused"]})


def test_file_reading_and_writing_programs_are_refused_at_upload(stack: Stack, tmp_path: Path) -> None:
    programs, _, existing, planted = program_files(tmp_path)
    for name, data in programs.items():
        resp = upload(stack.client, "/models", f"{name}.pt", data, kind="generator", meta='{"latent_dim": 8}')
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["code"] == "unsafe_torchscript", error
        assert refused_ops(error) == EXPECTED[name], error
        assert "aten::from_file" in error["message"] and "only pure tensor operations" in error["message"]
    assert stack.client.get("/models").json()["data"] == []
    assert stack.store.list("models") == []
    assert existing.read_bytes() == b"original weights" and not planted.exists()


def put_model(stack: Stack, data: bytes, filename: str = "generator.pt") -> str:
    """A generator written straight into the store with its row, as if it had bypassed `POST /models`."""
    model_id = new_id()
    key = f"models/{model_id}/{filename}"
    stack.store.put_bytes(key, data)
    with stack.session() as s:
        s.add(Model(id=model_id, owner_id=key_id(stack), name=filename, kind="generator", key=key,
                    filename=filename, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                    meta={"latent_dim": LATENT_DIM}, created_at=utcnow()))  # fmt: skip
    return model_id


def artifacts(stack: Stack, job_id: str) -> dict[str, bytes]:
    names = [a["name"] for a in stack.client.get(f"/jobs/{job_id}/artifacts").json()]
    return {n: download(stack, f"/jobs/{job_id}/artifacts/{n}") for n in names}


@pytest.mark.services
@pytest.mark.slow
def test_programs_written_into_the_store_fail_their_jobs_before_running(services_stack: Stack, tmp_path: Path) -> None:
    stack = services_stack
    programs, _, existing, planted = program_files(tmp_path)
    good = save_generator(DCGANGenerator(latent_dim=LATENT_DIM, channels=1, image_size=16, width=4).eval(),
                          tmp_path / "good", latent_dim=LATENT_DIM)  # fmt: skip
    resp = upload(stack.client, "/models", "generator.pt", good["generator.pt"].read_bytes(), kind="generator")
    assert resp.status_code == 201, resp.text
    good_id = resp.json()["id"]
    stack.start_worker(extra_env=FAST_LEASES)

    recover = {"latent_dim": LATENT_DIM, "num_targets": 2, "iterations": 2}
    encoder = {"latent_dim": LATENT_DIM, "steps": 2, "batch_size": 4, "w_perc": 0}
    jobs: dict[tuple[str, str], str] = {}
    for name, data in programs.items():
        ref = f"model:{put_model(stack, data)}"
        jobs[name, "recover_latent"] = submit(stack, {"generator": ref, **recover}, kind="recover_latent")
        jobs[name, "train_encoder"] = submit(stack, {"generator": ref, **encoder}, kind="train_encoder")
    legit = submit(stack, {"generator": f"model:{good_id}", **recover}, kind="recover_latent")

    for (name, kind), job_id in jobs.items():
        job = stack.wait_job(job_id, timeout=180)
        assert (job["status"], job["attempt"]) == ("failed", 1), (name, kind, job)
        assert "generator.pt: the TorchScript program uses what an uploaded model may not" in job["error"], job
        assert "aten::from_file" in job["error"], job["error"]
        assert artifacts(stack, job_id) == {}, (name, kind)
    job = stack.wait_job(legit, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    legit_artifacts = artifacts(stack, legit)
    assert sorted(legit_artifacts) == ["metrics.json", "reconstructions.png", "true_z.npy", "z.npy"]
    assert all(SECRET[:16] not in data for data in legit_artifacts.values())
    # Nothing was written: the writer's target keeps its bytes, the load-time writer's never appeared.
    assert existing.read_bytes() == b"original weights" and not planted.exists()
