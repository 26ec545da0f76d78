"""The Embed/Search page on real jobs: an ORL gallery embedded and indexed, one probe image searched,
its face drawn with its crop, its top 5 matches and open-set decision as the job computed them, its
embedding downloaded as JSON and as .npy (built in the browser); and the clear refusals."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.browser import LiveDashboard
from tests.support.faces import orl_model_folder
from tests.support.factories import make_zip, upload
from tests.support.pages import as_png, refused_uploads, register_evaluated_model
from tests.support.services import Stack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MATCHES_JS = """() => [...document.querySelectorAll('#s-faces .facecard')].map(c => ({
  decision: (c.querySelector('.decision') || {dataset: {}}).dataset.decision || null,
  matches: [...c.querySelectorAll('table.matches tbody tr')].map(tr => [...tr.cells].map(td => td.textContent.trim())),
  crop: c.querySelector('img.crop').naturalWidth}))"""


def build_gallery(stack: Stack, orl_dir: Path, people: tuple[str, ...]) -> tuple[str, str]:
    """Images 1-5 of `people` uploaded, embedded and indexed through real jobs: (model ref, index ref)."""
    members = {f"{p}/{i}.pgm": (orl_dir / p / f"{i}.pgm").read_bytes() for p in people for i in range(1, 6)}
    ds = upload(stack.client, "/datasets", "gallery.zip", make_zip(members)).json()
    folder, _ = orl_model_folder(orl_dir)
    model = f"job:{register_evaluated_model(stack, folder)}"
    embed = {"dataset": f"dataset:{ds['id']}", "model": model, "min_face_size": 40, "detect_batch_size": 50}
    embed_id = stack.client.post("/jobs", json={"kind": "embed", "params": embed}).json()["id"]
    assert stack.wait_job(embed_id, timeout=240)["status"] == "succeeded"
    index = stack.client.post("/jobs", json={"kind": "index", "params": {"embed_jobs": [f"job:{embed_id}"]}})
    assert index.status_code == 201, index.text
    job = stack.wait_job(index.json()["id"], timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert (job["result"]["rows"], job["result"]["identities"]) == (5 * len(people), len(people))
    return model, f"job:{job['id']}"


def submit(page: Any, image: Path) -> None:
    page.set_input_files("#s-file", str(image))
    page.click("#s-submit")


def test_search_one_image_against_an_orl_gallery(
    live_dashboard: LiveDashboard, orl_dir: Path, tmp_path: Path, artifacts_dir: Path
) -> None:
    live = live_dashboard
    stack = live.stack
    if importlib.util.find_spec("api.routes.search") is None:
        pytest.skip("POST /search and the index kind (helper C's branch) are not in this tree yet")
    _, trained_on = orl_model_folder(orl_dir)
    people = trained_on[:6]
    stack.start_worker(queues="gpu,cpu")
    _, index = build_gallery(stack, orl_dir, people)
    probe = as_png(orl_dir / people[2] / "8.pgm", tmp_path / "probe.png")  # not in the gallery (images 1-5)

    page = live.page("/ui/search")
    page.locator(f'#s-index option[value="{index}"]').wait_for(state="attached")
    assert page.input_value("#s-index") == index  # the newest index, chosen
    submit(page, probe)
    page.locator("#s-result:not([hidden])").wait_for(timeout=120_000)
    page.wait_for_function("() => [...document.querySelectorAll('img.crop')].every(i => i.naturalWidth > 0)")
    job_id = page.locator("#s-result").get_attribute("data-job-id")
    result = stack.client.get(f"/jobs/{job_id}").json()["result"]
    shown = page.evaluate(MATCHES_JS)
    assert len(shown) == len(result["faces"]) == 1
    face, expected = shown[0], result["faces"][0]
    # The page shows the job's top 5 (rank, identity, similarity, source) and its decision ...
    assert face["matches"] == [
        [str(m["rank"]), m["identity"], f"{m['similarity']:.4f}", m["source"]] for m in expected["matches"]
    ]
    assert len(face["matches"]) == 5 and face["crop"] > 0
    # ... which is the best identity at or over the model's similarity threshold, else "unknown".
    best = expected["matches"][0]
    assert face["decision"] == expected["decision"]
    assert expected["decision"] == (best["identity"] if best["similarity"] >= result["threshold"] else "unknown")
    assert {m["identity"] for m in expected["matches"]} <= set(people)
    assert page.locator("#s-view .fv-box").count() == 1 and page.locator("#s-view .fv-lm").count() == 5
    page.screenshot(path=str(artifacts_dir / "dashboard-search.png"), full_page=True)

    # The embedding, downloaded both ways: the job's numbers, as float32.
    with page.expect_download() as dl:
        page.click("#s-faces .dl-npy")
    npy = tmp_path / "face.npy"
    dl.value.save_as(npy)
    loaded = np.load(npy, allow_pickle=False)
    assert loaded.dtype == np.dtype("<f4") and loaded.shape == (len(expected["embedding"]),)
    np.testing.assert_array_equal(loaded, np.asarray(expected["embedding"], dtype=np.float32))
    with page.expect_download() as dl:
        page.click("#s-faces .dl-json")
    as_json = tmp_path / "face.json"
    dl.value.save_as(as_json)
    assert json.loads(as_json.read_text()) == expected["embedding"]

    # Refused: a photo with no face (the job finds none), a corrupt file and a bomb (the API refuses them).
    bad = refused_uploads(tmp_path / "bad")
    expected_messages = {
        "no_face": r"^No face found in the image \(no_face\.png\): use a photo with a visible face\.$",
        "corrupt": r"^Refused: the image \(corrupt\.png\) is corrupt or not an image \(PNG, JPEG.*\): .+$",
        "bomb": r"^Refused: the image \(bomb\.png\) is a decompression bomb \(too many pixels to decode safely\): .+$",
    }
    for name, pattern in expected_messages.items():
        page.evaluate("() => { document.querySelector('#s-error').hidden = true; }")
        submit(page, bad[name])
        error = page.locator("#s-error:not([hidden])")
        error.wait_for(timeout=60_000)
        assert re.match(pattern, error.inner_text()), (name, error.inner_text())
        assert page.locator("#s-result").is_hidden()
        page.screenshot(path=str(artifacts_dir / f"dashboard-search-{name}.png"))
    assert page.js_errors == [] and page.dialogs == []
