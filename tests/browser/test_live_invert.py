"""A real `invert` job on a real worker: its page shows the preview grid changing while it runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.browser import LiveDashboard
from tests.support.factories import TINY_ARCFACE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A tiny ArcFace model on sklearn's digits (a few seconds), then an inversion of its ten classes
# with a preview every 20 steps: long enough to watch several previews arrive.
TINY_MODEL = TINY_ARCFACE
WORKER_ENV = {"FACEJOBS_HEARTBEAT_SECONDS": "0.5", "FACEJOBS_PROGRESS_MIN_INTERVAL_SECONDS": "0.2"}

# What the preview <img> shows, as a data URL of its drawn pixels (the same for a blob or a presigned URL
# of this origin's store, since only the embedded stack serves artifacts from the page's origin).
DRAWN_JS = """img => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL();
}"""


def test_a_running_inversion_shows_new_previews_without_a_reload(
    live_dashboard_embedded: LiveDashboard, artifacts_dir: Path
) -> None:
    live = live_dashboard_embedded
    client = live.stack.client
    live.stack.start_worker(extra_env=WORKER_ENV)
    train = client.post("/jobs", json={"kind": "train_embedding", "params": TINY_MODEL}).json()
    assert live.stack.wait_job(train["id"], timeout=240)["status"] == "succeeded"
    params = {"model": f"job:{train['id']}", "images_per_class": 2, "iterations": 4000, "preview_every": 20,
              "checkpoint_every": 500, "flip": False, "lambda_bn": 0.01, "bn_form": "l2"}  # fmt: skip
    job_id = client.post("/jobs", json={"kind": "invert", "params": params}).json()["id"]

    page = live.page(f"/ui/jobs/{job_id}")
    page.evaluate("window.__sameDocument = true")
    page.locator("#j-status .badge", has_text="running").wait_for(timeout=90_000)
    preview = page.locator('#j-previews figure[data-name="previews/grid.png"] img')
    preview.wait_for(timeout=60_000)
    seen: list[str] = []
    for _ in range(60):
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=preview.element_handle())
        drawn = preview.evaluate(DRAWN_JS)
        if not seen or drawn != seen[-1]:
            seen.append(drawn)
        if len(seen) >= 3:
            break
        page.wait_for_timeout(500)
    # Three different grids drawn in one document while the job was still running.
    assert len(seen) >= 3, f"the preview changed {len(seen) - 1} times in 30 s"
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
    assert page.evaluate("window.__sameDocument") is True
    page.screenshot(path=str(artifacts_dir / "dashboard-live-invert.png"), full_page=True)
    # Progress moved on the page too, and the curves of the real loss terms are drawn.
    assert page.locator('figure.chart[data-metric="loss"]').count() == 1
    assert page.js_errors == []
    client.post(f"/jobs/{job_id}/cancel")
    assert live.stack.wait_job(job_id, timeout=60)["status"] == "cancelled"
