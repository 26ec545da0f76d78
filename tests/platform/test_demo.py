"""`make demo`'s pipeline stays submittable: every step's params validate against its kind's params model."""

from __future__ import annotations

import pytest

from jobs.demo import _fill, pipeline
from jobs.kinds import registry


def test_every_demo_step_names_a_registered_kind_with_valid_params() -> None:
    kinds = registry()
    steps = pipeline()
    assert [kind for kind, _ in steps] == ["probe", "train_embedding", "evaluate", "invert", "embed"]
    for kind, params in steps:
        spec = kinds[kind]
        validated = spec.params.model_validate(_fill(params, {"train": "abc123"}))
        # Nothing the demo sets is silently dropped or renamed by the params model.
        assert set(params) <= set(validated.model_dump()), (kind, set(params) - set(validated.model_dump()))


def test_a_typo_in_a_demo_param_would_be_refused() -> None:
    from pydantic import ValidationError

    spec = registry()["invert"]
    with pytest.raises(ValidationError, match="iteration"):
        spec.params.model_validate({"model": "job:abc123", "iteration": 300})
