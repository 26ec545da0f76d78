"""The Verify page with a real worker: an ORL model trained in this test process, two images dropped,
each face drawn with its box and landmarks, the crops, the verdict equal to `distance <= threshold`;
two users at once; and the clear messages for a photo with no face, a corrupt file and a bomb."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from jobs.models import Model, new_id
from jobs.states import JobStatus, utcnow
from tests.support.browser import LiveDashboard
from tests.support.faces import orl_model_folder
from tests.support.pages import as_png, refused_uploads, register_evaluated_model
from tests.support.seed import add_job, owner_id

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Every face drawn: [boxes, landmarks] per side, and the crop's decoded size.
DRAWN_JS = """() => ['a', 'b'].map(s => {
  const v = document.querySelector('#v-view-' + s);
  const crop = document.querySelector('#v-crop-' + s);
  return [v.querySelectorAll('.fv-box').length, v.querySelectorAll('.fv-lm').length, crop.naturalWidth,
          v.querySelector('img').naturalWidth];
})"""


def verify_on_page(page: Any, model: str, a: Path, b: Path) -> None:
    page.locator(f'#v-model option[value="{model}"]').wait_for(state="attached")
    page.select_option("#v-model", model)
    page.set_input_files("#v-file-a", str(a))
    page.set_input_files("#v-file-b", str(b))
    page.click("#v-submit")


def read_result(page: Any) -> dict[str, Any]:
    """What the page shows once the verdict is in: its numbers, and the job they came from."""
    page.locator("#v-result:not([hidden])").wait_for(timeout=120_000)
    page.wait_for_function(DRAWN_JS.replace("() =>", "() => (") + ").every(x => x[2] > 0 && x[3] > 0)")
    distance = float(page.inner_text("#v-distance").split()[0])
    threshold = float(page.inner_text("#v-thr").split()[0])
    return {
        "job_id": page.locator("#v-result").get_attribute("data-job-id"),
        "verdict": page.inner_text("#v-verdict").split("\n")[0].split(" distance")[0].strip(),
        "same": page.locator("#v-verdict").get_attribute("data-same") == "true",
        "distance": distance,
        "threshold": threshold,
        "accuracy": page.inner_text("#v-accuracy"),
        "drawn": page.evaluate(DRAWN_JS),
    }


def check_against_job(shown: dict[str, Any], job: dict[str, Any]) -> None:
    result = job["result"]
    assert job["kind"] == "verify" and job["status"] == "succeeded"
    assert shown["distance"] == pytest.approx(result["distance"], abs=5e-5)
    assert shown["threshold"] == pytest.approx(result["threshold"], abs=5e-5)
    # The verdict is distance <= threshold, on the page as in the job.
    assert shown["same"] is (result["distance"] <= result["threshold"]) is result["same"]
    assert shown["verdict"] == ("Same person" if result["same"] else "Different people")
    # One face drawn per image (box + 5 landmarks), its aligned 112x112 crop shown.
    assert [d[:3] for d in shown["drawn"]] == [[1, 5, 112], [1, 5, 112]]


def test_verify_same_and_different_people_with_a_model_trained_here(
    live_dashboard: LiveDashboard, orl_dir: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    live = live_dashboard
    folder, trained_on = orl_model_folder(orl_dir)
    model = f"job:{register_evaluated_model(live.stack, folder)}"
    live.stack.start_worker(queues="cpu")
    p, q = trained_on[0], trained_on[1]
    a, a2 = as_png(orl_dir / p / "1.pgm", tmp_path / "a.png"), as_png(orl_dir / p / "2.pgm", tmp_path / "a2.png")
    b = orl_dir / q / "1.pgm"  # PGM: the browser cannot show it, the page draws on the job's decoded copy

    page = live.page("/ui/verify")
    verify_on_page(page, model, a, a2)
    same = read_result(page)
    check_against_job(same, live.stack.client.get(f"/jobs/{same['job_id']}").json())
    acc = live.stack.client.get(f"/jobs/{model.removeprefix('job:')}").json()["result"]["accuracy"]
    assert same["accuracy"].startswith(f"{100 * acc:.2f}%") and "held-out pairs" in same["accuracy"]
    assert same["drawn"][0][3] == 92  # the PNG as dropped
    page.screenshot(path=str(artifacts_dir / "dashboard-verify-same.png"), full_page=True)

    page.set_input_files("#v-file-b", str(b))
    page.click("#v-submit")
    page.wait_for_function(f"() => document.querySelector('#v-result').dataset.jobId !== {same['job_id']!r}")
    diff = read_result(page)
    check_against_job(diff, live.stack.client.get(f"/jobs/{diff['job_id']}").json())
    assert diff["drawn"][1][3] == 92  # the PGM, shown from the job's decoded copy
    page.screenshot(path=str(artifacts_dir / "dashboard-verify-different.png"), full_page=True)

    # A photo with no face: the job fails on it, and the page says which image and why.
    bad = refused_uploads(tmp_path / "bad")
    page.set_input_files("#v-file-b", str(bad["no_face"]))
    page.click("#v-submit")
    error = page.locator("#v-error:not([hidden])")
    error.wait_for(timeout=60_000)
    assert error.inner_text() == "No face found in image B (no_face.png): use a photo with a visible face."
    assert page.locator("#v-result").is_hidden()
    page.screenshot(path=str(artifacts_dir / "dashboard-verify-no-face.png"), full_page=True)
    assert page.js_errors == [] and page.dialogs == []


def test_two_users_verifying_at_once_get_their_own_results(
    live_dashboard_embedded: LiveDashboard, orl_dir: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    live = live_dashboard_embedded
    stack = live.stack
    folder, trained_on = orl_model_folder(orl_dir)
    mine = f"job:{register_evaluated_model(stack, folder)}"
    theirs = f"job:{register_evaluated_model(stack, folder, stack.other_key)}"
    stack.start_worker(queues="cpu")
    p, q = trained_on[2], trained_on[3]
    img = {n: as_png(orl_dir / who / f"{i}.pgm", tmp_path / f"{n}.png") for n, who, i in
           (("p1", p, 1), ("p3", p, 3), ("q1", q, 1))}  # fmt: skip
    one = live.page("/ui/verify")
    two = live.page("/ui/verify", key=stack.other_key)
    # Each key sees only its own model.
    one.locator("#v-model option").first.wait_for(state="attached")
    two.locator("#v-model option").first.wait_for(state="attached")
    assert one.eval_on_selector_all("#v-model option", "os => os.map(o => o.value)") == [mine]
    assert two.eval_on_selector_all("#v-model option", "os => os.map(o => o.value)") == [theirs]
    verify_on_page(one, mine, img["p1"], img["p3"])
    verify_on_page(two, theirs, img["p1"], img["q1"])  # sent before the first has answered
    first, second = read_result(one), read_result(two)
    jobs = {
        n: c.get(f"/jobs/{r['job_id']}") for n, c, r in (("one", stack.client, first), ("two", stack.other, second))
    }
    check_against_job(first, jobs["one"].json())
    check_against_job(second, jobs["two"].json())
    assert first["job_id"] != second["job_id"]
    assert stack.other.get(f"/jobs/{first['job_id']}").status_code == 404
    assert stack.client.get(f"/jobs/{second['job_id']}").status_code == 404
    assert (jobs["one"].json()["params"]["model"], jobs["two"].json()["params"]["model"]) == (mine, theirs)
    assert first["distance"] != second["distance"]
    one.screenshot(path=str(artifacts_dir / "dashboard-verify-user-one.png"), full_page=True)
    two.screenshot(path=str(artifacts_dir / "dashboard-verify-user-two.png"), full_page=True)
    assert one.js_errors == [] and two.js_errors == []


def test_corrupt_files_bombs_and_big_files_get_a_clear_message(
    live_dashboard_embedded: LiveDashboard, orl_dir: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    live = live_dashboard_embedded
    # Every refusal comes before a job runs: a model row with an evaluation is enough (nothing trains).
    evaluated = {"threshold": 0.3, "accuracy": 0.9}
    model = f"job:{add_job(live.stack, kind='train_embedding', status=JobStatus.SUCCEEDED, result=evaluated)}"
    bad = refused_uploads(tmp_path / "bad")
    face = as_png(orl_dir / "s1" / "1.pgm", tmp_path / "face.png")
    big = tmp_path / "big.png"
    big.write_bytes(face.read_bytes() + b"\0" * (8 * 1024 * 1024))
    with live.stack.session() as s:  # FaceNet weights of the key: offered with a threshold to give
        s.add(Model(id=new_id(), owner_id=owner_id(live.stack), name="vgg", kind="facenet", key="models/x/w.pt",
                    filename="w.pt", size=1, sha256="0", created_at=utcnow()))  # fmt: skip
    page = live.page("/ui/verify")
    error = page.locator("#v-error")
    page.locator('#v-model option[value="facenet:vggface2"]').wait_for(state="attached")
    assert page.eval_on_selector_all("#v-model option", "os => os.map(o => o.value)") == [
        model, "facenet:vggface2", "facenet:casia-webface"]  # fmt: skip
    assert page.locator("#v-threshold").is_hidden()
    page.select_option("#v-model", "facenet:vggface2")
    assert page.locator("#v-threshold").is_visible() and page.locator("#v-threshold").evaluate("e => e.required")
    page.select_option("#v-model", model)
    cases = {
        "corrupt": (bad["corrupt"], r"^Refused: image A \(corrupt\.png\) is corrupt or not an image \(PNG, JPEG.*\): "
                    r"not a decodable image \(\w+: .*\)$"),
        "bomb": (bad["bomb"], r"^Refused: image A \(bomb\.png\) is a decompression bomb \(too many pixels to decode "
                 r"safely\): Image size \(400000000 pixels\) exceeds .*$"),
        "big": (big, r"^Refused: image A is over 8 MiB \(8\.\d+ MB\)\.$"),
    }  # fmt: skip
    page.locator(f'#v-model option[value="{model}"]').wait_for(state="attached")
    page.set_input_files("#v-file-b", str(face))
    for name, (path, expected) in cases.items():
        page.evaluate("() => { const e = document.querySelector('#v-error'); e.hidden = true; e.textContent = ''; }")
        page.set_input_files("#v-file-a", str(path))
        page.click("#v-submit")
        page.locator("#v-error:not([hidden])").wait_for()
        assert re.match(expected, error.inner_text()), (name, error.inner_text())
        page.screenshot(path=str(artifacts_dir / f"dashboard-verify-{name}.png"))
    # Nothing was submitted: every refusal came before a job (no worker runs here).
    assert live.stack.client.get("/jobs?kind=verify").json()["data"] == []
    assert page.js_errors == []
