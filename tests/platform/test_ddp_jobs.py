"""`train_embedding` with `gpus: 2` end to end on a CPU worker: 2 gloo ranks inside the job.

sklearn's digits at 16x16 with a narrow se_resnet18 (as tests/platform/test_embedding_jobs.py);
what is checked is the platform path: the ranks' progress and checkpoints reach the job through
rank 0, the saved model is one rank's format (`evaluate` takes it), and a rank killed mid-run
fails the attempt, requeues the job and restarts both ranks from the last checkpoint, ending with
the metrics of an uninterrupted 2-rank run.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from jobs.kinds import get_kind
from stack.commands import gpu_groups
from tests.support.jobs import FAST_LEASES, download, submit
from tests.support.jobs import wait_job_until as wait_for
from tests.support.kills import pool_pid
from tests.support.services import Stack

EPOCHS = 3
STEPS = 1348 // 64  # steps an epoch: the unit of a multi-rank checkpoint
PARAMS: dict[str, Any] = {
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
    "gpus": 2,
}


def rank_pids(parent: int) -> list[int]:
    """The spawned ranks (`multiprocessing.spawn` children) of process `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def metrics_json(stack: Stack, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(download(stack, f"/jobs/{job_id}/artifacts/metrics.json"))
    return data


def log_messages(stack: Stack, job_id: str) -> list[tuple[int, str]]:
    page = stack.client.get(f"/jobs/{job_id}/events", params={"type": "log", "limit": 200}).json()
    return [(e["attempt"], e["message"]) for e in page["data"]]


def test_a_job_asking_for_n_gpus_goes_to_queue_gpu_n_and_hosts_group_their_gpus() -> None:
    spec = get_kind("train_embedding")
    assert [spec.queue_for({"gpus": n}) for n in (1, 2, 4, 8)] == ["gpu", "gpu-2", "gpu-4", "gpu-8"]
    assert spec.queue_for({}) == "gpu" and get_kind("evaluate").queue_for({"gpus": 4}) == "gpu"
    assert gpu_groups("0,1", 1, "gpu,cpu") == [(["0"], "gpu,cpu"), (["1"], "gpu,cpu")]
    assert gpu_groups("0,1,2,3,4", 2, "gpu") == [(["0", "1"], "gpu-2"), (["2", "3"], "gpu-2"), (["4"], "gpu")]
    assert gpu_groups("0,1,2,3", 4, "gpu") == [(["0", "1", "2", "3"], "gpu-4")]


def test_gpus_params_are_checked_by_the_api(embedded_stack: Stack) -> None:
    for bad in ({"gpus": 3}, {"gpus": 0}, {"accumulate": 0}, {"clip_grad_norm": -1.0}):
        resp = embedded_stack.client.post("/jobs", json={"kind": "train_embedding", "params": bad})
        assert resp.status_code == 422, (bad, resp.text)


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.timeout(900)
def test_a_two_rank_job_survives_a_killed_rank_and_matches_an_uninterrupted_run(embedded_stack: Stack) -> None:
    stack = embedded_stack
    reference = submit(stack, PARAMS, kind="train_embedding")
    victim = submit(stack, PARAMS, kind="train_embedding", max_attempts=3)
    # `gpus: 2` sends the jobs to the gpu-2 queue (KindSpec.queue_for); this worker serves it (on the CPU), and
    # the gpu queue of the evaluate job below
    stack.start_worker(queues="gpu-2,gpu,cpu", name="ddp", extra_env=FAST_LEASES)
    ref = stack.wait_job(reference, timeout=400)
    assert ref["queue"] == "gpu-2"
    assert (ref["status"], ref["attempt"]) == ("succeeded", 1), ref.get("error")
    assert ref["result"]["gpus"] == 2 and ref["result"]["epochs"] == EPOCHS
    assert ref["checkpoint_step"] == EPOCHS * STEPS
    logs = [m for _, m in log_messages(stack, reference)]
    assert "training on 2 ranks (gloo on the CPU)" in logs
    assert [m.split(":")[0] for m in logs if m.startswith("epoch ")] == [f"epoch {i}/{EPOCHS}" for i in (1, 2, 3)]

    # Kill one rank once the victim has its first (epoch) checkpoint.
    job = wait_for(stack, victim, lambda j: (j.get("checkpoint_step") or 0) >= STEPS, timeout=300)
    ranks = rank_pids(pool_pid(job["lease_owner"]))
    assert len(ranks) == 2, ranks
    os.kill(ranks[1], signal.SIGKILL)
    done = stack.wait_job(victim, timeout=400)
    assert (done["status"], done["attempt"]) == ("succeeded", 2), done
    messages = log_messages(stack, victim)
    resumed_at = [m for a, m in messages if a == 2 and m.startswith("resumed from the checkpoint of step ")]
    assert len(resumed_at) == 1 and int(resumed_at[0].rsplit(" ", 1)[1]) >= STEPS, messages
    for key in ("accuracy", "auc", "identification_accuracy"):
        assert done["result"][key] == pytest.approx(ref["result"][key], abs=1e-3), key
    resumed, uninterrupted = metrics_json(stack, victim), metrics_json(stack, reference)
    assert [round(h["loss"], 3) for h in resumed["history"]] == [round(h["loss"], 3) for h in uninterrupted["history"]]

    # The saved model is a 1-rank model: evaluate rebuilds its held-out metrics.
    eval_id = submit(stack, {"model": f"job:{victim}", "dataset": "builtin:digits", "max_pairs": 500, "seed": 3},
                     kind="evaluate")  # fmt: skip
    evaluated = stack.wait_job(eval_id, timeout=120)
    assert evaluated["status"] == "succeeded", evaluated
    for key in ("auc", "accuracy"):
        assert evaluated["result"][key] == pytest.approx(resumed[key], abs=1e-3), key
