"""Sweeps: children generated from base params and axes, validated first, budgeted, early-stopped, ranked.

The end-to-end sweep trains `train_embedding` on `builtin:digits` (2 settings x 3 seeds) through a
real worker, killing one child mid-run; the rest use cheap probe children or rows written directly.
"""

from __future__ import annotations

import statistics
from datetime import timedelta
from typing import Any

import pytest

from jobs.db import session_scope
from jobs.models import Job, JobEvent
from jobs.pipelines import resolve
from jobs.states import JobStatus, utcnow
from tests.support.factories import job_row, make_key
from tests.support.jobs import FAST_LEASES, wait_job_until
from tests.support.kills import kill
from tests.support.services import Stack

TRAIN: dict[str, Any] = {
    "dataset": "builtin:digits", "backbone": "se_resnet18", "base_width": 8, "embedding_size": 16, "image_size": 16,
    "epochs": 2, "batch_size": 64, "split_by": "sample", "max_pairs": 100, "max_train_samples": 300,
}  # fmt: skip


def post_sweep(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    r = stack.client.post("/sweeps", json=body)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def test_every_child_is_validated_before_any_is_created(stack: Stack) -> None:
    body = {"kind": "probe", "base": {"matmul_repeats": 1}, "axes": {"grid": {"matmul_size": [16, 8, 32, 4]}}}
    r = stack.client.post("/sweeps", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_sweep"
    assert err["message"] == "2 of 4 generated children fail the probe params schema; nothing was created"
    assert [(d["index"], d["params"], d["errors"][0]["loc"]) for d in err["details"]] == [
        (1, {"matmul_size": 8}, "matmul_size"), (3, {"matmul_size": 4}, "matmul_size"),
    ]  # fmt: skip
    assert stack.client.get("/jobs").json()["data"] == []
    r = stack.client.post("/sweeps", json={"kind": "probe", "optimizer": "optuna"})
    assert r.status_code == 422, r.text


def test_grid_random_and_seeds_make_the_children_and_max_jobs_caps_them(stack: Stack) -> None:
    body = {
        "kind": "probe", "base": {"matmul_repeats": 1},
        "axes": {"grid": {"dtype": ["float32", "bfloat16"]},
                 "random": {"matmul_size": {"low": 16, "high": 64, "log": True, "integer": True}, "count": 2}},
        "seed_param": "matmul_repeats", "budget": {"max_jobs": 3},
    }  # fmt: skip
    body["axes"]["seeds"] = [1, 2]
    sweep = post_sweep(stack, body)
    children = sweep["children"]
    assert len(children) == 8 and sweep["varied"] == ["dtype", "matmul_size", "matmul_repeats"]
    assert [c["params"]["dtype"] for c in children] == ["float32"] * 4 + ["bfloat16"] * 4
    assert [c["params"]["matmul_repeats"] for c in children] == [1, 2] * 4
    sizes = [c["params"]["matmul_size"] for c in children]
    assert sizes[:4] == sizes[4:] and sizes[0] == sizes[1] and sizes[2] == sizes[3]
    assert all(16 <= s <= 64 for s in sizes)
    statuses = [(c["status"], c["stop_reason"]) for c in children]
    assert statuses == [("queued", None)] * 3 + [("cancelled", "budget")] * 5
    assert stack.other.get(f"/sweeps/{sweep['id']}").status_code == 404  # another key's sweep is unknown
    assert stack.client.get(f"/sweeps/{sweep['id']}").json()["children"] == children
    # The same sweep again draws the same random values (random_seed).
    again = post_sweep(stack, body)
    assert [c["params"] for c in again["children"]] == [c["params"] for c in children]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_gpu_hours_budget_stops_the_sweep_at_its_limit(stack: Stack) -> None:
    # One second of worker time; the first child alone runs for three.
    sweep = post_sweep(stack, {
        "kind": "probe", "base": {"matmul_size": 16, "duration_seconds": 3},
        "axes": {"grid": {"matmul_repeats": [1, 2, 3]}}, "budget": {"gpu_hours": 1 / 3600},
    })  # fmt: skip
    stack.start_worker(extra_env=FAST_LEASES)
    done = wait_job_until(stack, sweep["id"], lambda j: j["status"] == "succeeded", timeout=120)
    children = stack.client.get(f"/sweeps/{sweep['id']}").json()["children"]
    assert [(c["params"]["matmul_repeats"], c["status"], c["stop_reason"]) for c in children] == [
        (1, "succeeded", None), (2, "cancelled", "budget"), (3, "cancelled", "budget"),
    ]  # fmt: skip
    assert (done["result"]["succeeded"], done["result"]["budget_cancelled"]) == (1, 2)


def test_children_that_name_a_job_wait_for_it(stack: Stack) -> None:
    r = stack.client.post("/jobs", json={"kind": "train_embedding", "params": TRAIN})
    assert r.status_code == 201, r.text
    model = r.json()["id"]
    sweep = post_sweep(stack, {"kind": "evaluate", "base": {"model": f"job:{model}", "dataset": "builtin:digits"},
                               "axes": {"grid": {"flip_tta": [True, False]}}})  # fmt: skip
    assert [c["status"] for c in sweep["children"]] == ["waiting", "waiting"]
    graph = stack.client.get(f"/jobs/{sweep['children'][0]['id']}/graph").json()
    assert ([n["id"] for n in graph["upstreams"]], graph["parent_id"]) == ([model], sweep["id"])
    assert stack.client.get(f"/jobs/{sweep['id']}/graph").json()["page"] == f"/ui/sweeps/{sweep['id']}"
    # Cancelling the sweep cancels its children.
    assert stack.client.post(f"/jobs/{sweep['id']}/cancel").status_code == 200
    assert [stack.client.get(f"/jobs/{c['id']}").json()["status"] for c in sweep["children"]] == ["cancelled"] * 2


def test_the_median_rule_stops_a_child_behind_the_others(db_url: str) -> None:
    """Three children reported losses at step 10; a fourth, running, is worse than their median and is stopped."""
    spec = {"kind": "probe", "early_stop": {"metric": "loss", "mode": "min", "min_steps": 5}}
    now = utcnow()
    with session_scope(db_url) as s:
        owner = make_key(s)
        parent = job_row(owner.id, kind="sweep", status=JobStatus.RUNNING, params=spec, started_at=now)
        s.add(parent)
        s.flush()
        done = [job_row(owner.id, status=JobStatus.SUCCEEDED, parent_id=parent.id, started_at=now,
                        finished_at=now) for _ in range(3)]  # fmt: skip
        slow, fast, early = (job_row(owner.id, status=JobStatus.RUNNING, parent_id=parent.id, started_at=now,
                                     lease_owner="w/1", lease_expires_at=now + timedelta(hours=1))
                             for _ in range(3))  # fmt: skip
        s.add_all([*done, slow, fast, early])
        s.flush()
        for job, losses in zip(done, ([3.0, 1.0], [3.0, 2.0], [3.0, 4.0]), strict=True):
            for step, loss in zip((5, 10), losses, strict=True):
                s.add(JobEvent(job_id=job.id, type="progress", data={"step": step, "total": 20, "loss": loss}))
        # Median of the others at step 10 is 2.0 (fast's 1.5 counts for slow, not for itself: 1.5 < 2.0 < 2.5).
        s.add(JobEvent(job_id=slow.id, type="progress", data={"step": 10, "total": 20, "loss": 2.5}))
        s.add(JobEvent(job_id=fast.id, type="progress", data={"step": 10, "total": 20, "loss": 1.5}))
        s.add(JobEvent(job_id=early.id, type="progress", data={"step": 4, "total": 20, "loss": 9.0}))  # < min_steps
        ids = (slow.id, fast.id, early.id)
    report = resolve(db_url)
    assert report.stopped == [ids[0]]
    with session_scope(db_url) as s:
        rows = {j.id: j for j in s.query(Job).filter(Job.id.in_(ids))}
        assert [(rows[i].cancel_requested, rows[i].stop_reason) for i in ids] == [
            (True, "early stopped by the median rule"), (False, None), (False, None),
        ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.fault
@pytest.mark.timeout(420)
def test_a_sweep_of_train_embedding_runs_to_the_end_ranked_and_grouped(services_stack: Stack) -> None:
    stack = services_stack
    sweep = post_sweep(stack, {
        "kind": "train_embedding", "name": "lr x seed", "base": TRAIN,
        "axes": {"grid": {"lr": [0.02, 0.2]}, "seeds": [1, 2, 3]}, "rank_by": "accuracy",
    })  # fmt: skip
    ids = [c["id"] for c in sweep["children"]]
    assert [(c["params"]["lr"], c["params"]["seed"]) for c in sweep["children"]] == [
        (0.02, 1),
        (0.02, 2),
        (0.02, 3),
        (0.2, 1),
        (0.2, 2),
        (0.2, 3),
    ]
    stack.start_worker(extra_env=FAST_LEASES)
    # The second child's pool process is killed after the child's first epoch checkpoint; the reaper
    # requeues it when its lease runs out and a new attempt resumes from that checkpoint.
    running = wait_job_until(stack, ids[1], lambda j: j["status"] == "running" and (j["checkpoint_step"] or 0) >= 1,
                             timeout=300)  # fmt: skip
    kill(stack, running["lease_owner"], whole_worker=False)
    for i in ids:
        stack.wait_job(i, timeout=300)
    parent = wait_job_until(stack, sweep["id"], lambda j: j["status"] == "succeeded", timeout=30)
    children = {i: stack.client.get(f"/jobs/{i}").json() for i in ids}
    assert [children[i]["status"] for i in ids] == ["succeeded"] * 6
    assert children[ids[1]]["attempt"] == 2 and children[ids[1]]["result"]["epochs"] == 2
    logs = [e["message"] for e in stack.client.get(f"/jobs/{ids[1]}/events", params={"type": "log"}).json()["data"]]
    assert "resumed from the checkpoint of epoch 1" in logs, logs
    acc = {i: children[i]["result"]["accuracy"] for i in ids}
    ranking = sorted(ids, key=lambda i: (-acc[i], children[i]["created_at"], i))
    view = stack.client.get(f"/sweeps/{sweep['id']}").json()
    assert [c["id"] for c in view["children"]] == ranking
    assert [(c["rank"], c["value"]) for c in view["children"]] == [(n + 1, acc[i]) for n, i in enumerate(ranking)]
    assert parent["result"]["ranking"] == ranking and parent["result"]["best"] == ranking[0]
    assert parent["result"]["best_value"] == acc[ranking[0]] and parent["result"]["succeeded"] == 6
    expected = {}
    for lr, group in ((0.02, ids[:3]), (0.2, ids[3:])):
        values = [acc[i] for i in group]
        expected[lr] = (3, statistics.fmean(values), statistics.stdev(values))
    assert {g["params"]["lr"]: (g["n"], g["mean"], g["std"]) for g in view["groups"]} == expected
    assert view["compare_url"] == "/ui/compare?ids=" + ",".join(ranking)
