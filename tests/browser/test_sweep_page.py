"""The sweep page ranks its children by the sweep's metric; the pipeline page draws its graph; the job page its deps."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

from jobs.models import Job
from jobs.states import JobStatus
from tests.support.browser import LiveDashboard

pytestmark = pytest.mark.browser


def test_the_sweep_page_ranks_its_children(live_dashboard_embedded: LiveDashboard, artifacts_dir: Path) -> None:
    live = live_dashboard_embedded
    stack = live.stack
    r = stack.client.post("/sweeps", json={
        "kind": "probe", "name": "size x repeats", "base": {"dtype": "float32"},
        "axes": {"grid": {"matmul_size": [16, 32]}, "seeds": [1, 2]}, "seed_param": "matmul_repeats",
        "rank_by": "gflops", "budget": {"max_jobs": 3},
    })  # fmt: skip
    assert r.status_code == 201, r.text
    sweep = r.json()
    ids = [c["id"] for c in sweep["children"]]
    # Three children "ran" (rows written as a worker would); the fourth was cut by the budget.
    gflops = {ids[0]: 1.5, ids[1]: 4.25, ids[2]: 2.0}
    with stack.session() as s:
        for job_id, value in gflops.items():
            s.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.SUCCEEDED, result={"gflops": value}))
    page = live.page(f"/ui/sweeps/{sweep['id']}")
    rows = page.locator("#s-children tbody tr")
    rows.nth(3).wait_for()
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.id)") == [ids[1], ids[2], ids[0], ids[3]]
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.rank)") == ["1", "2", "3", ""]
    assert page.locator("#s-children tbody tr .value").all_inner_texts() == ["4.25", "2", "1.5", "–"]
    assert page.locator("#s-children tbody tr").nth(3).inner_text().endswith("budget")
    assert page.locator("#s-note").inner_text() == "3 of 4 ranked"
    # The seeds (in matmul_repeats) are grouped over: one row per matmul_size.
    groups = page.locator("#s-groups tbody tr")
    assert groups.all_inner_texts() == ["16\t2\t2.875\t1.9445", "32\t1\t2\t–"]  # best mean first
    href = page.locator("#s-compare").get_attribute("href")
    assert href == "/ui/compare?ids=" + ",".join([ids[1], ids[2], ids[0]])
    page.screenshot(path=str(artifacts_dir / "dashboard-sweep.png"), full_page=True)
    assert page.js_errors == []


def test_the_pipeline_page_draws_its_graph(live_dashboard_embedded: LiveDashboard, artifacts_dir: Path) -> None:
    live = live_dashboard_embedded
    probe = {"matmul_size": 16}
    steps = [
        {"name": "a", "kind": "probe", "params": probe},
        {"name": "b", "kind": "probe", "params": probe, "after": ["a"]},
        {"name": "c", "kind": "probe", "params": probe, "after": ["a"]},
        {"name": "d", "kind": "probe", "params": probe, "after": ["b", "c"]},
    ]
    r = live.stack.client.post("/pipelines", json={"name": "diamond", "steps": steps})
    assert r.status_code == 201, r.text
    body = r.json()
    ids = {s["name"]: s["id"] for s in body["steps"]}
    page = live.page(f"/ui/pipelines/{body['id']}")
    page.locator("#p-graph svg rect").nth(3).wait_for()
    boxes = page.locator("#p-graph svg rect")
    assert boxes.evaluate_all("rs => rs.map(r => [r.dataset.step, r.getAttribute('class')])") == [
        ["a", "n-queued"],
        ["b", "n-waiting"],
        ["c", "n-waiting"],
        ["d", "n-waiting"],
    ]
    arrows = page.locator("#p-graph svg path[data-from]")
    edges = sorted(arrows.evaluate_all("ps => ps.map(p => [p.dataset.from, p.dataset.to])"))
    assert edges == sorted([[ids["a"], ids["b"]], [ids["a"], ids["c"]], [ids["b"], ids["d"]], [ids["c"], ids["d"]]])
    page.screenshot(path=str(artifacts_dir / "dashboard-pipeline.png"), full_page=True)

    job_page = live.page(f"/ui/jobs/{ids['d']}")
    job_page.locator("#j-upstreams .dep").nth(1).wait_for()
    ups = job_page.locator("#j-upstreams .dep").evaluate_all("ds => ds.map(d => d.dataset.id)")
    assert ups == sorted([ids["b"], ids["c"]])
    assert job_page.locator("#j-parent").get_attribute("href") == f"/ui/pipelines/{body['id']}"
    assert page.js_errors == [] and job_page.js_errors == []
