"""The loss terms of model inversion against slow, obvious recomputations (and PML's ArcFace)."""

from __future__ import annotations

import math
from typing import cast

import pytest
import torch
from pytorch_metric_learning.losses import ArcFaceLoss
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ml.invert.losses import (
    BNStatistics,
    arcface_logits,
    arcface_loss,
    channel_var_mean,
    jitter_and_flip,
    l2_prior,
    target_probability,
    total_variation,
)


def _bn_net() -> nn.Module:
    """BN2d on images, BN1d on (N, C) and on (N, C, L) inputs, with non-trivial running stats."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.bn2d = nn.BatchNorm2d(3)
            self.bn1d_seq = nn.BatchNorm1d(3)
            self.fc = nn.Linear(3 * 5 * 5, 4)
            self.bn1d = nn.BatchNorm1d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.bn2d(self.conv(x))
            h = self.bn1d_seq(h.flatten(2)).view_as(h)
            return self.bn1d(self.fc(h.flatten(1)))

    torch.manual_seed(3)
    net = Net()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
    return net.eval()


def _slow_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and population variance with plain Python sums."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    means, variances = [], []
    for row in flat.tolist():
        m = sum(row) / len(row)
        means.append(m)
        variances.append(sum((v - m) ** 2 for v in row) / len(row))
    return means, variances


def test_bn_hook_statistics_and_both_loss_forms_equal_a_slow_recomputation() -> None:
    net = _bn_net()
    inputs: list[torch.Tensor] = []
    layers = [cast(_BatchNorm, m) for m in (net.bn2d, net.bn1d_seq, net.bn1d)]
    spies = [m.register_forward_pre_hook(lambda _m, a: inputs.append(a[0].detach())) for m in layers]
    x = torch.randn(6, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    with BNStatistics(net) as stats:
        assert stats.layers == layers
        net(x)
        mean, var = stats.batch_statistics()
        squared, l2 = stats.loss("squared"), stats.loss("l2")
    for h in spies:
        h.remove()

    exp_mean, exp_var, exp_sq, exp_l2 = [], [], 0.0, 0.0
    for layer, inp in zip(layers, inputs, strict=True):
        m, v = _slow_stats(inp)
        rm, rv = cast(torch.Tensor, layer.running_mean).tolist(), cast(torch.Tensor, layer.running_var).tolist()
        exp_mean += m
        exp_var += v
        exp_sq += sum((a - b) ** 2 for a, b in zip(m, rm, strict=True))
        exp_sq += sum((math.sqrt(a) - math.sqrt(b)) ** 2 for a, b in zip(v, rv, strict=True))
        exp_l2 += math.sqrt(sum((a - b) ** 2 for a, b in zip(m, rm, strict=True)))
        exp_l2 += math.sqrt(sum((a - b) ** 2 for a, b in zip(v, rv, strict=True)))
    assert mean.shape == var.shape == (3 + 3 + 4,)
    torch.testing.assert_close(mean.double(), torch.tensor(exp_mean, dtype=torch.double), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(var.double(), torch.tensor(exp_var, dtype=torch.double), atol=1e-6, rtol=1e-5)
    assert squared.item() == pytest.approx(exp_sq, rel=1e-5)
    assert l2.item() == pytest.approx(exp_l2, rel=1e-5)


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (6, 3), (2, 3, 7)])
def test_channel_var_mean_matches_torch_and_its_gradient_passes_gradcheck(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, dtype=torch.double, generator=torch.Generator().manual_seed(0)) * 2 + 1
    var, mean = channel_var_mean(x)
    exp_var, exp_mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
    torch.testing.assert_close((var, mean), (exp_var, exp_mean))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: channel_var_mean(t), (x,))
    assert torch.autograd.gradcheck(lambda t: channel_var_mean(t)[0].sum() * 3, (x,))  # one output unused


def test_bn_statistics_hooks_are_removed_and_need_one_forward_pass() -> None:
    net = _bn_net()
    stats = BNStatistics(net)
    with pytest.raises(RuntimeError, match="exactly one forward pass"):
        stats.loss()
    with pytest.raises(ValueError, match="unknown BN loss form"):
        net(torch.randn(2, 2, 5, 5))
        stats.loss("l1")  # type: ignore[arg-type]
    stats.close()
    stats.clear()
    net(torch.randn(2, 2, 5, 5))
    assert stats.means == []
    with pytest.raises(ValueError, match="no BatchNorm"):
        BNStatistics(nn.Linear(2, 2))


@pytest.mark.parametrize(("margin", "scale"), [(28.6, 64.0), (10.0, 30.0), (60.0, 16.0)])
def test_arcface_term_equals_pytorch_metric_learning(margin: float, scale: float) -> None:
    gen = torch.Generator().manual_seed(7)
    d, c, n = 16, 7, 40
    weight = torch.randn(d, c, generator=gen)
    labels = torch.randint(0, c, (n,), generator=gen)
    emb = torch.randn(n, d, generator=gen)
    # Two samples pointing away from their class (angle > pi - margin: PML's monotonic branch).
    emb[:2] = -weight[:, labels[:2]].T * 3
    emb_ours = emb.clone().requires_grad_(True)
    emb_pml = emb.clone().requires_grad_(True)
    pml = ArcFaceLoss(num_classes=c, embedding_size=d, margin=margin, scale=scale)
    pml.W.data.copy_(weight)

    ours = arcface_loss(emb_ours, weight, labels, margin_degrees=margin, scale=scale)
    theirs = pml(emb_pml, labels)
    ours.backward()
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    torch.testing.assert_close(emb_ours.grad, emb_pml.grad, rtol=1e-4, atol=1e-6)


def test_target_probability_is_softmax_of_scaled_cosines_without_margin() -> None:
    weight = torch.eye(3)
    emb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    labels = torch.tensor([0, 2])
    _, cosine = arcface_logits(emb, weight, labels, math.radians(28.6), 2.0)
    torch.testing.assert_close(cosine, torch.tensor([[1.0, 0, 0], [0, 2**-0.5, 2**-0.5]]))
    p = target_probability(cosine, labels, scale=2.0)
    e = math.exp
    assert p.tolist() == pytest.approx([e(2) / (e(2) + 2), e(2**0.5) / (1 + 2 * e(2**0.5))], rel=1e-6)


def test_total_variation_and_l2_on_a_hand_computed_tensor() -> None:
    x = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 7.0]]]])
    # horizontal |diffs|: 1, 2, 0, 5 (sum 8); vertical: 2, 1, 4 (sum 7)
    assert total_variation(x).item() == pytest.approx(15.0)
    assert l2_prior(x).item() == pytest.approx(0 + 1 + 9 + 4 + 4 + 49)
    # per image, averaged over the batch: a second image of zeros halves both
    batch = torch.cat([x, torch.zeros_like(x)])
    assert total_variation(batch).item() == pytest.approx(7.5)
    assert l2_prior(batch).item() == pytest.approx(67 / 2)


def test_jitter_and_flip_draw_from_the_given_generator() -> None:
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = [jitter_and_flip(x, g1, 2, True) for _ in range(6)]
    second = [jitter_and_flip(x, g2, 2, True) for _ in range(6)]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
        # a roll and a flip only permute pixels within each image
        assert torch.equal(a.flatten(1).sort(dim=1).values, x.flatten(1))
    assert torch.equal(jitter_and_flip(x, g1, 0, False), x)
