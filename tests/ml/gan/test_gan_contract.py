"""The generator contract: save/load, and uploads refused with a clear message; DCGAN shapes; params."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from jobs.params.gan import RecoverLatentParams, TrainEncoderParams, TrainGeneratorParams
from ml.gan.dcgan import DCGANDiscriminator, DCGANGenerator
from ml.gan.generator import (
    GeneratorContractError,
    load_generator,
    quiet_jit,
    save_generator,
    validate_generator,
)


class Linear2Image(nn.Module):
    """z (N, 8) -> tanh(Wz) reshaped to (N, 1, 4, 4): a minimal valid generator."""

    def __init__(self, scale: float = 1.0, shape: tuple[int, ...] = (1, 4, 4)) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 16)
        self.scale = scale
        self.shape = shape

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.lin(z)) * self.scale).reshape((z.shape[0], *self.shape))


def _script(module: nn.Module, folder: Path, name: str = "generator.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with quiet_jit():
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_save_and_load_round_trip_keeps_metadata_and_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    gen = DCGANGenerator(latent_dim=12, channels=3, image_size=32, width=8).eval()
    paths = save_generator(gen, tmp_path / "g", latent_dim=12, prior="uniform", extra={"note": "test"})
    meta = json.loads(paths["generator.json"].read_text())
    assert (meta["latent_dim"], meta["prior"], meta["channels"], meta["image_size"]) == (12, "uniform", 3, [32, 32])

    loaded, info = load_generator(tmp_path / "g")
    assert (info.latent_dim, info.prior, info.channels, info.image_size) == (12, "uniform", 3, (32, 32))
    assert info.extra == {"note": "test"}
    z = torch.rand(5, 12) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(z), gen(z), rtol=0, atol=1e-6)

    # The archive is self-describing: without generator.json beside it, the embedded copy is used.
    paths["generator.json"].unlink()
    _, info2 = load_generator(paths["generator.pt"])
    assert (info2.latent_dim, info2.prior) == (12, "uniform")


def test_random_bytes_are_refused_as_not_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "generator.pt"
    path.write_bytes(b"\x00not a model" * 100)
    with pytest.raises(GeneratorContractError, match=re.escape("generator.pt is not a TorchScript module")):
        load_generator(path, latent_dim=8)


def test_a_state_dict_is_refused_with_the_export_hint(tmp_path: Path) -> None:
    path = tmp_path / "generator.pt"
    torch.save(Linear2Image().state_dict(), path)
    with pytest.raises(GeneratorContractError) as err:
        load_generator(path, latent_dim=8)
    assert "is not a TorchScript module" in str(err.value)
    assert "torch.jit.script(model) or torch.jit.trace(model, z) and torch.jit.save, not torch.save" in str(err.value)


def test_output_of_wrong_rank_is_refused(tmp_path: Path) -> None:
    path = _script(Linear2Image(shape=(16,)), tmp_path)
    with pytest.raises(GeneratorContractError, match=r"output has shape \(4, 16\) \(rank 2\)"):
        load_generator(path, latent_dim=8)


def test_output_with_five_channels_is_refused(tmp_path: Path) -> None:
    class FiveChannels(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.tanh(z[:, :5, None, None].expand(-1, 5, 4, 4))

    path = _script(FiveChannels(), tmp_path)
    with pytest.raises(
        GeneratorContractError, match=re.escape("5 channels, but the contract allows 1 (grey) or 3 (RGB)")
    ):
        load_generator(path, latent_dim=8)


def test_one_image_for_many_latents_is_refused(tmp_path: Path) -> None:
    class OneImage(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.tanh(z.mean()).expand(1, 1, 4, 4)

    path = _script(OneImage(), tmp_path)
    with pytest.raises(GeneratorContractError, match="1 images for 4 latents"):
        load_generator(path, latent_dim=8)


def test_values_outside_minus_one_one_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = _script(Linear2Image(scale=2.0), tmp_path)
    with pytest.raises(GeneratorContractError, match=r"outside \[-1, 1\]: the contract is images in \[-1, 1\]"):
        load_generator(path, latent_dim=8)


def test_wrong_latent_dim_fails_on_the_probe_batch(tmp_path: Path) -> None:
    path = _script(Linear2Image(), tmp_path)
    with pytest.raises(GeneratorContractError, match=r"failed on a probe batch z of shape \(4, 5\)"):
        load_generator(path, latent_dim=5)


def test_unknown_latent_dim_asks_for_metadata(tmp_path: Path) -> None:
    path = _script(Linear2Image(), tmp_path)
    with pytest.raises(
        GeneratorContractError, match=re.escape("latent_dim of generator.pt is unknown: put a generator.json")
    ):
        load_generator(path)
    _, info = load_generator(path, latent_dim=8, prior="uniform")  # the job's params fill the gap
    assert (info.channels, info.image_size, info.prior) == (1, (4, 4), "uniform")


def test_validate_rejects_an_unknown_prior() -> None:
    with pytest.raises(GeneratorContractError, match="unknown latent prior 'gaussian'"):
        validate_generator(Linear2Image(), 8, prior="gaussian")


@pytest.mark.parametrize(("size", "channels", "width"), [(64, 1, 8), (64, 3, 4), (32, 1, 8), (16, 3, 4)])
def test_dcgan_shapes_and_range(size: int, channels: int, width: int) -> None:
    torch.manual_seed(0)
    gen = DCGANGenerator(latent_dim=10, channels=channels, image_size=size, width=width)
    disc = DCGANDiscriminator(channels=channels, image_size=size, width=width)
    with torch.no_grad():
        images = gen(torch.randn(3, 10))
    assert images.shape == (3, channels, size, size)
    assert float(images.abs().max()) <= 1.0
    assert disc(images).shape == (3,)
    # The paper's 64x64 layout: 4 transposed convolutions after the 4x4 projection.
    n_up = sum(isinstance(m, nn.ConvTranspose2d) for m in gen.modules())
    assert n_up == {16: 3, 32: 4, 64: 5}[size]


def test_params_models_refuse_inconsistent_settings() -> None:
    with pytest.raises(ValidationError, match="w_perc > 0 needs perceptual_model"):
        TrainEncoderParams(generator="job:abc", w_perc=1.0)
    with pytest.raises(ValidationError, match="all loss weights are 0"):
        TrainEncoderParams(generator="job:abc", w_z=0, w_pix=0)
    with pytest.raises(ValidationError, match="encoder, encoder\\+refine need an encoder"):
        RecoverLatentParams(generator="job:abc", methods=["gradient", "encoder", "encoder+refine"])
    with pytest.raises(ValidationError):
        TrainGeneratorParams(dataset="http://example.com/x")
    assert TrainGeneratorParams().image_size == 64
    ok = TrainEncoderParams(generator="model:u1", w_perc=0.5, perceptual_model="model:facenet1")
    assert (ok.lr, ok.beta1) == (2e-4, 0.5)
