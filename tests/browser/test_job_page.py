"""The job page of a running job: metric curves, ETA, a live preview that changes, history, not-found."""

from __future__ import annotations

import io
import math
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from PIL import Image

from jobs.states import JobStatus
from tests.support.browser import LiveDashboard
from tests.support.seed import add_events, add_job, curve_png, grid_png, invert_like_job, put_artifact

pytestmark = pytest.mark.browser

PIXEL_JS = """img => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  return Array.from(g.getImageData(40, 40, 1, 1).data.slice(0, 3));
}"""


def displayed_pixel(img: Any) -> list[int]:
    """The (40, 40) pixel of what `img` shows: drawn from its blob, or read from its presigned URL."""
    src = img.get_attribute("src")
    if src.startswith("blob:"):
        return list(img.evaluate(PIXEL_JS))
    # A presigned URL of the object store: another origin, so a canvas would be tainted; fetch it here.
    return list(Image.open(io.BytesIO(httpx.get(src).content)).convert("RGB").getpixel((40, 40)))


def test_running_job_page_shows_curves_eta_and_a_changing_preview(
    live_dashboard_both: LiveDashboard, artifacts_dir: Path
) -> None:
    live = live_dashboard_both
    # 300 progress events (every 20 steps to 6000): the page reads them in two pages of 200.
    job_id = invert_like_job(live.stack, step=6000, total=20000, every=20)
    before, after = grid_png(6000), grid_png(6500)
    pixel_before, pixel_after = (list(Image.open(io.BytesIO(png)).getpixel((40, 40))) for png in (before, after))
    assert pixel_before != pixel_after
    put_artifact(live.stack, job_id, "previews/grid.png", before, "image/png")
    loss = [1.0 + 9.0 * math.exp(-s * 250 / 3000) for s in range(1, 25)]
    put_artifact(live.stack, job_id, "loss.png", curve_png("loss", loss), "image/png")
    page = live.page(f"/ui/jobs/{job_id}")

    page.locator("#j-status .badge", has_text="running").wait_for()
    charts = page.locator("figure.chart")
    charts.nth(2).wait_for()
    assert charts.evaluate_all("fs => fs.map(f => f.dataset.metric)") == ["loss", "loss_bn", "accuracy"]
    assert page.locator("#j-charts-note").inner_text() == "300 points from progress events"
    assert page.locator('figure.chart[data-metric="accuracy"] .last').inner_text() == "0.75"
    assert page.locator("#j-pct").inner_text() == "30.0%"
    # 20 steps/s over the last minute of events: 14,000 steps left is 11 m 40 s from the last event.
    eta = page.locator("#j-eta").inner_text()
    match = re.fullmatch(r"~11 m (\d\d) s \(20 steps/s\)", eta)
    assert match and 10 <= int(match.group(1)) <= 40, eta

    preview = page.locator('#j-previews figure[data-name="previews/grid.png"] img')
    page.wait_for_function("img => img.complete && img.naturalWidth === 256", arg=preview.element_handle())
    assert displayed_pixel(preview) == pixel_before
    assert page.locator('#j-plots figure[data-name="loss.png"]').count() == 1
    if live.stack.name == "embedded":
        page.screenshot(path=str(artifacts_dir / "dashboard-job-running.png"), full_page=True)

    # The worker overwrites the preview in place: the page shows the new one without a reload.
    page.evaluate("window.__sameDocument = true")
    put_artifact(live.stack, job_id, "previews/grid.png", after, "image/png")
    t0 = time.monotonic()
    pixel = displayed_pixel(preview)
    while pixel != pixel_after and time.monotonic() - t0 < 6:
        page.wait_for_timeout(100)
        page.wait_for_function("img => img.complete", arg=preview.element_handle())
        pixel = displayed_pixel(preview)
    assert pixel == pixel_after, f"the preview did not change within 6 s of the new artifact: {pixel}"
    assert page.evaluate("window.__sameDocument") is True
    assert page.js_errors == []


def test_failed_job_shows_its_error_attempts_and_retry(live_dashboard_embedded: LiveDashboard) -> None:
    live = live_dashboard_embedded
    trace = 'Traceback (most recent call last):\n  File "runner.py", line 9\nRuntimeError: CUDA out of memory'
    job_id = add_job(live.stack, status=JobStatus.FAILED, attempt=2, preemptions=1, error=trace,
                     params={"matmul_size": 64})  # fmt: skip
    add_events(live.stack, job_id, [
        {"attempt": 1, "type": "status", "message": "running on w1 (attempt 1)"},
        {"attempt": 1, "type": "status", "message": "requeued: worker shutting down (not counted as a failure)"},
        {"attempt": 2, "type": "status", "message": "running on w2 (attempt 2)"},
        {"attempt": 2, "type": "error", "message": trace},
    ])  # fmt: skip
    page = live.page(f"/ui/jobs/{job_id}")
    page.locator("#j-error").wait_for()
    assert page.locator("#j-error").inner_text() == trace
    assert page.locator("#j-attempts tbody tr").count() == 2
    outcomes = page.locator("#j-attempts tbody td:last-child").all_inner_texts()
    assert outcomes == [
        "requeued: worker shutting down (not counted as a failure)",
        "Traceback (most recent call last):",
    ]
    assert page.locator("#j-history tbody tr").count() == 5  # queued + the four above
    assert page.locator("#btn-cancel").is_disabled()
    page.locator("#btn-retry").click()
    page.locator("#j-status .badge", has_text="queued").wait_for()
    assert live.stack.client.get(f"/jobs/{job_id}").json()["status"] == "queued"
    assert page.js_errors == []


def test_unknown_or_foreign_job_shows_not_found(live_dashboard_embedded: LiveDashboard, artifacts_dir: Path) -> None:
    live = live_dashboard_embedded
    foreign = add_job(live.stack, key=live.stack.other_key)
    for job_id in ("0" * 32, foreign, "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E"):
        page = live.page(f"/ui/jobs/{job_id}")
        page.get_by_role("heading", name="Job not found").wait_for()
        assert page.locator("#job").is_hidden()
        assert page.title() == "Job not found · facejobs"
        assert page.locator("#not-found code").inner_text() == unquote(job_id)
        assert page.js_errors == [] and page.dialogs == []
        if job_id == foreign:
            page.screenshot(path=str(artifacts_dir / "dashboard-job-not-found.png"))
        page.context.close()
