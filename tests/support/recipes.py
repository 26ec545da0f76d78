"""The suite's slow training recipes, each written once: what several tests (or modules) train and share.

- `train_mnist_arcface`: se_resnet18 with ArcFace on 75% of MNIST (by sample), the `mnist_arcface`
  session fixture of tests/ml (training quality, saving, model inversion).
- `train_orl_arcface`: se_resnet18 with ArcFace on 20 ORL people, verified on the 10 others
  (tests/ml/arcface/test_train_embedding.py).
- `train_mnist_gan`: a DCGAN trained briefly on real MNIST, exported in the generator contract, and
  an encoder trained for it (tests/ml/gan/test_gan_recovery.py).
- `quality_inversions`: the MNIST ArcFace model inverted with `MNIST_INVERT_RECIPE`, 3 images of
  every digit for each of two seeds (tests/ml/invert/test_invert.py's quality bar).
- The ORL gallery models are `tests.support.orl_gallery.train_gallery_model`.

Each runs with one torch thread (`tests.support.threads`), so its numbers are the same in the test
process and in the background process of `tests.support.pretrain`, which trains them while the
first tests run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ml.arcface.train import TrainConfig, TrainedEmbedding, train_embedding
from ml.core.callbacks import LocalCallbacks
from ml.data import load_mnist
from ml.data.folders import load_image_folder
from ml.gan.train_encoder import EncoderConfig, train_encoder
from ml.gan.train_gan import DCGANConfig, export_dcgan, train_dcgan
from ml.invert.inversion import InversionConfig, InversionResult, invert
from tests.support.threads import one_torch_thread

MNIST_ARCFACE_CONFIG = TrainConfig(
    backbone="se_resnet18",
    backbone_kwargs={"base_width": 16},
    embedding_size=128,
    image_size=32,
    in_channels=1,
    # s=32 rather than the face default 64: with 10 classes s=64 left held-out verification at
    # 0.989-0.994 depending on the thread count; s=32 gives 0.995 (AUC 0.9999) in the same 12 epochs.
    scale=32.0,
    optimizer="sgd",
    lr=0.1,
    schedule="cosine",
    epochs=12,
    batch_size=128,
    augment_shift=2,
    split_by="sample",
    test_fraction=0.25,
    seed=0,
)


def train_mnist_arcface(mnist_dir: Path) -> TrainedEmbedding:
    """`MNIST_ARCFACE_CONFIG` on the 8,000 shared MNIST images at 32x32; `config["fixture_seconds"]` is its time."""
    # One thread: the recipe's numbers were measured so (float sums, hence the last digits of the
    # metrics, depend on the thread count), and two threads on a shared 2-core box ran 18x slower.
    started = time.monotonic()
    with one_torch_thread():
        result = train_embedding(load_mnist(mnist_dir, 32), MNIST_ARCFACE_CONFIG, LocalCallbacks())
    result.config["fixture_seconds"] = time.monotonic() - started
    return result


ORL_ARCFACE_SIZE = (56, 48)
ORL_ARCFACE_CONFIG = TrainConfig(
    backbone="se_resnet18",
    backbone_kwargs={"base_width": 16},
    embedding_size=64,
    epochs=25,
    batch_size=32,
    lr=0.05,
    augment_shift=3,
    augment_flip=True,
    flip_tta=True,
    split_by="identity",
    test_fraction=1 / 3,
    seed=0,
)


def train_orl_arcface(orl_dir: Path) -> TrainedEmbedding:
    """`ORL_ARCFACE_CONFIG` on the 300 ORL images at 56x48 (one torch thread)."""
    with one_torch_thread():
        return train_embedding(
            load_image_folder(orl_dir, image_size=ORL_ARCFACE_SIZE), ORL_ARCFACE_CONFIG, LocalCallbacks()
        )


# DCGAN at 32x32, generator width 32, discriminator width 16, latent_dim 16, normal prior, 3 epochs
# over the 8,000 MNIST images (375 steps of 64); the encoder: ResNet-18 (untrained start), 150 steps
# of 16 pairs at lr 1e-3, latent + pixel losses. Why these: tests/ml/gan/test_gan_recovery.py.
MNIST_GAN_CONFIG = DCGANConfig(latent_dim=16, image_size=32, g_width=32, d_width=16, epochs=3, batch_size=64, seed=0)
MNIST_ENCODER_CONFIG = EncoderConfig(
    steps=150, batch_size=16, lr=1e-3, w_z=1.0, w_pix=1.0, checkpoint_every=150, preview_every=0, eval_images=64
)


def train_mnist_gan(mnist_dir: Path, folder: Path) -> dict[str, Any]:
    """The DCGAN trained on MNIST and exported to `folder`, and an encoder trained on the generator
    loaded back from it (what the jobs see).

    Returns picklable parts only (the loaded generator is TorchScript: load it again from `folder`):
    "folder", "history", "callbacks" (the DCGAN training's `LocalCallbacks`), "seconds", and
    "encoder" / "encoder_metrics" / "encoder_seconds".
    """
    from ml.gan.generator import load_generator

    with one_torch_thread():
        images = load_mnist(mnist_dir, 28).images
        cb = LocalCallbacks()
        started = time.monotonic()
        trained = train_dcgan(images, MNIST_GAN_CONFIG, cb, source="builtin:mnist")
        export_dcgan(trained, folder)
        generator, info = load_generator(folder)
        seconds = time.monotonic() - started
        started = time.monotonic()
        encoder = train_encoder(generator, info.latent_dim, info.prior, MNIST_ENCODER_CONFIG, LocalCallbacks())
    return {
        "folder": folder,
        "history": trained.history,
        "callbacks": cb,
        "seconds": seconds,
        "encoder": encoder.encoder,
        "encoder_metrics": encoder.metrics,
        "encoder_seconds": time.monotonic() - started,
    }


# Tuned on MNIST with bench/invert_quality.py and on the `mnist_arcface` model (see bench/notes/invert.md):
# with the paper's squared BN loss at lambda_bn = 0.05 the BN term dominates early and the ArcFace term
# needs thousands of steps; DeepInversion's plain-norm form at 0.01 (and its Adam betas, the default)
# lets the class emerge within ~100 steps while still shaping the statistics. Flips are off: a
# mirrored digit is another glyph. The inversion uses the model's own ArcFace scale (32). On this
# model, 60 images (2 seeds x 10 x 3), LeNet recognised: no prior 0.77 / 0.78 / 0.82 / 0.83 at 300 /
# 600 / 500 / 1000 steps; TV 0.01: 0.80 / 0.78 and TV 0.05: 0.50 / 0.62 at 300 / 600; the L2 prior at
# 0.01: 0.83 / 0.85 at 300 / 600 (the model itself: 1.00 in every case). Hence L2 0.01, 600 steps.
MNIST_INVERT_RECIPE: dict[str, Any] = {
    "lr": 0.1, "lambda_bn": 0.01, "bn_form": "l2", "jitter": 2, "flip": False, "l2_weight": 0.01,
}  # fmt: skip
QUALITY_ITERATIONS = 600
QUALITY_PER_CLASS = 3
QUALITY_SEEDS = (0, 1)


def invert_trained(trained: TrainedEmbedding, callbacks: LocalCallbacks | None = None, **overrides: Any) -> Any:
    """`invert` the trained model with `MNIST_INVERT_RECIPE` (no previews) and `overrides`."""
    # The ArcFace head as the model was trained (the job runner reads the same two from config.json).
    head = {"scale": float(trained.config["scale"]), "margin_degrees": float(trained.config["margin"])}
    config = InversionConfig(**{**MNIST_INVERT_RECIPE, **head, "preview_every": 0, **overrides})
    return invert(
        trained.backbone,
        trained.arcface_weight,
        config,
        normalize=trained.normalize,
        image_size=trained.image_size,
        in_channels=trained.in_channels,
        callbacks=callbacks,
    )


def quality_inversions(trained: TrainedEmbedding) -> list[tuple[InversionResult, LocalCallbacks]]:
    """Per seed of `QUALITY_SEEDS`: `QUALITY_PER_CLASS` images of every class after `QUALITY_ITERATIONS`
    steps (one torch thread, progress every 25 steps), and the callbacks that saw it."""
    runs = []
    with one_torch_thread():
        for seed in QUALITY_SEEDS:
            cb = LocalCallbacks()
            result = invert_trained(
                trained, cb, images_per_class=QUALITY_PER_CLASS, iterations=QUALITY_ITERATIONS, seed=seed,
                progress_every=25,
            )  # fmt: skip
            runs.append((result, cb))
    return runs
