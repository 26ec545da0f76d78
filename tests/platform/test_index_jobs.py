"""The `index` and `search` kinds end to end: an ORL gallery (s1-s20, images 1-5) indexed through jobs,
its probes (images 6-10 of the same people, every image of s21-s30) searched, and every figure of the
identification report checked against a brute-force computation here."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.faces import register_model
from tests.support.jobs import download, submit
from tests.support.orl_gallery import embed_orl_part, orl_gallery_model
from tests.support.services import Stack

FPIRS = [0.01, 0.1]


def _embedded(stack: Stack, job_id: str) -> tuple[np.ndarray, list[str], list[str]]:
    """(embeddings, sources, identities) of an embed job, from its artifacts."""
    emb = np.load(io.BytesIO(download(stack, f"/jobs/{job_id}/artifacts/embeddings.npy")), allow_pickle=False)
    rows = list(csv.DictReader(io.StringIO(download(stack, f"/jobs/{job_id}/artifacts/index.csv").decode())))
    return emb, [r["key"] for r in rows], [r["key"].split("/")[0] for r in rows]


def brute_force(
    gallery: np.ndarray, gallery_who: list[str], probes: np.ndarray, probe_who: list[str], threshold: float
) -> dict[str, Any]:
    """Rank-1/5 and FNIR at FPIR by comparing every probe with every gallery face (the definitions of
    ml.metrics.identification, written out again)."""
    sims = probes.astype(np.float64) @ gallery.astype(np.float64).T
    people = sorted(set(gallery_who))
    who = np.array(gallery_who)
    best = np.stack([sims[:, who == p].max(axis=1) for p in people], axis=1)
    ranked = [[people[j] for j in np.argsort(-row, kind="stable")] for row in best]
    mated = np.array([w in people for w in probe_who])
    rank = np.array([r.index(w) + 1 if w in r else 0 for r, w in zip(ranked, probe_who, strict=True)])
    top = best.max(axis=1)
    top1 = rank[mated] == 1
    out: dict[str, Any] = {
        "rank_1": float(np.mean(top1)),
        "rank_5": float(np.mean((rank[mated] >= 1) & (rank[mated] <= 5))),
        "num_mated": int(mated.sum()),
        "num_non_mated": int((~mated).sum()),
    }
    strangers = np.sort(top[~mated])[::-1]
    for fpir in FPIRS:
        allowed = math.floor(fpir * strangers.size + 1e-9)
        t = float(np.nextafter(strangers[allowed], math.inf))
        key = f"fnir_at_fpir_{fpir:.0e}".replace("e-0", "e-")
        out[key] = float(1 - np.mean(top1 & (top[mated] >= t)))
        out[key.replace("fnir_", "threshold_")] = t
    out["fpir_at_threshold"] = float(np.mean(top[~mated] >= threshold))
    out["fnir_at_threshold"] = float(1 - np.mean(top1 & (top[mated] >= threshold)))
    return out


def assert_report_matches(report: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        if key.startswith("threshold_"):
            assert report[key] == pytest.approx(value, abs=1e-5), key  # faiss sums in float32
        else:
            assert report[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.slow
@pytest.mark.services
def test_an_orl_gallery_is_indexed_searched_and_versioned_through_jobs(
    stack: Stack, orl_dir: Path, artifacts_dir: Path
) -> None:
    folder = orl_gallery_model(orl_dir, "se_resnet18")
    model = f"job:{register_model(stack, folder)}"
    similarity = json.loads((folder / "metrics.json").read_text())
    gallery_ds, gallery_job = embed_orl_part(stack, orl_dir, "gallery", model)
    probes_ds, probes_job = embed_orl_part(stack, orl_dir, "probes", model)
    stack.start_worker()
    for job_id in (gallery_job, probes_job):
        job = stack.wait_job(job_id, timeout=240)
        assert job["status"] == "succeeded", job["error"]
    assert stack.wait_job(gallery_job)["result"]["faces"] == 100
    assert stack.wait_job(probes_job)["result"]["faces"] == 200

    index_id = submit(stack, {"embed_jobs": [f"job:{gallery_job}"], "name": "orl-20"}, kind="index")
    index = stack.wait_job(index_id, timeout=120)
    assert index["status"] == "succeeded", index["error"]
    threshold = index["result"]["threshold"]
    from ml.faces.models import read_threshold

    assert threshold == read_threshold(folder) and threshold is not None, similarity
    assert {k: index["result"][k] for k in ("rows", "identities", "unlabelled_rows", "type", "version", "dim")} == {
        "rows": 100, "identities": 20, "unlabelled_rows": 0, "type": "flat", "version": 1, "dim": 64,
    }  # fmt: skip
    assert (index["result"]["model"], index["result"]["threshold_source"]) == (model, "model metrics")
    names = {a["name"] for a in stack.client.get(f"/jobs/{index_id}/artifacts").json()}
    assert names == {"index.faiss", "idmap.json", "index.json"}
    idmap = json.loads(download(stack, f"/jobs/{index_id}/artifacts/idmap.json"))
    assert idmap["keys"][0] == f"{gallery_ds}/s1/1.pgm#0" and idmap["identities"][0] == "s1"

    search_id = submit(stack, {"index": f"job:{index_id}", "embed_job": f"job:{probes_job}", "k": 5}, kind="search")
    search = stack.wait_job(search_id, timeout=120)
    assert search["status"] == "succeeded", search["error"]
    report = search["result"]

    g_emb, _, g_who = _embedded(stack, gallery_job)
    p_emb, p_keys, p_who = _embedded(stack, probes_job)
    expected = brute_force(g_emb, g_who, p_emb, p_who, threshold)
    assert (report["num_mated"], report["num_non_mated"], report["num_gallery_rows"]) == (100, 100, 100)
    assert_report_matches(report, expected)
    # the job's result is report.json plus the worker's peak memory (`sys`, workers/utilisation.py)
    assert json.loads(download(stack, f"/jobs/{search_id}/artifacts/report.json")) == {
        k: v for k, v in report.items() if k != "sys"
    }
    matches = list(csv.DictReader(io.StringIO(download(stack, f"/jobs/{search_id}/artifacts/matches.csv").decode())))
    assert len(matches) == 200 * 5
    first = [m for m in matches if m["probe"] == f"{probes_ds}/{p_keys[0]}"]
    sims = np.sort(p_emb[0].astype(np.float64) @ g_emb.T.astype(np.float64))[::-1][:5]
    np.testing.assert_allclose([float(m["similarity"]) for m in first], sims, atol=1e-5)
    assert first[0]["decision"] == (first[0]["identity"] if sims[0] >= threshold else "unknown")

    # The same probes as a dataset, embedded by the search job itself with the index's model: the same report.
    again = submit(stack, {"index": f"job:{index_id}", "dataset": probes_ds, "detector": "none"}, kind="search")
    from_dataset = stack.wait_job(again, timeout=180)
    assert from_dataset["status"] == "succeeded", from_dataset["error"]
    assert from_dataset["result"]["rank_1"] == report["rank_1"]
    assert from_dataset["result"]["num_probes"] == 200

    # A new version: s1 removed, s1's probes' embed job is no gallery. The first version stays as it was.
    v2_id = submit(stack, {"base": f"job:{index_id}", "remove": ["s1", "s2/1.pgm"]}, kind="index")
    v2 = stack.wait_job(v2_id, timeout=120)
    assert v2["status"] == "succeeded", v2["error"]
    assert {k: v2["result"][k] for k in ("rows", "identities", "version", "base", "removed")} == {
        "rows": 94, "identities": 19, "version": 2, "base": f"job:{index_id}", "removed": 6,
    }  # fmt: skip
    assert json.loads(download(stack, f"/jobs/{index_id}/artifacts/idmap.json")) == idmap
    # Above exact_max the index is HNSW (M 32, efSearch 256 >= 100 rows: it finds what flat finds here).
    hnsw_id = submit(stack, {"embed_jobs": [f"job:{gallery_job}"], "exact_max": 50}, kind="index")
    assert stack.wait_job(hnsw_id, timeout=120)["result"]["type"] == "hnsw"
    s_hnsw = submit(stack, {"index": f"job:{hnsw_id}", "embed_job": f"job:{probes_job}"}, kind="search")
    hnsw_report = stack.wait_job(s_hnsw, timeout=120)["result"]
    assert hnsw_report["index_kind"] == "hnsw" and hnsw_report["rank_1"] == report["rank_1"]

    # Refused: a version that names nothing to drop, and an index of a job that is no embed job.
    bad = submit(stack, {"base": f"job:{index_id}", "remove": ["s99"]}, kind="index")
    assert "neither a source image nor an identity" in stack.wait_job(bad, timeout=60)["error"]
    not_embed = submit(stack, {"embed_jobs": [f"job:{index_id}"]}, kind="index")
    assert "not the output of an embed job" in stack.wait_job(not_embed, timeout=60)["error"]
    (artifacts_dir / f"index_jobs_orl_{stack.name}.json").write_text(
        json.dumps({"report": report, "brute_force": expected, "index": index["result"]}, indent=1)
    )
