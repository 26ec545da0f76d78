"""Every registered backbone runs forward and backward at small size (timm's test_models habit)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ml.backbones import (
    BackboneError,
    UnknownBackboneError,
    backbone_defaults,
    create_backbone,
    list_backbones,
    register_backbone,
)


def test_registry_lists_the_published_layouts() -> None:
    assert {"se_resnet18", "iresnet18", "iresnet50"} <= set(list_backbones())
    assert backbone_defaults("iresnet50")["embedding_size"] == 512
    assert backbone_defaults("iresnet50")["input_size"] == 112
    assert backbone_defaults("se_resnet18")["input_size"] == 128


@pytest.mark.parametrize("name", list_backbones())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_forward_backward_small(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = create_backbone(name, embedding_size=24, in_channels=in_channels, input_size=32, base_width=8)
    model.train()
    x = torch.randn(3, in_channels, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (3, 24)
    out.pow(2).sum().backward()
    assert torch.isfinite(out).all()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 24)


@pytest.mark.parametrize(
    ("size", "feature"),
    [(16, 1), (32, 2), ((48, 32), (3, 2)), (128, 8)],
)
def test_se_resnet18_head_follows_input_size(size: int | tuple[int, int], feature: int | tuple) -> None:
    model = create_backbone("se_resnet18", embedding_size=8, in_channels=1, input_size=size, base_width=4)
    fh, fw = (feature, feature) if isinstance(feature, int) else feature
    assert model.head.fc.in_features == 32 * fh * fw
    h, w = (size, size) if isinstance(size, int) else size
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, h, w)).shape == (2, 8)


def test_se_flag_adds_squeeze_excitation() -> None:
    with_se = create_backbone("se_resnet18", in_channels=1, input_size=32, base_width=16)
    without = create_backbone("se_resnet18", in_channels=1, input_size=32, base_width=16, use_se=False)
    count = sum(isinstance(m, nn.Sigmoid) for m in with_se.modules())
    assert count == 8  # one SE per IR block, 4 stages x 2 blocks
    assert not any(isinstance(m, nn.Sigmoid) for m in without.modules())


def test_published_sizes() -> None:
    # se_resnet18 at 128x128 (the original layout): 512 x 8 x 8 features into the head.
    se = create_backbone("se_resnet18", embedding_size=512, in_channels=1)
    assert se.head.fc.in_features == 512 * 8 * 8
    # iresnet at 112x112: 512 x 7 x 7; BN1d scale frozen at 1.
    ir18 = create_backbone("iresnet18")
    assert ir18.head.fc.in_features == 512 * 7 * 7
    assert not ir18.head.features.weight.requires_grad
    assert torch.equal(ir18.head.features.weight, torch.ones(512))
    ir50 = create_backbone("iresnet50", base_width=4, input_size=16)
    blocks = sum(type(m).__name__ == "IBasicBlock" for m in ir50.modules())
    assert blocks == 3 + 4 + 14 + 3


def test_iresnet_has_no_activation_after_the_add() -> None:
    model = create_backbone("iresnet18", in_channels=1, input_size=16, base_width=4)
    block = next(m for m in model.modules() if type(m).__name__ == "IBasicBlock")
    model.eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        # The block's output can be negative (no PReLU/ReLU after the residual add).
        assert (block(x) < 0).any()


def test_create_backbone_records_its_config() -> None:
    model = create_backbone("se_resnet18", embedding_size=16, in_channels=1, input_size=32, base_width=4)
    assert model.backbone_name == "se_resnet18"
    assert model.backbone_kwargs == {
        "embedding_size": 16,
        "in_channels": 1,
        "input_size": 32,
        "base_width": 4,
    }
    clone = create_backbone(model.backbone_name, **model.backbone_kwargs)
    clone.load_state_dict(model.state_dict())


def test_bad_names_and_values_are_named_errors() -> None:
    with pytest.raises(UnknownBackboneError, match=r"unknown backbone 'resnet9000'.*se_resnet18"):
        create_backbone("resnet9000")
    with pytest.raises(BackboneError, match="embedding_size must be >= 1, got 0"):
        create_backbone("se_resnet18", embedding_size=0)
    with pytest.raises(BackboneError, match="too small"):
        create_backbone("iresnet18", input_size=8)
    with pytest.raises(BackboneError, match="does not take use_se"):
        create_backbone("iresnet18", use_se=True)


def test_register_backbone_decorator() -> None:
    @register_backbone("tiny_test_net")
    def tiny(embedding_size: int = 4, in_channels: int = 1, input_size: int = 8) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size * input_size, embedding_size))

    try:
        assert "tiny_test_net" in list_backbones()
        assert create_backbone("tiny_test_net")(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    finally:
        from ml import backbones

        backbones._REGISTRY.pop("tiny_test_net")
