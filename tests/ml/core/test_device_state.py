"""Checkpoint state in canonical form, refitted on load to the resuming attempt's device and layout."""

from __future__ import annotations

import io
from collections import OrderedDict

import torch
from torch import nn

from ml.core.device_state import fit_optimizer_state, fused_adam_supported, portable, to_device


def test_portable_copies_every_tensor_to_a_contiguous_cpu_tensor_in_the_same_containers() -> None:
    live = torch.arange(24.0).reshape(1, 2, 3, 4).contiguous(memory_format=torch.channels_last)
    live.requires_grad_(True)
    state = {"x": live, "nested": [live[0, 0], (3, "s", None)], "od": OrderedDict(a=torch.ones(2))}
    out = portable(state)
    assert out["x"].is_contiguous() and not out["x"].requires_grad
    assert torch.equal(out["x"], live.detach()) and out["x"].data_ptr() != live.data_ptr()
    assert isinstance(out["nested"], list) and isinstance(out["nested"][1], tuple)
    assert out["nested"][1] == (3, "s", None) and type(out["od"]) is OrderedDict
    with torch.no_grad():
        live.add_(1)  # the copy does not follow the live tensor
    assert float(out["x"][0, 0, 0, 0]) == 0.0


def test_portable_module_state_keeps_its_version_metadata() -> None:
    bn = nn.BatchNorm2d(3)
    state = portable(bn.state_dict())
    assert state._metadata == bn.state_dict()._metadata  # type: ignore[attr-defined]
    buf = io.BytesIO()
    torch.save(state, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    nn.BatchNorm2d(3).load_state_dict(loaded)


def test_fit_optimizer_state_gives_the_moments_the_parameters_layout_with_the_same_values() -> None:
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.1, fused=True)
    x.grad = torch.randn_like(x)
    opt.step()
    saved = portable(opt.state_dict())
    assert saved["state"][0]["exp_avg"].is_contiguous()

    fresh = torch.optim.Adam([x], lr=0.1, fused=True)
    fresh.load_state_dict(saved)
    assert fresh.state[x]["exp_avg"].stride() != x.stride()  # what torch's loader leaves: the saved layout
    fit_optimizer_state(fresh)
    for key in ("exp_avg", "exp_avg_sq"):
        moment = fresh.state[x][key]
        assert moment.stride() == x.stride() and moment.dtype == x.dtype
        assert torch.equal(moment, saved["state"][0][key])  # element by element, whatever the layout
    assert torch.equal(fresh.state[x]["step"], saved["state"][0]["step"])


def test_fused_adam_devices_and_a_cpu_copy() -> None:
    assert fused_adam_supported("cpu") and fused_adam_supported(torch.device("cuda", 0))
    assert not fused_adam_supported("meta")
    t = torch.arange(3)
    moved = to_device(t, "cpu")
    assert torch.equal(moved, t)
