"""Every model, weight and checkpoint file is read as data: a pickle payload never runs, and what
was loaded is checked (keys, shapes, dtypes) with a message that names the file (issue 11.1).

These run the loaders the workers call, on files in a folder; tests/security/test_untrusted_uploads.py
sends the same files through `POST /models`, the store and a real worker.
"""

from __future__ import annotations

import io
import pickle
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.arcface.model import TrainedModelError, load_trained
from ml.core.callbacks import LocalCallbacks
from ml.core.safe_load import UnsafeFileError, load_data_file
from ml.core.seeding import rng_state, set_rng_state
from ml.faces.models import ModelLoadError
from ml.faces.models import load_facenet as load_embed_facenet
from ml.gan.encoder import EncoderFileError, LatentEncoder, load_encoder, save_encoder
from ml.gan.perceptual import PerceptualWeightsError
from ml.gan.perceptual import load_facenet as load_perceptual_facenet
from tests.security.payloads import Payload, saved, tiny_model, with_payload

pytestmark = pytest.mark.security
REFUSED = "was refused: it names posix.system, which weights_only does not admit"


def test_the_payload_runs_under_a_plain_load(tmp_path: Path) -> None:
    """The hostile files of these tests are live: the old `weights_only=False` load ran them."""
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(Payload(canary)))
    assert canary.exists()
    canary.unlink()
    paths = tiny_model(tmp_path / "model")
    torch.load(io.BytesIO(with_payload(paths["backbone.pt"], canary)), weights_only=False)
    assert canary.exists()


@pytest.mark.parametrize(("protocol", "legacy"), [(2, False), (4, False), (2, True)])
def test_a_payload_in_backbone_or_arcface_never_runs(tmp_path: Path, protocol: int, legacy: bool) -> None:
    canary = tmp_path / "canary"
    paths = tiny_model(tmp_path / "model")
    good_backbone = paths["backbone.pt"].read_bytes()
    for name in ("backbone.pt", "arcface.pt"):
        original = paths[name].read_bytes()
        paths[name].write_bytes(with_payload(paths[name], canary, protocol, legacy))
        with pytest.raises(TrainedModelError, match=re.escape(f"{name} {REFUSED}")):
            load_trained(tmp_path / "model")
        assert not canary.exists()
        paths[name].write_bytes(original)
    assert paths["backbone.pt"].read_bytes() == good_backbone
    _, weight, config = load_trained(tmp_path / "model")  # the untouched folder still loads
    assert (tuple(weight.shape), config["class_names"]) == ((8, 3), ["zero", "one", "two"])


def test_a_payload_in_encoder_pt_never_runs(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    torch.manual_seed(0)
    paths = save_encoder(LatentEncoder(1, 4), tmp_path / "enc", (16, 16), {"steps": 1})
    paths["encoder.pt"].write_bytes(with_payload(paths["encoder.pt"], canary))
    with pytest.raises(EncoderFileError, match=re.escape(f"encoder.pt {REFUSED}")):
        load_encoder(tmp_path / "enc")
    assert not canary.exists()


def test_a_payload_in_facenet_weights_never_runs(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    state = {"conv.weight": torch.zeros(2), "logits.weight": Payload(canary)}
    path = tmp_path / "up" / "20180402-114759-vggface2.pt"
    path.parent.mkdir()
    path.write_bytes(saved(state))
    with pytest.raises(ModelLoadError, match=re.escape(f"20180402-114759-vggface2.pt {REFUSED}")):
        load_embed_facenet("vggface2", path.parent)
    with pytest.raises(PerceptualWeightsError, match=re.escape(f"20180402-114759-vggface2.pt {REFUSED}")):
        load_perceptual_facenet(path)
    assert not canary.exists()


def test_a_payload_in_a_checkpoint_never_runs(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "checkpoint.pt").write_bytes(saved({"step": 3, "rng": Payload(canary)}))
    with pytest.raises(UnsafeFileError, match=re.escape(f"checkpoint.pt {REFUSED}")):
        LocalCallbacks(tmp_path / "ck").load_checkpoint()
    (tmp_path / "ck" / "checkpoint.pt").write_bytes(saved([1, 2]))
    with pytest.raises(UnsafeFileError, match=r"^checkpoint\.pt is not a facejobs checkpoint \(a dict of named"):
        LocalCallbacks(tmp_path / "ck").load_checkpoint()
    assert not canary.exists()


def _rewrite(path: Path, **changes: object) -> None:
    blob = torch.load(path, weights_only=True)
    blob.update(changes)
    path.write_bytes(saved(blob))


def test_weights_that_do_not_fit_are_refused_naming_the_file_and_the_tensor(tmp_path: Path) -> None:
    paths = tiny_model(tmp_path / "model")
    good = {name: paths[name].read_bytes() for name in ("backbone.pt", "arcface.pt")}
    state = torch.load(paths["backbone.pt"], weights_only=True)["state_dict"]
    first = next(iter(state))  # body.0.weight: the stem convolution, (4, 1, 3, 3)
    cases = [
        ("backbone.pt", {"state_dict": {**state, first: torch.zeros(4, 3, 3, 3)}},
         f"backbone.pt: {first} has shape (4, 3, 3, 3), backbone se_resnet18 needs (4, 1, 3, 3)"),
        ("backbone.pt", {"state_dict": {**state, first: state[first].double()}},
         f"backbone.pt: {first} is torch.float64, backbone se_resnet18 needs torch.float32"),
        ("backbone.pt", {"state_dict": {k: v for k, v in state.items() if k != first}},
         f"backbone.pt does not hold backbone se_resnet18's weights: 1 missing ({first}) keys"),
        ("backbone.pt", {"state_dict": {**state, "extra.bias": torch.zeros(1)}},
         "backbone.pt does not hold backbone se_resnet18's weights: 1 unexpected (extra.bias) keys"),
        ("backbone.pt", {"state_dict": {**state, first: [1.0]}}, f"backbone.pt: state_dict['{first}'] is a list"),
        ("backbone.pt", {"backbone_kwargs": {"base_width": 4, "depth": 9}},
         "backbone.pt: backbone 'se_resnet18' cannot be built from its kwargs"),
        ("backbone.pt", {"image_size": [16, 10**6]}, "backbone.pt: image_size must be [height, width], each 1..1024"),
        ("arcface.pt", {"weight": torch.zeros(5, 3)},
         "arcface.pt: weight has 5 rows, the backbone's embeddings have 8"),
        ("arcface.pt", {"weight": torch.zeros(8, 3, dtype=torch.int64)},
         "arcface.pt: weight must be a dense floating (embedding_size, num_classes) matrix"),
        ("arcface.pt", {"class_names": ["a"]}, "arcface.pt: 1 class_names for 3 weight columns"),
    ]  # fmt: skip
    for name, change, message in cases:
        _rewrite(paths[name], **change)
        with pytest.raises(TrainedModelError, match=re.escape(message)):
            load_trained(tmp_path / "model")
        paths[name].write_bytes(good[name])
    (tmp_path / "model" / "config.json").write_text('{"image_size": [16, 16], "warp": "x" ')
    with pytest.raises(TrainedModelError, match=r"^config\.json is not JSON"):
        load_trained(tmp_path / "model")


def test_encoder_and_facenet_weights_that_do_not_fit_name_the_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    paths = save_encoder(LatentEncoder(1, 4), tmp_path / "enc", (16, 16), {"steps": 1})
    _rewrite(paths["encoder.pt"], latent_dim=5)
    with pytest.raises(EncoderFileError, match=re.escape("encoder.pt: head.weight has shape (4, 512), the ResNet-18")):
        load_encoder(tmp_path / "enc")
    _rewrite(paths["encoder.pt"], latent_dim=10**9)
    with pytest.raises(EncoderFileError, match=re.escape("encoder.pt: in_channels must be 1 or 3 and latent_dim 1..")):
        load_encoder(tmp_path / "enc")
    (tmp_path / "w.pt").write_bytes(saved({"conv.weight": torch.zeros(1)}))
    with pytest.raises(ModelLoadError, match=re.escape("w.pt is not an InceptionResnetV1 state_dict: w.pt does not")):
        load_embed_facenet("vggface2", tmp_path / "w.pt")
    (tmp_path / "w.pt").write_bytes(saved({"conv.weight": "not a tensor"}))
    with pytest.raises(PerceptualWeightsError, match=re.escape("w.pt: state_dict['conv.weight'] is a str, not a")):
        load_perceptual_facenet(tmp_path / "w.pt")


def test_files_written_before_this_change_still_load(tmp_path: Path) -> None:
    """encoder.pt with a raw config dict and a train_embedding checkpoint holding numpy's RNG tuple."""
    torch.manual_seed(0)
    encoder = LatentEncoder(1, 4)
    old_encoder = {
        "format": "facejobs.gan_encoder/1", "in_channels": 1, "latent_dim": 4, "image_size": [16, 16],
        "state_dict": {k: v.detach() for k, v in encoder.state_dict().items()},
        "config": {"steps": 1, "adam_betas": (0.5, 0.9), "perceptual_model": None},
    }  # fmt: skip
    (tmp_path / "encoder.pt").write_bytes(saved(old_encoder))
    loaded, header = load_encoder(tmp_path / "encoder.pt")
    assert header["config"] == {"steps": 1, "adam_betas": (0.5, 0.9), "perceptual_model": None}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in old_encoder["state_dict"].items())

    np.random.seed(7)
    random.seed(7)
    old_rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    expected = (np.random.random(3).tolist(), random.random())
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "checkpoint.pt").write_bytes(saved({"kind": "train_embedding", "epoch": 1, "rng": old_rng}))
    with pytest.raises(UnsafeFileError, match=re.escape("checkpoint.pt was refused: it names numpy._core")):
        load_data_file(tmp_path / "ck" / "checkpoint.pt", "checkpoint.pt")  # only checkpoints migrate
    state = LocalCallbacks(tmp_path / "ck").load_checkpoint()
    assert state is not None and state["epoch"] == 1
    np.random.seed(0)
    random.seed(0)
    set_rng_state(state["rng"])
    assert (np.random.random(3).tolist(), random.random()) == expected

    # The new format: numpy's state as a tensor and numbers, plain weights_only data.
    np.random.seed(11)
    new_rng = rng_state()
    expected = (np.random.random(3).tolist(), random.random())
    callbacks = LocalCallbacks(tmp_path / "new")
    callbacks.save_checkpoint({"rng": new_rng})
    reread = torch.load(tmp_path / "new" / "checkpoint.pt", weights_only=True)
    assert (reread["rng"]["numpy"]["bit_generator"], reread["rng"]["numpy"]["keys"].shape) == ("MT19937", (624,))
    set_rng_state(LocalCallbacks(tmp_path / "new").load_checkpoint()["rng"])  # type: ignore[index]
    assert (np.random.random(3).tolist(), random.random()) == expected
