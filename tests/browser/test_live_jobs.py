"""The dashboard against the real services and a real Celery worker: log in, submit, watch, download, cancel."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.browser import LiveDashboard

pytestmark = [pytest.mark.browser, pytest.mark.services]


def test_submit_probe_from_the_form_watch_it_succeed_and_download_its_artifact(
    live_dashboard: LiveDashboard, artifacts_dir: Path
) -> None:
    live = live_dashboard
    page = live.page("/", logged_in=False)

    # Nothing without a key: the page is a key prompt; a wrong key is refused with a message.
    page.locator("#login-key").wait_for()
    assert page.locator("#main").is_hidden()
    page.fill("#login-key", "fj_00000000_" + "0" * 32)
    page.click("#login-form button[type=submit]")
    page.locator("#login-error").wait_for()
    assert page.locator("#login-error").inner_text().startswith("This key was rejected")
    page.screenshot(path=str(artifacts_dir / "dashboard-login.png"))
    page.fill("#login-key", live.stack.key)
    page.click("#login-form button[type=submit]")
    page.get_by_text("No jobs yet.").wait_for()

    # The form is built from the kind's JSON schema: defaults filled, a pattern of alternatives as a select.
    page.get_by_role("link", name="Submit", exact=True).click()
    page.locator('#s-kind option[value="probe"]').wait_for(state="attached")
    page.select_option("#s-kind", "probe")
    assert page.input_value("#p-matmul_size") == "1024"
    assert page.locator("#p-dtype option").all_inner_texts() == ["float32", "float16", "bfloat16"]
    assert page.input_value("#p-fail_with") == ""
    page.fill("#p-matmul_size", "8")
    page.click("#s-submit")
    field_error = page.locator('.field[data-field="matmul_size"] .field-error')
    field_error.wait_for()
    assert field_error.inner_text() == "Input should be greater than or equal to 16"
    page.fill("#p-matmul_size", "64")
    page.fill("#p-matmul_repeats", "2")
    page.fill("#p-duration_seconds", "2")
    page.click("#s-submit")
    page.locator("#s-last-job").wait_for()
    job_id = page.locator("#s-last-job").get_attribute("href").rsplit("/", 1)[-1]
    assert live.stack.client.get(f"/jobs/{job_id}").json()["params"]["matmul_size"] == 64

    # The table shows it queued; a worker starts; the same document sees it run and succeed.
    page.get_by_role("link", name="Jobs", exact=True).click()
    row = page.locator(f'#jobs-body tr[data-id="{job_id}"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "queued"
    page.evaluate("window.__sameDocument = true")
    live.stack.start_worker()
    page.locator(f'#jobs-body tr[data-id="{job_id}"][data-status="succeeded"]').wait_for(timeout=90_000)
    assert page.evaluate("window.__sameDocument") is True
    assert row.locator(".badge").inner_text() == "succeeded"
    assert row.locator(".pct").inner_text() == "100%"
    page.screenshot(path=str(artifacts_dir / "dashboard-jobs-live.png"))

    # Its page: the artifact, downloaded with the key through a presigned URL of the S3 server.
    row.locator("a.kind").click()
    page.locator('a.download[data-name="probe.json"]').wait_for()
    with page.expect_download() as download:
        page.click('a.download[data-name="probe.json"]')
    saved = Path(download.value.path())
    result = live.stack.client.get(f"/jobs/{job_id}").json()["result"]
    assert json.loads(saved.read_text()) == {k: v for k, v in result.items() if k != "sys"}  # sys: peak memory
    assert download.value.suggested_filename == "probe.json"
    assert json.loads(page.locator("#j-result").inner_text()) == result
    page.screenshot(path=str(artifacts_dir / "dashboard-job-succeeded.png"), full_page=True)
    assert page.js_errors == []


def test_cancel_a_running_job_from_its_page(live_dashboard: LiveDashboard) -> None:
    live = live_dashboard
    resp = live.stack.client.post(
        "/jobs", json={"kind": "probe", "params": {"matmul_size": 32, "duration_seconds": 120}}
    )
    job_id = resp.json()["id"]
    live.stack.start_worker(extra_env={"FACEJOBS_HEARTBEAT_SECONDS": "0.5"})
    page = live.page(f"/ui/jobs/{job_id}")
    page.locator("#j-status .badge", has_text="running").wait_for(timeout=90_000)
    page.locator("#j-progress dd", has_text=re.compile(r"^[1-9]\d* / 120$")).wait_for(timeout=15_000)
    page.click("#btn-cancel")
    page.locator("#j-status .badge", has_text="cancelled").wait_for(timeout=15_000)
    job = live.stack.client.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["cancel_requested"]) == ("cancelled", True)
    assert page.locator("#btn-cancel").is_disabled()
    assert page.locator("#btn-retry").is_enabled()
    assert page.js_errors == []
