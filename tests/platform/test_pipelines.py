"""Pipelines: jobs that wait for others (`after`, `job:` refs, `POST /pipelines`), hold, retry and cascade.

Real workers (tests/support/services.py) run the jobs; the dependency resolver runs in their reaper
loop (FAST_LEASES: every second).
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import pytest

from tests.support.jobs import FAST_LEASES, submit, wait_job_until
from tests.support.services import Stack

# A tiny train_embedding (one epoch of 16x16 digits, base width 8): seconds on a CPU.
TRAIN: dict[str, Any] = {
    "dataset": "builtin:digits", "backbone": "se_resnet18", "base_width": 8, "embedding_size": 16, "image_size": 16,
    "epochs": 1, "batch_size": 64, "lr": 0.1, "split_by": "sample", "max_pairs": 200, "seed": 3,
}  # fmt: skip
PROBE = {"matmul_size": 16, "matmul_repeats": 1}


def job(stack: Stack, job_id: str) -> dict[str, Any]:
    data: dict[str, Any] = stack.client.get(f"/jobs/{job_id}").json()
    return data


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_after_and_job_refs_wait_and_a_cancel_cascades(stack: Stack) -> None:
    """No worker: the upstream stays queued, its dependents wait; cancelling it cancels them, transitively."""
    first = submit(stack, PROBE)
    second = submit(stack, PROBE, after=[first])
    third = submit(stack, {**TRAIN}, kind="train_embedding", after=[second])
    # A job: ref in params is a dependency too, without `after`.
    fourth = submit(stack, {"model": f"job:{third}", "dataset": "builtin:digits"}, kind="evaluate")
    assert [job(stack, i)["status"] for i in (first, second, third, fourth)] == [
        "queued",
        "waiting",
        "waiting",
        "waiting",
    ]
    graph = stack.client.get(f"/jobs/{third}/graph").json()
    assert [n["id"] for n in graph["upstreams"]] == [second] and [n["id"] for n in graph["downstreams"]] == [fourth]
    r = stack.client.post("/jobs", json={"kind": "probe", "params": PROBE, "after": ["f" * 32]})
    assert r.status_code == 404, r.text
    r = stack.other.post("/jobs", json={"kind": "probe", "params": PROBE, "after": [first]})
    assert r.status_code == 404, r.text  # another key's job is no upstream of yours

    r = stack.client.post(f"/jobs/{first}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    for dep in (second, third, fourth):
        row = job(stack, dep)
        assert (row["status"], row["stop_reason"]) == ("cancelled", f"upstream {first} was cancelled"), row


def test_a_pipeline_is_validated_whole_before_anything_is_created(stack: Stack) -> None:
    steps = [
        {"name": "train", "kind": "train_embedding", "params": TRAIN},
        {
            "name": "eval",
            "kind": "evaluate",
            "params": {"model": "step:train", "dataset": "builtin:digits", "folds": 1},
        },
    ]
    r = stack.client.post("/pipelines", json={"name": "bad", "steps": steps})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_pipeline" and err["details"] == [
        {
            "step": "eval",
            "kind": "evaluate",
            "errors": [{"loc": "folds", "msg": "Input should be greater than or equal to 2"}],
        }
    ], err
    later = [{"name": "eval", "kind": "evaluate", "params": {"model": "step:train", "dataset": "builtin:digits"}},
             {"name": "train", "kind": "train_embedding", "params": TRAIN}]  # fmt: skip
    r = stack.client.post("/pipelines", json={"name": "bad", "steps": later})
    assert r.status_code == 422 and "step:train is not an earlier step" in r.json()["error"]["message"], r.text
    assert stack.client.get("/jobs").json()["data"] == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_three_step_pipeline_runs_in_order(services_stack: Stack) -> None:
    stack = services_stack
    steps = [
        {"name": "train", "kind": "train_embedding", "params": TRAIN},
        {"name": "eval", "kind": "evaluate", "params": {"model": "step:train", "dataset": "builtin:digits",
                                                        "max_pairs": 200}},
        {"name": "probe", "kind": "probe", "params": PROBE, "after": ["eval"]},
    ]  # fmt: skip
    r = stack.client.post("/pipelines", json={"name": "train-eval-probe", "steps": steps})
    assert r.status_code == 201, r.text
    body = r.json()
    ids = [s["id"] for s in body["steps"]]
    assert [s["status"] for s in body["steps"]] == ["queued", "waiting", "waiting"]
    assert [s["upstreams"] for s in body["steps"]] == [[], [ids[0]], [ids[1]]]
    assert job(stack, ids[1])["params"]["model"] == f"job:{ids[0]}"
    stack.start_worker(extra_env=FAST_LEASES)
    done = wait_job_until(stack, body["id"], lambda j: j["status"] == "succeeded", timeout=240)
    assert done["result"] == {"steps": 3, "succeeded": 3}
    rows = [job(stack, i) for i in ids]
    assert [r["status"] for r in rows] == ["succeeded"] * 3
    for before, after in itertools.pairwise(rows):
        assert ts(after["started_at"]) >= ts(before["finished_at"]), (before, after)
    assert rows[1]["result"]["num_identities"] == 10 and rows[1]["result"]["auc"] > 0.5
    assert stack.other.get(f"/pipelines/{body['id']}").status_code == 404  # another key's pipeline is unknown
    pipeline = stack.client.get(f"/pipelines/{body['id']}").json()
    assert [s["name"] for s in pipeline["steps"]] == ["train", "eval", "probe"]
    assert pipeline["status"] == "succeeded"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_failed_step_holds_the_later_ones_and_a_retry_lets_them_finish(stack: Stack) -> None:
    failing = {**PROBE, "fail_with": "first attempt fails", "fault_attempts": 1}
    steps = [
        {"name": "a", "kind": "probe", "params": failing},
        {"name": "b", "kind": "probe", "params": PROBE, "after": ["a"]},
        {"name": "c", "kind": "probe", "params": PROBE, "after": ["b"]},
    ]
    r = stack.client.post("/pipelines", json={"name": "retry", "steps": steps, "max_attempts": 1})
    assert r.status_code == 201, r.text
    pipeline_id = r.json()["id"]
    a, b, c = (s["id"] for s in r.json()["steps"])
    stack.start_worker(extra_env=FAST_LEASES)
    assert stack.wait_job(a)["status"] == "failed"
    wait_job_until(stack, b, lambda j: j["status"] == "held")
    assert job(stack, c)["status"] == "waiting"
    assert job(stack, pipeline_id)["status"] == "running"

    r = stack.client.post(f"/jobs/{a}/retry")
    assert r.status_code == 200, r.text
    assert job(stack, b)["status"] == "waiting"
    assert stack.wait_job(c, timeout=120)["status"] == "succeeded"
    assert [job(stack, i)["attempt"] for i in (a, b, c)] == [2, 1, 1]
    done = wait_job_until(stack, pipeline_id, lambda j: j["status"] == "succeeded")
    assert done["result"] == {"steps": 3, "succeeded": 3}
    messages = [e["message"] for e in stack.client.get(f"/jobs/{b}/events").json()["data"]]
    assert messages[:3] == [
        f"waiting for {a}",
        "held: an upstream failed (retry it to continue)",
        f"waiting again: upstream {a} was retried",
    ], messages
