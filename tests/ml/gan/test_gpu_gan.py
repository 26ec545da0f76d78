"""The GAN chain on CUDA: DCGAN training against the CPU, latent recovery and an encoder with a CUDA generator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ml.core.callbacks import LocalCallbacks
from ml.data import load_mnist
from ml.gan.common import to_unit
from ml.gan.generator import load_generator, sample_latent
from ml.gan.metrics import psnr
from ml.gan.recover import recover_latent
from ml.gan.train_encoder import EncoderConfig, train_encoder
from ml.gan.train_gan import DCGANConfig, export_dcgan, train_dcgan
from tests.support import need_gpu
from tests.support.gpu import full_fp32

pytestmark = pytest.mark.gpu

GAN = DCGANConfig(latent_dim=8, image_size=16, g_width=8, d_width=8, epochs=2, batch_size=32, seed=3, log_every=2)


@pytest.fixture
def cuda() -> torch.device:
    return need_gpu()


def test_dcgan_on_cuda_follows_the_cpu_and_its_generator_recovers_latents(
    cuda: torch.device, mnist_dir: Path, tmp_path: Path
) -> None:
    images = load_mnist(mnist_dir, 16, max_samples=192).images
    gpu_cb = LocalCallbacks()
    with full_fp32():
        cpu = train_dcgan(images, GAN, LocalCallbacks())
        gpu = train_dcgan(images, GAN, gpu_cb, device=cuda)
    assert [h["epoch"] for h in gpu.history] == [1, 2] and gpu_cb.checkpoints_saved == 2
    assert next(gpu.generator.parameters()).device.type == "cpu"  # returned on the CPU, as on the CPU
    for got, want in zip(gpu.history, cpu.history, strict=True):
        assert got["d_loss"] == pytest.approx(want["d_loss"], rel=5e-2)
        assert got["g_loss"] == pytest.approx(want["g_loss"], rel=5e-2)

    export_dcgan(gpu, tmp_path / "gen")
    generator, info = load_generator(tmp_path / "gen", device=cuda)
    cpu_generator, _ = load_generator(tmp_path / "gen")
    z = sample_latent(8, info.latent_dim, info.prior, torch.Generator().manual_seed(7))
    with torch.no_grad():
        targets = cpu_generator(z)
        torch.testing.assert_close(generator(z.to(cuda)).cpu(), targets, rtol=0, atol=1e-4)
    with full_fp32():
        on_gpu = recover_latent(
            generator, targets, "gradient", info.latent_dim, info.prior, iterations=100, device=cuda
        )
        on_cpu = recover_latent(cpu_generator, targets, "gradient", info.latent_dim, info.prior, iterations=100)
    assert on_gpu.z.device.type == "cpu" and on_gpu.iterations == 100
    gpu_psnr = float(psnr(to_unit(on_gpu.images), to_unit(targets)).median())
    cpu_psnr = float(psnr(to_unit(on_cpu.images), to_unit(targets)).median())
    assert gpu_psnr == pytest.approx(cpu_psnr, abs=0.5)

    # An encoder trained against the CUDA generator, then encoder+refine on CUDA.
    config = EncoderConfig(steps=20, batch_size=8, checkpoint_every=10, log_every=5, preview_every=0, eval_images=8)
    trained = train_encoder(generator, info.latent_dim, info.prior, config, LocalCallbacks(), device=cuda)
    assert [h["step"] for h in trained.history] == [5, 10, 15, 20]
    assert all(torch.isfinite(torch.tensor(list(trained.metrics.values()))))
    refined = recover_latent(
        generator, targets, "encoder+refine", encoder=trained.encoder.to(cuda), iterations=20, device=cuda
    )
    assert refined.images.shape == targets.shape and bool(torch.isfinite(refined.l1).all())
