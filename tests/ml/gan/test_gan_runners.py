"""The three GAN job runners end to end on a small in-process job context (real data, tiny models).

`LocalJobContext` gives the runners what the worker's JobContext gives them (params, device,
progress, checkpoints, artifacts, inputs) with everything kept in a folder; the platform's own
context is exercised by the lead's end-to-end tests.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from jobs.errors import JobInputError
from jobs.params.gan import RecoverLatentParams, TrainEncoderParams, TrainGeneratorParams
from ml.core.callbacks import LocalCallbacks
from ml.gan.generator import load_generator
from workers.runners.gan import run_recover_latent, run_train_encoder, run_train_generator


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small convolutions: one thread is about as fast, and far faster when the 2 cores are busy."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


class LocalJobContext:
    """The runner-facing surface of the JobContext, in a folder: artifacts land in `<workdir>/artifacts`."""

    def __init__(self, params: Any, workdir: Path, models: dict[str, Path] | None = None) -> None:
        self.job_id = workdir.name
        self.params = params
        self.device = torch.device("cpu")
        self.workdir = workdir
        self.models = models or {}
        self.artifacts = workdir / "artifacts"
        self.artifacts.mkdir(parents=True)
        self.callbacks = LocalCallbacks(workdir / "checkpoint")
        self.content_types: dict[str, str] = {}
        self.result: dict[str, Any] = {}

    def progress(self, step: int, total: int, **metrics: float) -> None:
        self.callbacks.progress(step, total, **metrics)

    def log(self, message: str) -> None:
        self.callbacks.log(message)

    def should_stop(self) -> bool:
        return False

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.callbacks.save_checkpoint(state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self.callbacks.load_checkpoint()

    def preview(self, name: str, png: bytes) -> None:
        self.callbacks.preview(name, png)

    def put_artifact(self, name: str, data: bytes | Path, content_type: str) -> None:
        target = self.artifacts / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.read_bytes() if isinstance(data, Path) else data)
        self.content_types[name] = content_type

    def open_dataset(self, ref: str) -> Path:
        raise AssertionError(f"builtin:digits needs no folder, asked for {ref}")

    def open_model(self, ref: str) -> Path:
        return self.models[ref]


@pytest.fixture(scope="module")
def generator_job(tmp_path_factory: pytest.TempPathFactory) -> LocalJobContext:
    params = TrainGeneratorParams(
        dataset="builtin:digits",
        max_images=256,
        image_size=16,
        latent_dim=8,
        g_width=8,
        d_width=8,
        epochs=2,
        batch_size=32,
        seed=1,
    )
    ctx = LocalJobContext(params, tmp_path_factory.mktemp("gen_job"))
    ctx.result = run_train_generator(ctx)
    return ctx


@pytest.fixture(scope="module")
def encoder_job(generator_job: LocalJobContext, tmp_path_factory: pytest.TempPathFactory) -> LocalJobContext:
    params = TrainEncoderParams(generator="job:gen", steps=6, batch_size=8, checkpoint_every=3, preview_every=3)
    ctx = LocalJobContext(params, tmp_path_factory.mktemp("enc_job"), {"job:gen": generator_job.artifacts})
    ctx.result = run_train_encoder(ctx)
    return ctx


def test_train_generator_exports_the_contract(generator_job: LocalJobContext) -> None:
    result = generator_job.result
    assert {k: result[k] for k in ("latent_dim", "prior", "image_size", "channels", "epochs", "train_images")} == {
        "latent_dim": 8,
        "prior": "normal",
        "image_size": 16,
        "channels": 1,
        "epochs": 2,
        "train_images": 256,
    }
    names = sorted(p.name for p in generator_job.artifacts.iterdir())
    assert names == ["config.json", "generator.json", "generator.pt", "samples.png"]
    _, info = load_generator(generator_job.artifacts)
    assert (info.latent_dim, info.channels, info.image_size) == (8, 1, (16, 16))
    with Image.open(generator_job.artifacts / "samples.png") as img:
        assert img.size == (8 * 66 + 2, 8 * 66 + 2)  # 8x8 samples of 16 px shown 4x, 2 px borders
    assert generator_job.callbacks.checkpoints_saved == 2


def test_train_encoder_saves_a_loadable_encoder(generator_job: LocalJobContext, encoder_job: LocalJobContext) -> None:
    from ml.gan.encoder import load_encoder

    assert sorted(p.name for p in encoder_job.artifacts.iterdir()) == ["config.json", "encoder.pt"]
    encoder, header = load_encoder(encoder_job.artifacts)
    assert (encoder.latent_dim, encoder.in_channels, header["image_size"]) == (8, 1, [16, 16])
    assert encoder_job.result["steps"] == 6
    # The reported held-out cosine, recomputed the slow obvious way from the saved files: the encoder's
    # latents of the generator's images of the seeded held-out latents (see ml.gan.train_encoder).
    from ml.core.seeding import derived_seed
    from ml.gan.generator import sample_latent
    from ml.gan.metrics import cosine

    config = json.loads((encoder_job.artifacts / "config.json").read_text())
    generator, info = load_generator(generator_job.artifacts)
    gen = torch.Generator().manual_seed(derived_seed(config["seed"], 9))
    z = sample_latent(config["eval_images"], info.latent_dim, info.prior, gen, "cpu")
    with torch.no_grad():
        expected = float(cosine(encoder(generator(z)), z).mean())
    assert encoder_job.result["latent_cosine"] == pytest.approx(expected, abs=1e-6)
    assert encoder_job.callbacks.checkpoints_saved == 2  # steps 3 and 6
    assert "reconstructions" in encoder_job.callbacks.previews


def test_recover_latent_writes_z_grid_and_metrics(
    generator_job: LocalJobContext, encoder_job: LocalJobContext, tmp_path: Path
) -> None:

    params = RecoverLatentParams(generator="job:gen", encoder="job:enc", num_targets=6, iterations=10, seed=2)
    models = {"job:gen": generator_job.artifacts, "job:enc": encoder_job.artifacts}
    ctx = LocalJobContext(params, tmp_path / "rec", models)
    result = run_recover_latent(ctx)
    methods = ["gradient", "gradient+clip", "encoder", "encoder+refine"]
    assert list(result) == methods
    z = np.load(io.BytesIO((ctx.artifacts / "z.npy").read_bytes()))
    assert z.shape == (4, 6, 8) and z.dtype == np.float32
    assert np.load(ctx.artifacts / "true_z.npy").shape == (6, 8)
    metrics = json.loads((ctx.artifacts / "metrics.json").read_text())
    assert metrics["methods"] == methods
    assert metrics["settings"]["gradient+clip"]["clip"] == 3.0  # the normal prior's default bound
    assert metrics["settings"]["encoder+refine"]["iterations"] == 5  # half of iterations by default
    for name in methods:
        per = metrics["results"][name]
        assert len(per["per_image"]["psnr"]) == 6 and len(per["per_image"]["latent_cosine"]) == 6
        assert per["psnr"]["mean"] == pytest.approx(float(np.mean(per["per_image"]["psnr"])), rel=1e-6)
        assert result[name]["psnr"] == per["psnr"]["mean"] and result[name]["seconds_per_image"] > 0
    with Image.open(ctx.artifacts / "reconstructions.png") as img:
        assert img.size == (6 * 66 + 2, 5 * 66 + 2)  # targets + 4 method rows, 16 px shown 4x
    assert ctx.callbacks.checkpoints_saved == 4  # one per finished method: a retry resumes after it


def test_recover_latent_on_dataset_images_has_no_latent_cosine(generator_job: LocalJobContext, tmp_path: Path) -> None:
    params = RecoverLatentParams(
        generator="job:gen", dataset="builtin:digits", methods=["gradient"], num_targets=4, iterations=5
    )
    ctx = LocalJobContext(params, tmp_path / "rec", {"job:gen": generator_job.artifacts})
    result = run_recover_latent(ctx)
    assert set(result["gradient"]) == {"psnr", "ssim", "seconds_per_image"}
    assert not (ctx.artifacts / "true_z.npy").exists()


def test_a_bad_upload_fails_the_job_with_the_contract_message(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.mkdir()
    torch.save({"weight": torch.zeros(2)}, upload / "my_gan.pt")
    params = RecoverLatentParams(generator="model:u1", latent_dim=8, num_targets=2, iterations=2)
    ctx = LocalJobContext(params, tmp_path / "rec", {"model:u1": upload})
    with pytest.raises(JobInputError, match=re.escape("generator model:u1: my_gan.pt is not a TorchScript module")):
        run_recover_latent(ctx)
