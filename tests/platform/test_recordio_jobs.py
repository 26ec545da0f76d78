"""`train_embedding` on an insightface RecordIO dataset (.rec + .idx read by ranged store reads) or on
tar shards (fetched shard by shard into the bounded cache) gives the same metrics as the same ORL
images uploaded as a folder archive: same seed, same order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ml.data.recordio import write_insightface
from ml.data.shards import write_shards
from tests.support.datasets import add_dataset
from tests.support.factories import make_zip, orl_files, upload
from tests.support.jobs import submit
from tests.support.services import Stack

PEOPLE = ("s1", "s2", "s3", "s4", "s5", "s6")
# Differ from run to run of the same training: its wall time and the worker's peak memory.
VARIES = ("train_seconds", "sys")
PARAMS: dict[str, Any] = {
    "backbone": "se_resnet18", "base_width": 4, "embedding_size": 16, "image_size": 24, "grey": True,
    "epochs": 2, "batch_size": 20, "lr": 0.05, "split_by": "sample", "test_fraction": 0.3, "max_pairs": 200,
    "folds": 5, "augment_shift": 1, "seed": 1,
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("fmt", ["recordio", "shards"])
def test_recordio_and_shard_datasets_train_like_the_same_images_as_a_folder(
    stack: Stack, orl_dir: Path, tmp_path: Path, fmt: str
) -> None:
    files = orl_files(orl_dir, PEOPLE, per_id=10)
    resp = upload(stack.client, "/datasets", "orl6.zip", make_zip(files))
    assert resp.status_code == 201, resp.text
    folder_ref = f"dataset:{resp.json()['id']}"
    ordered = sorted(files, key=lambda k: (PEOPLE.index(k.split("/")[0]), int(k.split("/")[1][:-4])))
    labelled = [(PEOPLE.index(k.split("/")[0]), files[k]) for k in ordered]
    if fmt == "recordio":
        write_insightface(tmp_path / "train.rec", tmp_path / "train.idx", labelled)
        stored = {n: (tmp_path / n).read_bytes() for n in ("train.rec", "train.idx")}
    else:
        samples = [
            (f"{k[:-4].replace('/', '_')}", "pgm", data, lab) for k, (lab, data) in zip(ordered, labelled, strict=True)
        ]
        stored = {p.name: p.read_bytes() for p in write_shards(samples, tmp_path / "shards", "orl", 16)}
        assert sorted(stored) == [f"orl-00000{i}.tar" for i in range(4)]
    rec_ref = add_dataset(stack, stored)
    jobs = [submit(stack, {**PARAMS, "dataset": ref}, kind="train_embedding") for ref in (folder_ref, rec_ref)]
    stack.start_worker(extra_env={"FACEJOBS_SHARD_CACHE_BYTES": str(2**20)})
    results = []
    for job_id in jobs:
        job = stack.wait_job(job_id, timeout=300)
        assert job["status"] == "succeeded", job["error"]
        results.append({k: v for k, v in job["result"].items() if k not in VARIES})
    assert results[0] == results[1]
    assert results[0]["num_identities"] == 6 and results[0]["epochs"] == 2
    cache = stack.home.resolve() / "cache" / "datasets"
    assert (cache / folder_ref.removeprefix("dataset:")).is_dir()  # the folder is downloaded ...
    assert not (cache / rec_ref.removeprefix("dataset:")).exists()  # ... the .rec/shards are streamed


def test_ranged_reads_of_both_stores(stack: Stack) -> None:
    data = bytes(range(256)) * 40
    stack.store.put_bytes("ranges/blob", data)
    assert stack.store.get_range("ranges/blob", 0, 8) == data[:8]
    assert stack.store.get_range("ranges/blob", 1000, 300) == data[1000:1300]
    assert stack.store.get_range("ranges/blob", len(data) - 5, 100) == data[-5:]  # short at the end
    assert stack.store.get_range("ranges/blob", 10, 0) == b""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("to", ["shards", "recordio"])
def test_convert_dataset_makes_a_new_dataset_of_the_key_that_trains(
    embedded_stack: Stack, orl_dir: Path, to: str
) -> None:
    stack = embedded_stack
    resp = upload(stack.client, "/datasets", "orl6.zip", make_zip(orl_files(orl_dir, PEOPLE, per_id=10)))
    source = f"dataset:{resp.json()['id']}"
    params = {"dataset": source, "to": to, "samples_per_shard": 25, "name": "orl"}
    convert = submit(stack, params, kind="convert_dataset")
    stack.start_worker()
    job = stack.wait_job(convert, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    files = 3 if to == "shards" else 2
    assert {k: job["result"][k] for k in ("format", "files", "images", "identities")} == {
        "format": to, "files": files, "images": 60, "identities": 6,
    }  # fmt: skip
    assert (job["progress_step"], job["progress_total"]) == (60, 60)
    made = job["result"]["dataset"]
    assert stack.client.get(f"/datasets/{made.removeprefix('dataset:')}").status_code == 200
    assert stack.other.get(f"/datasets/{made.removeprefix('dataset:')}").status_code == 404
    trained = [submit(stack, {**PARAMS, "dataset": ref}, kind="train_embedding") for ref in (source, made)]
    results = [stack.wait_job(j, timeout=200) for j in trained]
    assert [r["status"] for r in results] == ["succeeded", "succeeded"], [r["error"] for r in results]
    by_folder, by_converted = ({k: v for k, v in r["result"].items() if k not in VARIES} for r in results)
    assert by_folder == by_converted
