"""Params of the GAN inverse-mapping kinds: train_generator, train_encoder, recover_latent."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.kindspec import KindSpec, ml_defaults
from jobs.refs import DATASET_REF_PATTERN, MODEL_REF_PATTERN

# Settings shared with the ml.gan trainers' configs: one default each, in ml/gan/defaults.json.
DCGAN = ml_defaults("gan", "DCGANConfig")
ENCODER = ml_defaults("gan", "EncoderConfig")

Method = Literal["gradient", "gradient+clip", "encoder", "encoder+refine"]


class TrainGeneratorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        "builtin:mnist", pattern=DATASET_REF_PATTERN, description='"builtin:mnist", "builtin:digits" or "dataset:<id>".'
    )
    channels: Literal["grey", "rgb"] | None = Field(None, description="Convert the images (default: keep theirs).")
    max_images: int | None = Field(None, ge=2, le=10_000_000, description="Train on the first this many images.")
    image_size: Literal[16, 32, 64, 128] = Field(
        DCGAN["image_size"],
        description="Output side; 64 is the DCGAN paper's network (non-square images are centre-cropped).",
    )
    latent_dim: int = Field(DCGAN["latent_dim"], ge=1, le=4096, description="Length of z.")
    prior: Literal["normal", "uniform"] = Field(DCGAN["prior"], description="Latent prior: N(0, I) or U(-1, 1).")
    g_width: int = Field(DCGAN["g_width"], ge=2, le=1024, description="Generator base width (its last hidden layer).")
    d_width: int = Field(DCGAN["d_width"], ge=2, le=1024, description="Discriminator base width (its first layer).")
    loss: Literal["bce", "hinge"] = Field(DCGAN["loss"], description="Adversarial loss: non-saturating BCE or hinge.")
    epochs: int = Field(DCGAN["epochs"], ge=1, le=100_000, description="Passes over the images.")
    batch_size: int = Field(DCGAN["batch_size"], ge=2, le=8192, description="Images per step.")
    lr: float = Field(DCGAN["lr"], gt=0, le=1, description="Adam learning rate (both networks).")
    beta1: float = Field(DCGAN["beta1"], ge=0, lt=1, description="Adam beta1.")
    beta2: float = Field(DCGAN["beta2"], ge=0, lt=1, description="Adam beta2.")
    seed: int = Field(DCGAN["seed"], ge=0, le=2**31 - 1, description="Seeds weights, data order and latents.")


class TrainEncoderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generator: str = Field(
        ..., pattern=MODEL_REF_PATTERN, description='"job:<id>" of a train_generator job or "model:<id>" of an upload.'
    )
    latent_dim: int | None = Field(None, ge=1, le=65536, description="Override (uploads without generator.json).")
    prior: Literal["normal", "uniform"] | None = Field(None, description="Override the generator's latent prior.")
    steps: int = Field(ENCODER["steps"], ge=0, le=10_000_000, description="Steps on (z, G(z)) pairs drawn on the fly.")
    batch_size: int = Field(ENCODER["batch_size"], ge=2, le=8192, description="Images per step.")
    lr: float = Field(ENCODER["lr"], gt=0, le=1, description="Adam learning rate.")
    beta1: float = Field(ENCODER["beta1"], ge=0, lt=1, description="Adam beta1.")
    beta2: float = Field(ENCODER["beta2"], ge=0, lt=1, description="Adam beta2.")
    w_z: float = Field(ENCODER["w_z"], ge=0, le=1e6, description="Weight of |E(x) - z|_1 (0 turns it off).")
    w_pix: float = Field(ENCODER["w_pix"], ge=0, le=1e6, description="Weight of |G(E(x)) - x|_1 (0 turns it off).")
    w_perc: float = Field(
        ENCODER["w_perc"],
        ge=0,
        le=1e6,
        description="Weight of the perceptual loss (needs perceptual_model; 0 turns it off).",
    )
    perceptual_model: str | None = Field(
        None,
        pattern=MODEL_REF_PATTERN,
        description='Face network of the perceptual loss: "model:<id>" of uploaded facenet-pytorch '
        'InceptionResnetV1 weights, or "job:<id>" of a train_embedding job.',
    )
    perceptual_layers: list[str] | None = Field(
        None,
        max_length=32,
        description="Feature layers (default: facenet's repeat_1, mixed_6a, repeat_2, mixed_7a, repeat_3; "
        "a trained backbone's last block of each stage).",
    )
    real_dataset: str | None = Field(
        None, pattern=DATASET_REF_PATTERN, description="Real images for the optional second phase (pixel + perceptual)."
    )
    real_steps: int = Field(ENCODER["real_steps"], ge=0, le=10_000_000, description="Steps of the real-image phase.")
    max_real_images: int | None = Field(None, ge=1, le=10_000_000, description="Use the first this many.")
    checkpoint_every: int = Field(
        ENCODER["checkpoint_every"], ge=1, le=10_000_000, description="Checkpoint interval in steps."
    )
    preview_every: int = Field(
        ENCODER["preview_every"], ge=0, le=10_000_000, description="Preview interval in steps (0: end only)."
    )
    seed: int = Field(ENCODER["seed"], ge=0, le=2**31 - 1, description="Seeds weights and every draw.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainEncoderParams:
        if self.w_z + self.w_pix + self.w_perc == 0:
            raise ValueError("all loss weights are 0: set at least one of w_z, w_pix, w_perc")
        if self.w_perc > 0 and self.perceptual_model is None:
            raise ValueError(
                "w_perc > 0 needs perceptual_model: upload the facenet-pytorch InceptionResnetV1 weights "
                '(e.g. 20180402-114759-vggface2.pt) and give "model:<id>", or give "job:<id>" of a train_embedding job'
            )
        if self.real_steps > 0 and self.real_dataset is None:
            raise ValueError("real_steps > 0 needs real_dataset")
        if self.real_steps > 0 and self.w_pix + self.w_perc == 0:
            raise ValueError("the real-image phase uses w_pix and w_perc only; both are 0")
        if self.steps + self.real_steps == 0:
            raise ValueError("steps + real_steps must be >= 1")
        return self


class RecoverLatentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generator: str = Field(
        ..., pattern=MODEL_REF_PATTERN, description='"job:<id>" of a train_generator job or "model:<id>" of an upload.'
    )
    latent_dim: int | None = Field(None, ge=1, le=65536, description="Override (uploads without generator.json).")
    prior: Literal["normal", "uniform"] | None = Field(None, description="Override the generator's latent prior.")
    encoder: str | None = Field(None, pattern=MODEL_REF_PATTERN, description='"job:<id>" of a train_encoder job.')
    methods: list[Method] | None = Field(
        None,
        max_length=4,
        description="Methods to compare (default: gradient and gradient+clip, plus encoder and encoder+refine "
        "when an encoder is given).",
    )
    dataset: str | None = Field(
        None, pattern=DATASET_REF_PATTERN, description="Target images; none: images generated from known latents."
    )
    num_targets: int = Field(50, ge=1, le=100_000, description="Targets (generated, or the dataset's first).")
    iterations: int = Field(200, ge=1, le=1_000_000, description="Adam steps of gradient and gradient+clip.")
    refine_iterations: int | None = Field(
        None, ge=1, le=1_000_000, description="Adam steps of encoder+refine (default: half of iterations)."
    )
    lr: float = Field(0.01, gt=0, le=10, description="Adam learning rate on z.")
    clip: float | None = Field(
        None, gt=0, le=100, description="Stochastic clipping bound c (default: 1 for the uniform prior, 3 for normal)."
    )
    batch_size: int = Field(256, ge=1, le=65536, description="Targets recovered in parallel per batch.")
    face_model: str | None = Field(
        None,
        pattern=MODEL_REF_PATTERN,
        description="Face network for the embedding-cosine metric (facenet weights upload or train_embedding job).",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seeds the generated targets, z0 and clipping draws.")

    @field_validator("methods")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("methods must be a non-empty list without duplicates")
        return v

    @model_validator(mode="after")
    def _encoder_given(self) -> RecoverLatentParams:
        needs = [m for m in (self.methods or []) if m.startswith("encoder")]
        if needs and self.encoder is None:
            raise ValueError(f"methods {', '.join(needs)} need an encoder (job:<id> of a train_encoder job)")
        return self


KINDS = [
    KindSpec(
        name="train_generator",
        params=TrainGeneratorParams,
        queue="gpu",
        runner="workers.runners.gan:run_train_generator",
        description="Train a DCGAN on a dataset and export its generator (TorchScript, z -> [-1, 1] images).",
        oom_hints=("batch_size", "image_size", "g_width", "d_width"),
        # channels: "grey" / "rgb" here, a channel count there (the runner resolves it from the images).
        ml_configs={"ml.gan.train_gan:DCGANConfig": {"channels": None}},
    ),
    KindSpec(
        name="train_encoder",
        params=TrainEncoderParams,
        queue="gpu",
        runner="workers.runners.gan:run_train_encoder",
        description="Train a ResNet-18 encoder image -> z for a generator (latent, pixel and perceptual losses).",
        oom_hints=("batch_size",),
        ml_configs={"ml.gan.train_encoder:EncoderConfig": {}},
    ),
    KindSpec(
        name="recover_latent",
        params=RecoverLatentParams,
        queue="gpu",
        runner="workers.runners.gan:run_recover_latent",
        description="Recover latents of images: gradient descent, stochastic clipping, encoder, encoder+refine.",
        oom_hints=("batch_size",),
    ),
]
