"""The job page tails a running job's output and draws its utilisation; the workers page shows load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.browser import LiveDashboard
from tests.support.jobs import FAST_LEASES, submit

pytestmark = [pytest.mark.browser, pytest.mark.services]


def test_job_page_tails_output_and_charts_utilisation(live_dashboard: LiveDashboard, artifacts_dir: Path) -> None:
    live = live_dashboard
    job_id = submit(live.stack, {"matmul_size": 64, "matmul_repeats": 1, "duration_seconds": 6, "chatter": True})
    live.stack.start_worker(extra_env=FAST_LEASES)
    page = live.page(f"/ui/jobs/{job_id}")
    out = page.locator("#j-out")
    # While it runs: the lines so far, the panel marked live.
    page.locator("#j-out", has_text="tick 2 stdout").wait_for(timeout=90_000)
    assert "live" in page.locator("#j-out-note").inner_text()
    page.screenshot(path=str(artifacts_dir / "job-output-live.png"), full_page=True)
    page.locator('#j-status .badge:text("succeeded")').wait_for(timeout=60_000)
    page.locator("#j-out", has_text="tick 6 logged").wait_for()
    text = out.inner_text()
    assert re.findall(r"tick (\d) stdout", text) == ["1", "2", "3", "4", "5", "6"]
    assert "live" not in page.locator("#j-out-note").inner_text()
    # Utilisation beside the training curve: a chart per sys/ series, by seconds.
    page.locator('figure.chart[data-metric="sys/rss_mb"]').wait_for()
    assert page.locator('figure.chart[data-metric="sys/cpu_pct"]').count() == 1
    assert page.locator('figure.chart[data-metric="gflops"]').count() == 1
    page.screenshot(path=str(artifacts_dir / "job-output-done.png"), full_page=True)
    assert page.js_errors == []

    workers = live.page("/ui/workers")
    cell = workers.locator("#workers-table tbody tr td:nth-child(9)")
    workers.locator("#workers-table tbody td", has_text=re.compile(r"^cpu \d+% · mem \d+ MiB$")).wait_for()
    assert re.fullmatch(r"cpu \d+% · mem \d+ MiB", cell.inner_text())
    workers.screenshot(path=str(artifacts_dir / "workers-load.png"))
    assert workers.js_errors == []
