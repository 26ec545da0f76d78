"""GAN inverse mapping: the generator contract, a DCGAN trainer, a latent encoder and latent recovery.

- `generator`: the contract (TorchScript z (N, latent_dim) -> (N, C, H, W) in [-1, 1], latent_dim
  and prior stored beside it), `save_generator` / `load_generator` / `validate_generator`.
- `dcgan`, `train_gan`: DCGAN networks and `train_dcgan` (resumable), `export_dcgan`.
- `encoder`, `train_encoder`: the ResNet-18 encoder image -> z and `train_encoder` (resumable).
- `perceptual`: face-network features (facenet InceptionResnetV1 or a trained backbone) for the
  perceptual loss and the embedding-cosine metric.
- `recover`: `recover_latent` (gradient, stochastic clipping, encoder, encoder+refine).
- `compare`, `metrics`: several methods on the same targets; PSNR, SSIM, latent/embedding cosine.
"""

from __future__ import annotations

from ml.gan.common import GANConfigError
from ml.gan.compare import METHOD_NAMES, MethodSpec, default_clip, evaluate, method_specs, run_method
from ml.gan.dcgan import DCGANDiscriminator, DCGANGenerator
from ml.gan.encoder import EncoderFileError, LatentEncoder, load_encoder, save_encoder
from ml.gan.generator import (
    GeneratorContractError,
    GeneratorInfo,
    load_generator,
    sample_latent,
    save_generator,
    validate_generator,
)
from ml.gan.metrics import cosine, psnr, ssim
from ml.gan.perceptual import (
    FaceFeatures,
    PerceptualLoss,
    PerceptualWeightsError,
    load_face_network,
    load_facenet,
    load_trained_backbone,
)
from ml.gan.recover import Recovery, RecoveryError, recover_latent, stochastic_clip_
from ml.gan.train_encoder import EncoderConfig, TrainedEncoder, train_encoder
from ml.gan.train_gan import DCGANConfig, TrainedGenerator, export_dcgan, train_dcgan

__all__ = [
    "METHOD_NAMES",
    "DCGANConfig",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "EncoderConfig",
    "EncoderFileError",
    "FaceFeatures",
    "GANConfigError",
    "GeneratorContractError",
    "GeneratorInfo",
    "LatentEncoder",
    "MethodSpec",
    "PerceptualLoss",
    "PerceptualWeightsError",
    "Recovery",
    "RecoveryError",
    "TrainedEncoder",
    "TrainedGenerator",
    "cosine",
    "default_clip",
    "evaluate",
    "export_dcgan",
    "load_encoder",
    "load_face_network",
    "load_facenet",
    "load_generator",
    "load_trained_backbone",
    "method_specs",
    "psnr",
    "recover_latent",
    "run_method",
    "sample_latent",
    "save_encoder",
    "save_generator",
    "ssim",
    "stochastic_clip_",
    "train_dcgan",
    "train_encoder",
    "validate_generator",
]
