"""The perceptual network (facenet InceptionResnetV1 from a local weights file, or a trained backbone)
and the encoder's loss terms.

No pretrained facenet weights can be downloaded here, so these tests save a RANDOMLY INITIALISED
InceptionResnetV1 (with the published files' extra "logits" classifier) to a temporary file and
load it through the real local-file path. They check the plumbing (layers, one truncated pass,
gradients, error messages), not what pretrained features would say about faces.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from facenet_pytorch import InceptionResnetV1

from ml.arcface.model import save_trained
from ml.backbones import create_backbone
from ml.core.callbacks import LocalCallbacks
from ml.gan.common import GANConfigError
from ml.gan.compare import evaluate
from ml.gan.dcgan import DCGANGenerator
from ml.gan.perceptual import (
    FACENET_LAYERS,
    PerceptualLoss,
    PerceptualWeightsError,
    load_face_network,
    load_facenet,
    stage_ends,
)
from ml.gan.recover import Recovery
from ml.gan.train_encoder import EncoderConfig, train_encoder
from tests.support import model_config


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small convolutions: one thread is about as fast, and far faster when the 2 cores are busy."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def facenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = InceptionResnetV1(pretrained=None, classify=True, num_classes=16).eval()  # random weights
    path = tmp_path_factory.mktemp("facenet") / "random-inception-resnet-v1.pt"
    torch.save(net.state_dict(), path)
    return path


def test_missing_weights_ask_for_an_upload(tmp_path: Path) -> None:
    with pytest.raises(PerceptualWeightsError, match="cannot be downloaded here: upload the InceptionResnetV1"):
        load_facenet(None)
    with pytest.raises(PerceptualWeightsError, match=r"no face-network weights file at .*absent\.pt: upload the"):
        load_facenet(tmp_path / "absent.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(PerceptualWeightsError, match=re.escape("wrong.pt is not an InceptionResnetV1 state dict")):
        load_facenet(wrong)


def test_facenet_features_come_from_one_truncated_pass(facenet_file: Path) -> None:
    face = load_face_network(facenet_file)
    assert face.layers == list(FACENET_LAYERS)
    calls = {"stem": 0, "block8": 0}
    face.net.conv2d_1a.register_forward_hook(lambda *a: calls.__setitem__("stem", calls["stem"] + 1))
    face.net.block8.register_forward_hook(lambda *a: calls.__setitem__("block8", calls["block8"] + 1))
    grey = torch.rand(2, 1, 32, 32) * 2 - 1  # a grey 32x32 generator output: replicated, resized to 160
    feats = face.features(grey)
    assert [tuple(f.shape) for f in feats] == [
        (2, 256, 17, 17),
        (2, 896, 8, 8),
        (2, 896, 8, 8),
        (2, 1792, 3, 3),
        (2, 1792, 3, 3),
    ]
    assert calls == {"stem": 1, "block8": 0}  # one pass, stopped after repeat_3
    emb = face.embed(grey)  # the full network for the embedding metric
    assert emb.shape == (2, 512) and calls == {"stem": 2, "block8": 1}
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_perceptual_loss_is_zero_on_identical_images_and_sends_gradients(facenet_file: Path) -> None:
    loss_fn = PerceptualLoss(load_face_network(facenet_file))
    target = torch.rand(2, 3, 24, 24) * 2 - 1
    assert float(loss_fn(target.clone(), target)) == 0.0
    recon = (target + 0.3 * torch.randn_like(target)).clamp(-1, 1).requires_grad_(True)
    loss = loss_fn(recon, target)
    loss.backward()
    assert float(loss.detach()) > 0 and recon.grad is not None and float(recon.grad.abs().sum()) > 0
    assert all(p.grad is None for p in loss_fn.parameters())  # the face network stays frozen


def test_a_trained_backbone_folder_gives_stage_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = {"in_channels": 1, "input_size": 32, "embedding_size": 24, "base_width": 8}
    backbone = create_backbone("se_resnet18", **kwargs).eval()
    config = model_config(kwargs, 32)
    save_trained(tmp_path, backbone, torch.randn(24, 3), config, ["a", "b", "c"])
    face = load_face_network(tmp_path)
    assert face.kind == "backbone" and face.layers == stage_ends(face.net)
    feats = face.features(torch.rand(3, 1, 32, 32) * 2 - 1)
    assert [f.shape[1] for f in feats] == [8, 16, 32, 64]  # the last block of each stage
    assert face.embed(torch.rand(3, 1, 32, 32) * 2 - 1).shape == (3, 24)


def test_encoder_training_with_perceptual_and_real_phases(facenet_file: Path) -> None:
    torch.manual_seed(0)
    gen = DCGANGenerator(latent_dim=8, channels=1, image_size=16, width=4).eval()
    real = torch.rand(6, 1, 16, 16) * 2 - 1
    config = EncoderConfig(
        steps=1, real_steps=1, batch_size=2, w_z=1.0, w_pix=1.0, w_perc=0.5, log_every=1, preview_every=0, eval_images=2
    )
    perceptual = PerceptualLoss(load_face_network(facenet_file))
    trained = train_encoder(gen, 8, "normal", config, LocalCallbacks(), perceptual=perceptual, real_images=real)
    phase0, phase1 = trained.history
    assert set(phase0) == {"step", "phase", "l_z", "l_pix", "l_perc", "loss"}
    assert set(phase1) == {"step", "phase", "l_pix", "l_perc", "loss"}  # real images: no latent term
    assert phase1["loss"] == pytest.approx(phase1["l_pix"] + 0.5 * phase1["l_perc"], rel=1e-5)
    assert trained.config["perceptual"] == "facenet" and trained.config["real_images"] == 6


def test_a_zero_weight_skips_its_computation() -> None:
    torch.manual_seed(0)
    gen = DCGANGenerator(latent_dim=8, channels=1, image_size=16, width=4).eval()
    calls = [0]
    gen.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    base = {"steps": 3, "batch_size": 2, "log_every": 1, "preview_every": 0, "eval_images": 2}
    trained = train_encoder(gen, 8, "normal", EncoderConfig(**base, w_z=1.0, w_pix=0.0), LocalCallbacks())
    # G runs once for the held-out set, once per step to make x, and twice at the end (metrics, preview):
    # never on E(x), since no pixel or perceptual term needs G(E(x)).
    assert calls[0] == 1 + 3 + 2
    assert set(trained.history[-1]) == {"step", "phase", "l_z", "loss"}
    calls[0] = 0
    train_encoder(gen, 8, "normal", EncoderConfig(**base, w_z=1.0, w_pix=1.0), LocalCallbacks())
    assert calls[0] == 1 + 3 * 2 + 2
    with pytest.raises(GANConfigError, match=re.escape("w_perc > 0 needs a perceptual network")):
        train_encoder(gen, 8, "normal", EncoderConfig(**base, w_perc=1.0), LocalCallbacks())


def test_evaluate_reports_embedding_cosine_through_the_face_network(facenet_file: Path) -> None:
    face = load_face_network(facenet_file)
    targets = torch.rand(3, 1, 16, 16) * 2 - 1
    recon = targets.clone()
    recon[2] = -recon[2]  # one reconstruction is the negative image
    rec = Recovery("gradient", torch.zeros(3, 4), recon, torch.zeros(3), 0.3, 10)
    metrics = evaluate(rec, targets, true_z=None, face=face)
    emb = metrics["per_image"]["embedding_cosine"]
    assert emb[0] == pytest.approx(1.0, abs=1e-5) and emb[1] == pytest.approx(1.0, abs=1e-5)
    expected = float((face.embed(targets[2:]) * face.embed(recon[2:])).sum())
    # (Random weights embed every image in nearly one direction, so only the plumbing is checked here.)
    assert emb[2] == pytest.approx(expected, abs=1e-6)
    assert metrics["psnr"]["max"] == float("inf") and metrics["seconds_per_image"] == pytest.approx(0.1)
    assert "latent_cosine" not in metrics
