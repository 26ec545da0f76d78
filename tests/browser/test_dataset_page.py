"""The dataset page on a real embed job: thumbnails per identity a page at a time, the job's boxes and
landmarks drawn where index.csv has them, and its failures listed with their reasons."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from jobs.models import Dataset
from jobs.store import join_key
from tests.support.browser import LiveDashboard
from tests.support.faces import orl_model_folder
from tests.support.factories import bomb_png, make_zip, upload
from tests.support.pages import refused_uploads, register_evaluated_model
from tests.support.services import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PEOPLE = ("s1", "s2", "s3", "s4", "s5")
CORRUPT = b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50  # a JPEG's start, then nothing: stored behind ingest's back

# Per thumbnail on the page: path, boxes drawn, landmarks drawn, the failure shown, first box's x.
CARDS_JS = """() => [...document.querySelectorAll('#d-groups figure.thumb')].map(f => [
  f.dataset.path, f.querySelectorAll('.fv-box').length, f.querySelectorAll('.fv-lm').length,
  (f.querySelector('figcaption .bad') || {}).textContent || null,
  f.querySelector('.fv-box') ? Number(f.querySelector('.fv-box').getAttribute('x')) : null])"""


def read_csv(stack: Stack, key: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(stack.store.get_bytes(key).decode())))


def test_dataset_page_draws_an_embed_jobs_detections_and_lists_its_failures(
    live_dashboard: LiveDashboard, orl_dir: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    live = live_dashboard
    stack = live.stack
    members = {f"{p}/{i}.pgm": (orl_dir / p / f"{i}.pgm").read_bytes() for p in PEOPLE for i in range(1, 11)}
    members["s5/blank.png"] = refused_uploads(tmp_path / "bad")["no_face"].read_bytes()
    ds = upload(stack.client, "/datasets", "five.zip", make_zip(members)).json()
    with stack.session() as s:
        row = s.get(Dataset, ds["id"])
        assert row is not None
        stack.store.put_bytes(join_key(row.key_prefix, "s5/corrupt.jpg"), CORRUPT, "image/jpeg")
        row.files = {"keys": [*row.files["keys"], "s5/corrupt.jpg"]}
    folder, _ = orl_model_folder(orl_dir)
    model = f"job:{register_evaluated_model(stack, folder)}"
    params = {"dataset": f"dataset:{ds['id']}", "model": model, "min_face_size": 40, "detect_batch_size": 50}
    job_id = stack.client.post("/jobs", json={"kind": "embed", "params": params}).json()["id"]
    stack.start_worker(queues="gpu,cpu")
    job = stack.wait_job(job_id, timeout=240)
    assert job["status"] == "succeeded", job["error"]
    assert (job["result"]["files"], job["result"]["faces"], job["result"]["failures"]) == (52, 50, 2)
    index = {
        r["key"]: r for r in csv.DictReader(io.StringIO(stack.store.get_bytes(f"jobs/{job_id}/index.csv").decode()))
    }
    failures = list(csv.DictReader(io.StringIO(stack.store.get_bytes(f"jobs/{job_id}/failures.csv").decode())))
    assert {r["key"]: r["reason"] for r in failures} == {"s5/blank.png": "no_face", "s5/corrupt.jpg": "undecodable"}

    page = live.page(f"/ui/datasets/{ds['id']}")
    page.locator("#d-embed-summary", has_text="50 faces in 52 files").wait_for(timeout=30_000)
    assert page.input_value("#d-embed") == f"job:{job_id}"  # the newest finished embed job of this dataset
    page.wait_for_function("() => document.querySelectorAll('#d-groups .fv-box').length === 48")
    cards = page.evaluate(CARDS_JS)
    # Page 1: 48 files in natural order (s1/1 .. s1/10, s2/1 ...), each with its one face drawn where
    # index.csv puts it, grouped per identity.
    keys = sorted(members, key=lambda k: (int(k[1]), int(k.split("/")[1].split(".")[0]) if k[3].isdigit() else 99))
    assert [c[0] for c in cards] == keys[:48]
    assert all(c[1:4] == [1, 5, None] for c in cards)
    assert [c[4] for c in cards] == [pytest.approx(float(index[c[0]]["x1"]), abs=1e-3) for c in cards]
    groups = page.eval_on_selector_all("#d-groups section.identity", "ss => ss.map(s => s.dataset.identity)")
    assert groups == list(PEOPLE)
    assert page.inner_text("#d-range") == "1–48 of 52"
    page.screenshot(path=str(artifacts_dir / "dashboard-dataset-page1.png"), full_page=True)

    # Page 2: the last two faces of s5, then the two failures, shown with their reasons.
    page.click("#d-next")
    page.locator("#d-range", has_text="49–52 of 52").wait_for()
    page.wait_for_function("() => document.querySelectorAll('#d-groups .fv-box').length === 2")
    page.wait_for_function("() => document.querySelector('figure.thumb[data-path=\"s5/blank.png\"] img') !== null")
    cards = page.evaluate(CARDS_JS)
    expected = [["s5/9.pgm", 1, 5, None], ["s5/10.pgm", 1, 5, None]]
    expected += [["s5/blank.png", 0, 0, "no_face"], ["s5/corrupt.jpg", 0, 0, "undecodable"]]
    assert [c[:4] for c in cards] == expected
    nothumb = page.locator('figure.thumb[data-path="s5/corrupt.jpg"] .nothumb')
    nothumb.wait_for()
    assert nothumb.get_attribute("title") == "s5/corrupt.jpg: not a decodable image (UnidentifiedImageError)"
    assert page.locator("#d-next").is_disabled()
    page.screenshot(path=str(artifacts_dir / "dashboard-dataset-page2.png"), full_page=True)

    # The failures, listed with the embed job's reasons and details.
    rows = page.locator("#d-failures tbody tr")
    rows.nth(1).wait_for()
    listed = rows.evaluate_all("trs => trs.map(tr => [...tr.cells].map(td => td.textContent))")
    assert listed == [[r["key"], r["reason"], r["detail"]] for r in failures]

    # One identity: its ten files.
    page.select_option("#d-identity", "s3")
    page.locator("#d-range", has_text="1–10 of 10").wait_for()
    page.wait_for_function("() => document.querySelectorAll('#d-groups .fv-box').length === 10")
    assert [c[0] for c in page.evaluate(CARDS_JS)] == [f"s3/{i}.pgm" for i in range(1, 11)]
    page.screenshot(path=str(artifacts_dir / "dashboard-dataset-s3.png"), full_page=True)
    assert page.js_errors == [] and page.dialogs == []

    # Another key's dataset reads as unknown, on the page as in the API.
    other = live.page(f"/ui/datasets/{ds['id']}", key=stack.other_key)
    other.locator("#d-notfound").wait_for()
    assert stack.other.get(f"/datasets/{ds['id']}/files").status_code == 404


def test_dataset_uploads_with_a_bomb_or_a_corrupt_image_say_so(
    live_dashboard_embedded: LiveDashboard, orl_dir: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    live = live_dashboard_embedded
    face = (orl_dir / "s1" / "1.pgm").read_bytes()
    page = live.page("/ui/datasets")
    page.locator("#ds-empty").wait_for()
    for name, bad in (("bomb", bomb_png()), ("corrupt", CORRUPT)):
        archive = tmp_path / f"{name}.zip"
        archive.write_bytes(make_zip({"s1/1.pgm": face, f"s1/{name}.png": bad}))
        page.set_input_files("#u-file", str(archive))
        page.click("#u-submit")
        error = page.locator("#u-error:not([hidden])")
        error.wait_for()
        text = error.inner_text()
        assert text.startswith("Upload failed (400): ") and f"{name}.png" in text, text
        assert text.endswith("nothing was stored"), text
        assert ("decompression bomb" in text) is (name == "bomb"), text
        page.screenshot(path=str(artifacts_dir / f"dashboard-dataset-upload-{name}.png"))
    assert live.stack.client.get("/datasets").json()["data"] == []
    assert page.js_errors == []
