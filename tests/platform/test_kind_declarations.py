"""Each kind is declared once: one default per setting shared by params and ml config, refs from one
module, kinds found by scanning `jobs/params`, and the runner's ml config built from the params."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import jobs.params
from jobs import refs
from jobs.kinds import families, registry
from jobs.kindspec import KindDeclarationError, KindSpec, ml_defaults
from jobs.params.embed import DETECTOR_NAMES, EMBED_NAMES, LIMITS_NAMES, EmbedParams
from jobs.params.embedding import TrainEmbeddingParams
from jobs.params.gan import TrainEncoderParams, TrainGeneratorParams
from jobs.params.invert import InvertParams
from jobs.params.probe import ProbeParams
from ml.arcface.config import TrainConfig
from ml.faces.decode import DecodeLimits
from ml.faces.detect import DetectorSettings
from ml.faces.embed import EmbedSettings
from ml.gan.train_encoder import EncoderConfig
from ml.gan.train_gan import DCGANConfig
from ml.invert.config import InversionConfig
from workers.runners import ml_config

ML = Path(__file__).resolve().parents[2] / "ml"


def _layers() -> list[tuple[str, type[BaseModel], type[Any], str, Mapping[str, str | None]]]:
    """(kind, params model, ml config, its ml package, renames) of every config a kind declares."""
    layers = []
    for name, spec in sorted(registry().items()):
        for path, renames in spec.ml_configs.items():
            module, cls = path.split(":")
            layers.append(
                (name, spec.params, getattr(importlib.import_module(module), cls), module.split(".")[1], renames)
            )
    return layers


LAYERS = _layers()


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples and lists compare alike, as they travel as JSON


def _config_default(config: type[Any], name: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(config)}[name]
    return field.default if field.default_factory is dataclasses.MISSING else field.default_factory()


def _shared(params: type[BaseModel], config: type[Any], renames: Mapping[str, str | None]) -> dict[str, str]:
    """params field -> the config setting it is, for every setting the two layers share."""
    names = {f.name for f in dataclasses.fields(config)}
    shared = {p: renames.get(p, p) for p in params.model_fields}
    return {p: c for p, c in shared.items() if c is not None and c in names}


def test_every_kind_with_settings_declares_its_ml_configs() -> None:
    declared = {(kind, config.__name__) for kind, _, config, _, _ in LAYERS}
    # At least these (a new kind adds its own pairs by declaring them, without editing this test).
    assert declared >= {
        ("embed", "DecodeLimits"), ("embed", "DetectorSettings"), ("embed", "EmbedSettings"),
        ("evaluate", "TrainConfig"), ("invert", "InversionConfig"), ("train_embedding", "TrainConfig"),
        ("train_encoder", "EncoderConfig"), ("train_generator", "DCGANConfig"), ("verify", "DetectorSettings"),
        ("verify", "EmbedSettings"),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "params", "config", "package", "renames"), LAYERS, ids=[f"{k}-{c.__name__}" for k, _, c, _, _ in LAYERS]
)
def test_every_shared_setting_has_one_default(
    kind: str, params: type[BaseModel], config: type[Any], package: str, renames: Mapping[str, str | None]
) -> None:
    written = json.loads((ML / package / "defaults.json").read_text())[config.__name__]
    shared = _shared(params, config, renames)
    assert shared, (params.__name__, config.__name__)
    for field, setting in shared.items():
        params_default = params.model_fields[field].default
        assert setting in written, f"{params.__name__}.{field}: its default is not in ml/{package}/defaults.json"
        assert _plain(params_default) == _plain(_config_default(config, setting)) == _plain(written[setting]), field
    assert ml_defaults(package, config.__name__) == written


def test_every_written_default_is_a_setting_some_params_model_shares() -> None:
    used: dict[tuple[str, str], set[str]] = {}
    for _, params, config, package, renames in LAYERS:
        used.setdefault((package, config.__name__), set()).update(_shared(params, config, renames).values())
    for path in sorted(ML.glob("*/defaults.json")):
        for config_name, values in json.loads(path.read_text()).items():
            unused = set(values) - used.get((path.parent.name, config_name), set())
            assert unused == set(), f"{path.parent.name}/{config_name}: {sorted(unused)} are shared with no params"


def test_the_runner_builds_the_ml_config_from_params_defaults_as_the_config_defaults() -> None:
    assert ml_config(InversionConfig, InvertParams(model="job:abc")) == InversionConfig()
    assert ml_config(EncoderConfig, TrainEncoderParams(generator="job:abc")) == EncoderConfig()
    assert ml_config(DCGANConfig, TrainGeneratorParams(), channels=None) == DCGANConfig()
    embed = EmbedParams(dataset="dataset:abc")
    assert ml_config(DetectorSettings, embed, DETECTOR_NAMES) == DetectorSettings()
    assert ml_config(DecodeLimits, embed, LIMITS_NAMES) == DecodeLimits()
    assert ml_config(EmbedSettings, embed, EMBED_NAMES, detector=DetectorSettings()) == EmbedSettings()
    train = ml_config(TrainConfig, TrainEmbeddingParams(), backbone_kwargs={})
    assert train == TrainConfig() and train.embedding_size == 512
    # A computed value wins over the params, and a renamed one lands on its ml name.
    tuned = ml_config(DetectorSettings, EmbedParams(dataset="builtin:digits", detector="none"), DETECTOR_NAMES)
    assert (tuned.method, tuned.thresholds) == ("none", (0.6, 0.7, 0.7))


def _ref_patterns() -> dict[str, set[str]]:
    """Every `pattern` of every kind's params schema -> the fields that carry it."""
    found: dict[str, set[str]] = {}

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                found.setdefault(node["pattern"], set()).add(where)
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for name, spec in registry().items():
        walk(spec.params.model_json_schema(), name)
    return found


def test_params_take_every_ref_pattern_from_jobs_refs() -> None:
    from jobs.params.embed import EMBED_MODEL_PATTERN

    ours = {
        refs.DATASET_REF_PATTERN, refs.MODEL_REF_PATTERN, refs.WEIGHTS_REF_PATTERN, refs.JOB_REF_PATTERN,
        EMBED_MODEL_PATTERN,
    }  # fmt: skip
    patterns = set(_ref_patterns())
    assert patterns == ours | {ProbeParams.model_fields["dtype"].metadata[0].pattern}
    assert refs.ref_pattern("job", "model", also=("facenet:vggface2", "facenet:casia-webface")) == EMBED_MODEL_PATTERN
    # One id rule: what a params pattern accepts, `parse_ref` reads, and the reverse.
    for text, ok in [
        ("dataset:a.b", True),
        ("dataset:.a", False),
        ("dataset:" + "a" * 65, False),
        ("model:x-y_1", True),
    ]:
        matched = [p for p in ours if re.match(p, text)]
        assert bool(matched) == ok, text
        assert (refs.parse_ref(text) is not None) == ok, text


def test_kinds_are_found_by_scanning_jobs_params() -> None:
    files = sorted(p.stem for p in Path(jobs.params.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    # sweep.py declares no kind (KINDS = []): it holds what POST /sweeps takes.
    assert (
        families()
        == files
        == ["convert", "embed", "embedding", "export", "gan", "index", "ingest", "invert", "probe", "search", "sweep"]
    )
    assert sorted(registry()) == [
        "convert_dataset", "embed", "evaluate", "export", "index", "ingest", "invert", "probe", "recover_latent",
        "search", "search_one", "train_embedding", "train_encoder", "train_generator", "verify",
    ]  # fmt: skip


def test_a_kind_spec_refuses_oom_hints_its_params_do_not_have() -> None:
    with pytest.raises(KindDeclarationError, match=r"oom_hints \['batch'\] are not fields of ProbeParams"):
        KindSpec("x", ProbeParams, "cpu", "workers.runners.probe:run_probe", "x", oom_hints=("batch",))
