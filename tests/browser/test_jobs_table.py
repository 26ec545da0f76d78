"""The jobs table: newest first, keyset pages, filters in the URL, and no polling while the tab is hidden."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from jobs.keys import revoke_key
from jobs.states import JobStatus, utcnow
from tests.support.browser import LiveDashboard
from tests.support.seed import add_job, owner_id

pytestmark = pytest.mark.browser

KINDS = ("invert", "probe", "train_embedding")
STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.RUNNING, JobStatus.QUEUED, JobStatus.CANCELLED)


def seed_jobs(live: LiveDashboard, n: int) -> list[tuple[str, str, str]]:
    """`n` jobs one minute apart, kinds and statuses in turn; (id, kind, status) newest first."""
    start = utcnow() - timedelta(minutes=n + 1)
    jobs = []
    for i in range(n):
        kind, status = KINDS[i % 3], STATUSES[i % 5]
        created = start + timedelta(minutes=i)
        started = created + timedelta(seconds=20) if status != JobStatus.QUEUED else None
        finished = created + timedelta(seconds=20 + 7 * (i % 8 + 1)) if status.terminal else None
        total = 20000 if kind == "invert" else 30
        step = {JobStatus.SUCCEEDED: total, JobStatus.RUNNING: total * (i % 7 + 1) // 8,
                JobStatus.FAILED: total // 3, JobStatus.CANCELLED: total // 2}.get(status, 0)  # fmt: skip
        metrics = {"loss": round(2.0 / (1 + step / 1000), 4), "accuracy": round(step / total, 3)} if step else {}
        job_id = add_job(
            live.stack, kind=kind, status=status, created_at=created, updated_at=finished or created,
            started_at=started, finished_at=finished, attempt=0 if status == JobStatus.QUEUED else 1 + (i % 4 == 1),
            progress_step=step, progress_total=total if status != JobStatus.QUEUED else 0, metrics=metrics,
            error="RuntimeError: CUDA out of memory" if status == JobStatus.FAILED else None,
        )  # fmt: skip
        jobs.append((job_id, kind, status.value))
    return jobs[::-1]


def table_ids(page: object) -> list[str]:
    return page.locator("#jobs-body tr").evaluate_all("trs => trs.map(tr => tr.dataset.id)")  # type: ignore[attr-defined]


def test_jobs_table_pages_filters_and_pauses_while_hidden(
    live_dashboard_embedded: LiveDashboard, artifacts_dir: Path
) -> None:
    live = live_dashboard_embedded
    jobs = seed_jobs(live, 62)
    ids = [j[0] for j in jobs]
    page = live.page("/")
    page.locator("#jobs-body tr").nth(49).wait_for()
    assert table_ids(page) == ids[:50]
    first = page.locator("#jobs-body tr").first
    assert first.locator(".badge").inner_text() == jobs[0][2]
    assert page.locator("#pg-info").inner_text() == "page 1 · 50 jobs · newest first"
    page.screenshot(path=str(artifacts_dir / "dashboard-jobs.png"))

    page.click("#pg-next")
    page.wait_for_function("() => document.querySelectorAll('#jobs-body tr').length === 12")
    assert table_ids(page) == ids[50:]
    assert page.locator("#pg-info").inner_text() == "page 2 · 12 jobs"
    assert page.locator("#pg-next").is_disabled()
    page.click("#pg-newest")
    page.wait_for_function("() => document.querySelectorAll('#jobs-body tr').length === 50")
    assert table_ids(page) == ids[:50]

    page.select_option("#f-status", "failed")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#jobs-body tr')].every(tr => tr.dataset.status === 'failed')"
    )
    assert table_ids(page) == [j[0] for j in jobs if j[2] == "failed"]
    page.locator('#f-kind option[value="invert"]').wait_for(state="attached")
    page.select_option("#f-kind", "invert")
    expected = [j[0] for j in jobs if j[2] == "failed" and j[1] == "invert"]
    page.wait_for_function(f"() => document.querySelectorAll('#jobs-body tr').length === {len(expected)}")
    assert table_ids(page) == expected
    assert page.url.endswith("/?status=failed&kind=invert")

    # Hidden tab: no request at all; shown again: a poll at once.
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/jobs?" in r.url else None)
    page.evaluate("""() => {
      Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
      document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.wait_for_timeout(300)
    requests.clear()
    page.wait_for_timeout(5000)
    assert requests == []
    assert page.locator("#live").inner_text() == "❚❚ paused (tab hidden)"
    page.evaluate("""() => {
      Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'visible'});
      document.dispatchEvent(new Event('visibilitychange'));
    }""")
    page.wait_for_timeout(500)
    assert len(requests) == 1 and "status=failed" in requests[0] and "kind=invert" in requests[0]

    # A key revoked while the page is open: the next poll stops everything and asks for a key.
    with live.stack.session() as s:
        assert revoke_key(s, owner_id(live.stack))
    page.locator("#login-error", has_text="Your API key was rejected").wait_for()
    assert page.locator("#main").is_hidden()
    assert page.evaluate("sessionStorage.getItem('facejobs.apiKey')") is None
    assert page.js_errors == []
