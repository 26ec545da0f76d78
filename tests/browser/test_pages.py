"""The submit form's field types and cloning, the workers page, and a dataset upload with its progress bar."""

from __future__ import annotations

import zipfile
from datetime import timedelta
from pathlib import Path

import pytest

from jobs.models import Worker
from jobs.states import JobStatus, utcnow
from tests.support.browser import LiveDashboard
from tests.support.seed import add_job

pytestmark = pytest.mark.browser


def test_submit_form_types_from_the_schema_and_clone(
    live_dashboard_embedded: LiveDashboard, artifacts_dir: Path
) -> None:
    live = live_dashboard_embedded
    page = live.page("/ui/submit?kind=invert")
    page.locator("#p-classes").wait_for()
    # Required marked, Literal as a select with its default, bool as a checkbox, list[int] | None as text.
    assert page.locator('label[for="p-model"] .req').count() == 1
    assert page.locator("#p-lr_schedule option").all_inner_texts() == ["constant", "cosine"]
    assert page.input_value("#p-lr_schedule") == "constant"
    assert page.locator("#p-flip").is_checked()
    assert page.input_value("#p-iterations") == "20000"
    assert page.input_value("#p-classes") == ""
    assert "list of integer (comma-separated)" in page.locator("#p-classes-help").inner_text()
    page.screenshot(path=str(artifacts_dir / "dashboard-submit.png"), full_page=True)

    page.click("#s-submit")  # model is required: refused in the browser, nothing sent
    assert page.locator('.field[data-field="model"] .field-error').inner_text() == "model is required"
    # A reference the key owns: POST /jobs answers 404 for any other.
    model = f"job:{add_job(live.stack, kind='train_embedding', status=JobStatus.SUCCEEDED)}"
    page.fill("#p-model", model)
    page.fill("#p-classes", "0, 3, 7")
    page.uncheck("#p-flip")
    page.select_option("#p-lr_schedule", "cosine")
    page.fill("#p-iterations", "1500")
    page.click("#s-submit")
    page.locator("#s-last-job").wait_for()
    job_id = page.locator("#s-last-job").get_attribute("href").rsplit("/", 1)[-1]
    params = live.stack.client.get(f"/jobs/{job_id}").json()["params"]
    assert (params["model"], params["classes"], params["flip"], params["lr_schedule"], params["iterations"]) == (
        model, [0, 3, 7], False, "cosine", 1500)  # fmt: skip

    # Clone: the same form, filled with that job's params.
    clone = live.page(f"/ui/submit?clone={job_id}")
    clone.locator("#s-status", has_text="Params copied from job").wait_for()
    assert clone.input_value("#s-kind") == "invert"
    assert (clone.input_value("#p-classes"), clone.input_value("#p-iterations")) == ("0, 3, 7", "1500")
    assert not clone.locator("#p-flip").is_checked()

    # An Optional[bool] is a three-way select, not a checkbox.
    clone.select_option("#s-kind", "train_embedding")
    assert clone.locator("#p-grey option").all_inner_texts() == ["— none —", "true", "false"]
    assert page.js_errors == [] and clone.js_errors == []


def test_workers_page_marks_stale_workers(live_dashboard_embedded: LiveDashboard, artifacts_dir: Path) -> None:
    live = live_dashboard_embedded
    job_id = add_job(live.stack, status=JobStatus.RUNNING, attempt=1)
    now = utcnow()
    with live.stack.session() as s:
        s.add(Worker(id="celery@gpu0-node-a", hostname="node-a", pid=4242, queues="gpu", device="cuda:0 (NVIDIA H100)",
                     current_job_id=job_id, started_at=now - timedelta(hours=3), last_heartbeat=now))  # fmt: skip
        s.add(Worker(id="celery@cpu-node-b", hostname="node-b", pid=77, queues="cpu", device="cpu",
                     started_at=now - timedelta(days=1), last_heartbeat=now - timedelta(minutes=10)))  # fmt: skip
    page = live.page("/ui/workers")
    rows = page.locator("#workers-table tbody tr")
    rows.nth(1).wait_for()
    assert rows.evaluate_all("trs => trs.map(tr => [tr.dataset.id, tr.className])") == [
        ["celery@cpu-node-b", "stale"], ["celery@gpu0-node-a", ""]]  # fmt: skip
    assert rows.nth(0).locator(".badge").inner_text() == "stale"
    assert rows.nth(0).locator("td").nth(6).inner_text() == "10 min ago"
    busy = rows.nth(1)
    assert busy.locator(".badge").inner_text() == "busy"
    assert busy.locator("td").nth(2).inner_text() == "cuda:0 (NVIDIA H100)"
    assert busy.locator(f'a[href="/ui/jobs/{job_id}"]').inner_text() == job_id[:8]
    assert page.locator("#w-count").inner_text() == "2 workers · 1 stale"
    page.screenshot(path=str(artifacts_dir / "dashboard-workers.png"))
    assert page.js_errors == []


def test_dataset_upload_shows_progress_and_lists_it(
    live_dashboard_embedded: LiveDashboard, orl_dir: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    live = live_dashboard_embedded
    archive = tmp_path / "orl-mini.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for person in ("s1", "s2", "s3"):
            for i in (1, 2, 3, 4):
                zf.write(orl_dir / person / f"{i}.pgm", f"{person}/{i}.pgm")
    page = live.page("/ui/datasets")
    page.locator("#ds-empty").wait_for()
    page.set_input_files("#u-file", str(archive))
    page.fill("#u-name", "orl mini")
    page.click("#u-submit")
    status = page.locator("#u-status", has_text="Stored orl mini as dataset:")
    status.wait_for()
    datasets = live.stack.client.get("/datasets").json()["data"]
    assert len(datasets) == 1
    ds = datasets[0]
    assert (ds["num_files"], ds["num_identities"], ds["layout"]) == (12, 3, "identities")
    assert status.inner_text() == f"Stored orl mini as dataset:{ds['id']}: 12 files, 3 identities."
    assert page.locator("#u-bar span").evaluate("s => s.style.width") == "100%"
    row = page.locator(f'#ds-table tbody tr[data-id="{ds["id"]}"]')
    row.wait_for()
    assert row.locator("code").inner_text() == f"dataset:{ds['id']}"
    page.screenshot(path=str(artifacts_dir / "dashboard-datasets.png"))
    assert page.js_errors == []
