"""`evaluate` on fixed protocols through a real worker: an LFW-style pairs.txt and an insightface .bin
built from the same ORL pairs give the same accuracy (and the one computed here); a .bin carrying any
other pickled object fails the job as bad input and runs nothing."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ml.data.protocols import bin_folds, dump_bin, protocol_metrics
from ml.metrics.verification import pair_scores
from tests.support.datasets import add_dataset, orl_pairs, pairs_text
from tests.support.faces import register_model
from tests.support.jobs import download, submit
from tests.support.orl_gallery import orl_embeddings, orl_gallery_model, orl_split
from tests.support.services import Stack


def expected_metrics(orl_dir: Path, folder: Path, pairs: list[tuple[str, int, str, int]]) -> dict[str, object]:
    keys = list(orl_split(orl_dir).keys)
    emb = orl_embeddings(orl_dir, folder)
    a = np.array([keys.index(f"{p}/{i}.pgm") for p, i, _, _ in pairs])
    b = np.array([keys.index(f"{q}/{j}.pgm") for _, _, q, j in pairs])
    same = np.array([p == q for p, _, q, _ in pairs])
    return protocol_metrics(pair_scores(emb, a, b), same, bin_folds(len(pairs)))


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_pairs_file_and_bin_of_the_same_orl_pairs_give_the_same_accuracy(embedded_stack: Stack, orl_dir: Path) -> None:
    stack = embedded_stack
    folder = orl_gallery_model(orl_dir, "se_resnet18")
    model = f"job:{register_model(stack, folder)}"
    pairs = orl_pairs(people=len(set(orl_split(orl_dir).people)))
    faces = {k: (orl_dir / k).read_bytes() for k in orl_split(orl_dir).keys}
    with_pairs = add_dataset(stack, {**faces, "pairs.txt": pairs_text(pairs).encode()})
    images = [faces[f"{p}/{i}.pgm"] for pair in pairs for p, i in (pair[:2], pair[2:])]
    only_bin = add_dataset(stack, {"orl.bin": dump_bin(images, [p == q for p, _, q, _ in pairs])})
    base = {"model": model, "use_split": "all", "flip_tta": False}
    by_pairs = submit(stack, {**base, "dataset": with_pairs, "protocol": "pairs:pairs.txt"}, kind="evaluate")
    by_bin = submit(stack, {**base, "dataset": only_bin, "protocol": "bin:orl.bin"}, kind="evaluate")
    stack.start_worker()
    results = []
    for job_id in (by_pairs, by_bin):
        job = stack.wait_job(job_id, timeout=300)
        assert job["status"] == "succeeded", job["error"]
        results.append(job["result"])
    expected = expected_metrics(orl_dir, folder, pairs)
    keys = ("accuracy", "accuracy_std", "auc", "threshold", "tar_at_far_1e-2", "tar_at_far_1e-3", "num_pairs")
    for result in results:
        assert {k: result[k] for k in keys} == pytest.approx({k: expected[k] for k in keys}, abs=1e-9)
    assert results[0]["num_images"] == len({x for p, i, q, j in pairs for x in (f"{p}/{i}", f"{q}/{j}")})
    assert results[1]["num_images"] == 1200
    assert results[0]["accuracy"] > 0.8  # a real model on real faces, 10 folds of 60 pairs
    full = json.loads(download(stack, f"/jobs/{by_bin}/artifacts/metrics.json"))
    assert (full["folds"], len(full["fold_accuracies"]), full["protocol"]) == (10, 10, "bin:orl.bin")


class Shell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_bin_carrying_another_object_fails_as_bad_input_and_runs_nothing(
    embedded_stack: Stack, orl_dir: Path, tmp_path: Path
) -> None:
    stack = embedded_stack
    folder = orl_gallery_model(orl_dir, "se_resnet18")
    model = f"job:{register_model(stack, folder)}"
    marker = tmp_path / "executed"
    image = (orl_dir / "s1/1.pgm").read_bytes()
    evil = add_dataset(stack, {"lfw.bin": pickle.dumps(([image, image], [Shell(marker)]), protocol=2)})
    refused = stack.client.post(
        "/jobs", json={"kind": "evaluate", "params": {"model": model, "dataset": evil, "protocol": "bin:../x.bin"}}
    )
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["loc"] == ["protocol"]
    outside = submit(stack, {"model": model, "dataset": evil, "protocol": "bin:a/../../x.bin"}, kind="evaluate")
    job_id = submit(stack, {"model": model, "dataset": evil, "protocol": "bin:lfw.bin"}, kind="evaluate")
    stack.start_worker()
    job = stack.wait_job(job_id, timeout=120)
    assert job["status"] == "failed"
    assert "posix.system" in job["error"] and "refused (nothing was executed)" in job["error"], job["error"]
    assert not marker.exists()
    other = stack.wait_job(outside, timeout=60)
    assert other["status"] == "failed" and "'a/../../x.bin' is not a file of" in other["error"], other["error"]
