"""The compare page of three real train_embedding jobs: picked in the jobs table, curves overlaid, params diff."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from jobs.states import JobStatus
from tests.support.browser import LiveDashboard
from tests.support.factories import TINY_ARCFACE, add_job, key_id
from tests.support.jobs import submit

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUNS = [("baseline seed 0", 0, 0.1), ("baseline seed 1", 1, 0.1), ("high lr seed 0", 0, 0.3)]


def test_compare_three_real_jobs_from_the_jobs_table(live_dashboard: LiveDashboard, artifacts_dir: Path) -> None:
    live = live_dashboard
    stack = live.stack
    ids = [
        submit(stack, {**TINY_ARCFACE, "epochs": 2, "seed": seed, "lr": lr}, kind="train_embedding", name=name,
               tags=["cmp"], notes="browser compare")
        for name, seed, lr in RUNS
    ]  # fmt: skip
    add_job(stack, key_id(stack), status=JobStatus.SUCCEEDED, name="not in the comparison")  # untagged
    # Every progress call is written (no 1 s throttle), so each curve has one point per step.
    stack.start_worker(queues="gpu,cpu", extra_env={"FACEJOBS_PROGRESS_MIN_INTERVAL_SECONDS": "0"})
    jobs = [stack.wait_job(i, timeout=600) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3, [j.get("error") for j in jobs]

    page = live.page("/")
    page.locator("#jobs-body tr").nth(3).wait_for()
    page.fill("#f-tag", "cmp")
    page.press("#f-tag", "Enter")
    page.wait_for_function("() => document.querySelectorAll('#jobs-body tr').length === 3")
    assert page.url.endswith("/?tag=cmp")
    assert page.locator("#f-tags .chip").all_inner_texts() == ["cmp ×"]
    assert page.locator("#jobs-body td.c-name .name").all_inner_texts() == [r[0] for r in RUNS][::-1]
    page.check("#pick-all")
    page.screenshot(path=str(artifacts_dir / "dashboard-jobs-tagged.png"))
    assert page.locator("#btn-compare").inner_text() == "Compare selected (3)"
    page.click("#btn-compare")
    page.wait_for_url("**/ui/compare?ids=*")
    assert sorted(page.url.split("ids=")[1].split(",")) == sorted(ids)
    page.wait_for_function("() => document.body.dataset.ready === '1'")

    # The params diff: the two settings that differ, one value per job (in the page's job order).
    order = page.url.split("ids=")[1].split(",")
    by_id = {i: (seed, lr) for i, (_, seed, lr) in zip(ids, RUNS, strict=True)}
    params = page.locator("#c-params tr[data-param]")
    assert params.evaluate_all("rs => rs.map(r => r.dataset.param)") == ["lr", "seed"]
    assert params.nth(0).locator("td").all_inner_texts() == [str(by_id[i][1]) for i in order]
    assert params.nth(1).locator("td").all_inner_texts() == [str(by_id[i][0]) for i in order]

    # One chart per metric, three lines on each (one per job), with a legend naming the jobs.
    charts = page.locator("figure.chart.multi")
    assert charts.evaluate_all("fs => fs.map(f => f.dataset.metric)") == ["acc", "loss"]
    for metric in ("acc", "loss"):
        chart = page.locator(f'figure.chart.multi[data-metric="{metric}"]')
        assert chart.get_attribute("data-series") == "3"
        assert chart.locator("path.series").count() == 3
        assert len(set(chart.locator("path.series").evaluate_all("ps => ps.map(p => p.getAttribute('stroke'))"))) == 3
    legend = page.locator('figure.chart.multi[data-metric="loss"] .legend-item').all_inner_texts()
    assert [t.split(" (")[0].strip() for t in legend] == [next(r[0] for r in RUNS if by_id[i] == r[1:]) for i in order]

    # Final metrics and the groups (over seeds) agree with the jobs' own results.
    data = stack.client.get("/compare", params={"ids": ",".join(order)}).json()
    base = [j["result"]["accuracy"] for j in jobs[:2]]
    group = next(g for g in data["groups"] if g["params"] == {"lr": 0.1})
    assert group["n"] == 2 and group["metrics"]["accuracy"] == {
        "n": 2,
        "mean": statistics.fmean(base),
        "std": statistics.stdev(base),
    }
    assert page.locator("#c-groups tr").count() == 3  # the header and two groups
    plots = page.locator("#c-plots img.plot")
    assert plots.count() == 3 * len(data["jobs"][0]["plots"]) > 0
    page.wait_for_function("() => [...document.querySelectorAll('#c-plots img.plot')].every(i => i.naturalWidth > 0)")
    page.screenshot(path=str(artifacts_dir / "dashboard-compare.png"), full_page=True)
    assert page.js_errors == [] and page.dialogs == []
