"""GET /compare: params diff, metric series, final metrics, plots and seed groups (exact means and stds), CSV."""

from __future__ import annotations

import csv
import hashlib
import io
import math
from typing import Any

import pytest

from jobs.states import JobStatus
from tests.support.factories import add_artifact, add_job, add_progress, key_id
from tests.support.jobs import submit

BASE = {"dataset": "builtin:digits", "epochs": 2, "opt": {"lr": 0.1, "momentum": 0.9}}
# Two settings x three seeds, with results whose mean and sample std are exact in binary:
# lr 0.1: accuracy 1, 3, 5 -> mean 3, std 2; loss 0.5, 0.75, 1.0 -> mean 0.75, std 0.25.
# lr 0.3: accuracy 10, 20, 30 -> mean 20, std 10; loss 2, 2, 2 -> mean 2, std 0.
RESULTS = {
    0.1: [(0, 1.0, 0.5), (1, 3.0, 0.75), (2, 5.0, 1.0)],
    0.3: [(0, 10.0, 2.0), (1, 20.0, 2.0), (2, 30.0, 2.0)],
}


def sweep(stack: Any) -> tuple[list[str], str]:
    """Six succeeded train_embedding rows (2 lr x 3 seeds), one failed extra of lr 0.1; (the six, the failed)."""
    owner = key_id(stack)
    ids = []
    for lr, runs in RESULTS.items():
        for seed, acc, loss in runs:
            params = {**BASE, "opt": {**BASE["opt"], "lr": lr}, "seed": seed}
            ids.append(
                add_job(stack, owner, status=JobStatus.SUCCEEDED, kind="train_embedding", params=params,
                        name=f"lr {lr} seed {seed}", metrics={"loss": loss + 1}, result={"eval": {"accuracy": acc},
                        "loss": loss, "note": "text is not a metric", "ok": True})
            )  # fmt: skip
    failed = add_job(stack, owner, status=JobStatus.FAILED, kind="train_embedding",
                     params={**BASE, "seed": 3}, metrics={"loss": 99.0})  # fmt: skip
    return ids, failed


def test_compare_groups_by_every_param_but_the_seed(stack: Any) -> None:
    ids, failed = sweep(stack)
    first = ids[0]
    # Attempt 1 reached step 2, attempt 2 resumed from step 1: the later values of steps 1 and 2 win.
    add_progress(stack, first, [{"step": 0, "total": 3, "loss": 3.0}, {"step": 1, "total": 3, "loss": 2.0},
                                {"step": 2, "total": 3, "loss": 1.5}], attempt=1)  # fmt: skip
    add_progress(stack, first, [{"step": 1, "total": 3, "loss": 1.75, "lr": 0.1},
                                {"step": 2, "total": 3, "loss": math.nan, "lr": 0.05}], attempt=2)  # fmt: skip
    png = b"\x89PNG\r\n\x1a\n"  # the route lists images by content type; it never opens them
    add_artifact(stack, first, "plots/roc.png", png, "image/png")
    add_artifact(stack, first, "model.pt", b"weights", "application/octet-stream")

    r = stack.client.get("/compare", params={"ids": ",".join([*ids, failed, ids[0]])})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["job_ids"] == [*ids, failed]  # the repeated id counted once, order kept
    assert data["params_diff"] == {
        "opt.lr": [0.1, 0.1, 0.1, 0.3, 0.3, 0.3, 0.1],
        "seed": [0, 1, 2, 0, 1, 2, 3],
    }
    assert data["params_same"] == {"dataset": "builtin:digits", "epochs": 2, "kind": "train_embedding",
                                   "opt.momentum": 0.9}  # fmt: skip
    j0 = data["jobs"][0]
    # The NaN loss was stored as null (JSON has no NaN): like the job page, the series skips it.
    assert j0["series"] == {"loss": [[0.0, 3.0], [1.0, 1.75], [2.0, 1.5]], "lr": [[1.0, 0.1], [2.0, 0.05]]}
    assert j0["final"] == {"loss": 0.5, "eval.accuracy": 1.0}  # the result's loss over the last progress loss
    sha = hashlib.sha256(png).hexdigest()
    assert j0["plots"] == [{"name": "plots/roc.png", "content_type": "image/png", "sha256": sha,
                            "url": f"/jobs/{first}/artifacts/plots/roc.png"}]  # fmt: skip
    assert data["jobs"][6]["final"] == {"loss": 99.0} and data["jobs"][1]["series"] == {}
    assert data["metric_names"] == ["eval.accuracy", "loss", "lr"]

    groups = {g["params"]["opt.lr"]: g for g in data["groups"]}
    assert sorted(groups) == [0.1, 0.3]
    a, b = groups[0.1], groups[0.3]
    assert a["params"] == {"opt.lr": 0.1} and a["kind"] == "train_embedding"
    assert (a["job_ids"], a["seeds"], a["n"]) == ([*ids[:3], failed], [0, 1, 2, 3], 3)  # the failed job: no stats
    assert a["metrics"] == {
        "eval.accuracy": {"n": 3, "mean": 3.0, "std": 2.0},
        "loss": {"n": 3, "mean": 0.75, "std": 0.25},
    }
    assert (b["job_ids"], b["n"]) == (ids[3:], 3)
    assert b["metrics"] == {"eval.accuracy": {"n": 3, "mean": 20.0, "std": 10.0}, "loss": {"n": 3, "mean": 2.0,
                                                                                          "std": 0.0}}  # fmt: skip
    one = stack.client.get("/compare", params={"ids": ids[0]}).json()
    assert one["params_diff"] == {} and one["groups"][0]["metrics"]["loss"] == {"n": 1, "mean": 0.5, "std": None}

    r = stack.client.get("/compare", params={"ids": ",".join(ids[:4]), "format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="compare-jobs.csv"'
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["id", "name", "kind", "status", "param.opt.lr", "param.seed", "metric.eval.accuracy",
                       "metric.loss"]  # fmt: skip
    assert rows[1:] == [
        [ids[0], "lr 0.1 seed 0", "train_embedding", "succeeded", "0.1", "0", "1.0", "0.5"],
        [ids[1], "lr 0.1 seed 1", "train_embedding", "succeeded", "0.1", "1", "3.0", "0.75"],
        [ids[2], "lr 0.1 seed 2", "train_embedding", "succeeded", "0.1", "2", "5.0", "1.0"],
        [ids[3], "lr 0.3 seed 0", "train_embedding", "succeeded", "0.3", "0", "10.0", "2.0"],
    ]
    r = stack.client.get("/compare", params={"ids": ",".join(ids), "format": "csv", "table": "groups"})
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows == [
        ["kind", "param.opt.lr", "n", "seeds", "job_ids", "eval.accuracy.mean", "eval.accuracy.std",
         "eval.accuracy.n", "loss.mean", "loss.std", "loss.n"],
        ["train_embedding", "0.1", "3", "[0,1,2]", " ".join(ids[:3]), "3.0", "2.0", "3", "0.75", "0.25", "3"],
        ["train_embedding", "0.3", "3", "[0,1,2]", " ".join(ids[3:]), "20.0", "10.0", "3", "2.0", "0.0", "3"],
    ]  # fmt: skip
    r = stack.client.get("/compare", params={"ids": ids[0], "download": "true"})
    assert r.headers["content-disposition"] == 'attachment; filename="compare.json"' and r.json()["job_ids"] == ids[:1]


def test_compare_refuses_unknown_foreign_and_too_many(stack: Any) -> None:
    ids, _ = sweep(stack)
    theirs = add_job(stack, key_id(stack, stack.other_key), status=JobStatus.SUCCEEDED)
    r = stack.client.get("/compare", params={"ids": f"{ids[0]},{theirs},{'f' * 32}"})
    assert (r.status_code, r.json()["error"]["details"]) == (404, {"missing": [theirs, "f" * 32]})
    assert stack.client.get("/compare", params={"ids": "../etc"}).status_code == 404
    r = stack.client.get("/compare", params={"ids": " , "})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "no_ids")
    r = stack.client.get("/compare", params={"ids": ",".join(f"{i:032x}" for i in range(51))})
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["details"]) == (
        422, "too_many_ids", {"maximum": 50},
    )  # fmt: skip
    assert stack.client.get("/compare", params={"ids": ids[0], "format": "xml"}).status_code == 422
    assert stack.client.get("/compare").status_code == 422


@pytest.mark.slow
def test_compare_two_real_probe_jobs(services_stack: Any) -> None:
    stack = services_stack
    ids = [submit(stack, {"matmul_size": n, "matmul_repeats": 1}, name=f"probe {n}", tags=["cmp"]) for n in (32, 64)]
    stack.start_worker()
    jobs = [stack.wait_job(i) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    data = stack.client.get("/compare", params={"ids": ",".join(ids)}).json()
    assert data["params_diff"] == {"matmul_size": [32, 64]}
    assert data["params_same"]["matmul_repeats"] == 1
    for job, row in zip(jobs, data["jobs"], strict=True):
        gflops = job["result"]["gflops"]
        assert row["series"] == {"gflops": [[0.0, gflops]]}  # the one progress point the probe reports
        assert row["final"]["gflops"] == gflops and row["final"]["matmul_size"] == job["params"]["matmul_size"]
        assert row["plots"] == []  # probe.json is not an image
    assert [(g["params"], g["n"], g["metrics"]["matmul_size"]) for g in data["groups"]] == [
        ({"matmul_size": 32}, 1, {"n": 1, "mean": 32.0, "std": None}),
        ({"matmul_size": 64}, 1, {"n": 1, "mean": 64.0, "std": None}),
    ]
