"""A DCGAN or encoder training killed after k checkpoints and resumed ends with the same weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ml.core.callbacks import LocalCallbacks
from ml.core.errors import Stopped
from ml.data import load_mnist
from ml.gan.common import GANConfigError
from ml.gan.dcgan import DCGANGenerator
from ml.gan.generator import quiet_jit
from ml.gan.train_encoder import EncoderConfig, train_encoder
from ml.gan.train_gan import DCGANConfig, train_dcgan


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small convolutions: one thread is about as fast, and far faster when the 2 cores are busy."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


def test_dcgan_resume_matches_an_uninterrupted_run(mnist_dir: Path) -> None:
    images = load_mnist(mnist_dir, 16, max_samples=192).images
    config = DCGANConfig(latent_dim=8, image_size=16, g_width=8, d_width=8, epochs=3, batch_size=32, seed=3)
    straight = train_dcgan(images, config, LocalCallbacks())

    killed = LocalCallbacks(stop_after_checkpoints=2)
    with pytest.raises(Stopped) as stop:
        train_dcgan(images, config, killed)
    assert stop.value.step == 2 and killed.checkpoints_saved == 2
    again = killed.resume()
    resumed = train_dcgan(images, config, again)
    assert again.messages[0] == "resumed from the checkpoint of epoch 2"
    assert [s[0] for s in again.steps] == [18]  # only epoch 3 ran (6 steps of 32), reported once at its end
    _assert_same_state(straight.generator.state_dict(), resumed.generator.state_dict())
    _assert_same_state(straight.discriminator.state_dict(), resumed.discriminator.state_dict())
    assert resumed.history == straight.history

    # A checkpoint of another config is not silently resumed.
    other = DCGANConfig(**{**config.__dict__, "lr": 1e-3})
    with pytest.raises(GANConfigError, match="belongs to a different config"):
        train_dcgan(images, other, killed.resume())


def test_encoder_resume_matches_an_uninterrupted_run() -> None:
    torch.manual_seed(0)
    with quiet_jit():
        gen = torch.jit.script(DCGANGenerator(latent_dim=8, channels=1, image_size=16, width=4).eval())
    config = EncoderConfig(
        steps=6, batch_size=4, checkpoint_every=2, log_every=1, preview_every=3, eval_images=4, seed=5
    )
    straight = train_encoder(gen, 8, "normal", config, LocalCallbacks())

    killed = LocalCallbacks(stop_after_checkpoints=2)
    with pytest.raises(Stopped) as stop:
        train_encoder(gen, 8, "normal", config, killed)
    # Checkpoints at steps 2 and 4; the stop is seen at step 5, which is checkpointed before stopping.
    assert stop.value.step == 5 and killed.checkpoints_saved == 3
    again = killed.resume()
    resumed = train_encoder(gen, 8, "normal", config, again)
    assert [s[0] for s in again.steps] == [6]
    _assert_same_state(straight.encoder.state_dict(), resumed.encoder.state_dict())
    assert resumed.metrics == pytest.approx(straight.metrics, abs=1e-5)
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
