"""`make demo`'s pipeline stays submittable: every step's params validate against its kind's params model,
every `{name}` a step needs is made by the demo before it, and the archive it uploads is a valid dataset."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from client.sdk import Client
from jobs.kinds import registry
from stack.demo import SAVE_AS, UPLOAD_PER_CLASS, _fill, digits_archive, pipeline, placeholders
from tests.support.services import Stack


def test_every_demo_step_names_a_registered_kind_with_valid_params() -> None:
    kinds = registry()
    steps = pipeline()
    assert [kind for kind, _ in steps] == [
        "probe", "train_embedding", "evaluate", "invert", "embed", "train_embedding", "evaluate",
    ]  # fmt: skip
    ids = {"train": "abc123", "train_upload": "def456", "upload": "ghi789"}
    for kind, params in steps:
        spec = kinds[kind]
        validated = spec.params.model_validate(_fill(params, ids))
        # Nothing the demo sets is silently dropped or renamed by the params model.
        assert set(params) <= set(validated.model_dump()), (kind, set(params) - set(validated.model_dump()))
    assert _fill(steps[5][1], ids)["dataset"] == "dataset:ghi789"
    assert _fill(steps[6][1], ids) == {"model": "job:def456", "dataset": "dataset:ghi789"}


def test_every_placeholder_is_made_before_the_step_that_needs_it() -> None:
    made = {"upload"}  # the demo uploads its archive before the first step that names it
    needed = []
    for kind, params in pipeline():
        needs = placeholders(params)
        needed.append(needs)
        assert needs <= made, (kind, params, needs - made)
        made |= {SAVE_AS[(kind, params["dataset"])]} if (kind, params.get("dataset")) in SAVE_AS else set()
    assert needed == [set(), set(), {"train"}, {"train"}, {"train"}, {"upload"}, {"train_upload", "upload"}]
    assert made == {"upload", "train", "train_upload"}


def test_a_typo_in_a_demo_param_would_be_refused() -> None:
    from pydantic import ValidationError

    spec = registry()["invert"]
    with pytest.raises(ValidationError, match="iteration"):
        spec.params.model_validate({"model": "job:abc123", "iteration": 300})


def test_the_demos_digits_archive_uploads_as_ten_identities(embedded_stack: Stack, tmp_path: Path) -> None:
    archive = digits_archive(tmp_path / "digits.zip")
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert len(names) == 10 * UPLOAD_PER_CLASS == 400
    assert names[:3] == ["digits/0/0.png", "digits/1/0.png", "digits/2/0.png"]
    assert {n.split("/")[1] for n in names} == {str(d) for d in range(10)}
    with Client("http://testserver", embedded_stack.key, http=embedded_stack.client) as client:
        dataset = client.upload_dataset(archive, name="digits-upload")
    assert (dataset["layout"], dataset["num_files"], dataset["num_identities"]) == ("identities", 400, 10)
    assert dataset["skipped"] == [] and dataset["ref"] == f"dataset:{dataset['id']}"
