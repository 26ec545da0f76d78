"""`LoopPolicy`'s stepping: precision per device, gradient accumulation, clipping, lr scaling and warmup."""

from __future__ import annotations

import pytest
import torch

from ml.core.loop import LoopPolicy, scaled_lr, warmup_factor


def model_and_data(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 5, generator=gen, dtype=torch.float64))
        model.bias.zero_()
    return (
        model,
        torch.randn(8, 5, generator=gen, dtype=torch.float64),
        torch.randn(8, 3, generator=gen, dtype=torch.float64),
    )


def test_the_cpu_trains_in_full_precision() -> None:
    policy = LoopPolicy.for_device("cpu")
    assert (policy.autocast_dtype, policy.scaler, policy.channels_last) == (None, None, False)
    x = torch.randn(2, 3, 4, 4)
    assert policy.layout(x) is x


def test_two_accumulated_halves_step_as_the_whole_batch() -> None:
    whole, x, y = model_and_data()
    halves, _, _ = model_and_data()
    opt_whole = torch.optim.SGD(whole.parameters(), lr=0.1)
    opt_halves = torch.optim.SGD(halves.parameters(), lr=0.1)
    LoopPolicy().backward(torch.nn.functional.mse_loss(whole(x), y))
    assert LoopPolicy().step([opt_whole], 0)
    policy = LoopPolicy(accumulate=2)
    for micro in range(2):
        part = slice(4 * micro, 4 * micro + 4)
        policy.backward(torch.nn.functional.mse_loss(halves(x[part]), y[part]))
        assert policy.step([opt_halves], micro) == (micro == 1)  # steps only after the second half
    assert torch.allclose(whole.weight, halves.weight, atol=1e-12, rtol=0)
    assert all(p.grad is None for p in halves.parameters())  # zeroed after the step


def test_clipping_bounds_the_global_norm_of_every_optimisers_gradients() -> None:
    model, x, y = model_and_data(1)
    ref, _, _ = model_and_data(1)
    opts = [torch.optim.SGD([model.weight], lr=1.0), torch.optim.SGD([model.bias], lr=1.0)]
    LoopPolicy(clip_grad_norm=0.5).backward(torch.nn.functional.mse_loss(model(x), y) * 100)
    grads = [p.grad.clone() for p in (model.weight, model.bias)]  # type: ignore[union-attr]
    norm = torch.cat([g.flatten() for g in grads]).norm()
    assert norm > 0.5
    LoopPolicy(clip_grad_norm=0.5).step(opts, 0)
    expected = [p - g * 0.5 / norm for p, g in zip((ref.weight, ref.bias), grads, strict=True)]
    assert torch.allclose(model.weight, expected[0], atol=1e-6) and torch.allclose(model.bias, expected[1], atol=1e-6)


def test_linear_lr_scaling_and_warmup() -> None:
    assert scaled_lr(0.1, 512, 256) == pytest.approx(0.2) and scaled_lr(0.1, 512, None) == 0.1
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


@pytest.mark.gpu
def test_cuda_autocasts_in_bf16_or_fp16_with_a_scaler_and_uses_channels_last() -> None:
    policy = LoopPolicy.for_device("cuda")
    if torch.cuda.is_bf16_supported():
        assert policy.autocast_dtype == torch.bfloat16 and policy.scaler is None
    else:
        assert policy.autocast_dtype == torch.float16 and policy.scaler is not None
    assert policy.channels_last
    model = torch.nn.Conv2d(3, 4, 3).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = policy.layout(torch.randn(2, 3, 8, 8, device="cuda"))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with policy.autocast():
        out = model(x)
    assert out.dtype == policy.autocast_dtype
    before = model.weight.detach().clone()
    policy.backward(out.float().square().mean())
    assert policy.step([opt], 0) and not torch.equal(before, model.weight)
    assert LoopPolicy.for_device("cuda", mixed_precision=False).autocast_dtype is None
