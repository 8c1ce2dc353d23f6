"""BoTNet MHSA against its logits written out position by position, and the reference TF gist's counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from attnbench.core.errors import ConfigError
from attnbench.modules import build_module, get_module_entry
from attnbench.modules.mhsa import MultiHeadSelfAttention, rel_to_abs


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _build(cin: int, cout: int | None = None, stride: int = 1, size: tuple[int, int] = (3, 4), **hp) -> MultiHeadSelfAttention:
    """The module as a slot builds it: validated hyperparameters plus the slot's feature_size."""
    resolved = get_module_entry("mhsa").resolve(hp)
    return MultiHeadSelfAttention(cin, out_channels=cout, stride=stride, feature_size=size, **resolved)


def _randomise(module: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)


def _reference(module: MultiHeadSelfAttention, x: torch.Tensor, heads: int, position: str, content: bool,
               stride: int) -> torch.Tensor:
    """softmax over keys (p, q) of q_xy.k_pq + q_xy.r_h[p - x + H - 1] + q_xy.r_w[q - y + W - 1] (q scaled by
    d^-1/2; absolute: q_xy.(e_h[p] + e_w[q])), times v; heads concatenated; stride 2: 2x2 mean, partial windows
    averaged over what they cover (TF 'SAME')."""
    n, _, hh, ww = x.shape
    cout = module.out_channels
    d = cout // heads
    w = module.qkv.weight.flatten(1)
    flat = x.flatten(2)  # (N, Cin, HW)
    q, k, v = (torch.einsum("oc,ncp->nop", w[i * cout:(i + 1) * cout], flat).view(n, heads, d, hh * ww) for i in range(3))
    q = q / d**0.5
    positions = [(a, b) for a in range(hh) for b in range(ww)]
    logits = torch.zeros(n, heads, hh * ww, hh * ww, dtype=x.dtype)
    for i, (px, py) in enumerate(positions):
        for j, (kx, ky) in enumerate(positions):
            qi = q[:, :, :, i]
            if content:
                logits[:, :, i, j] += (qi * k[:, :, :, j]).sum(-1)
            if position == "relative":
                logits[:, :, i, j] += qi @ module.rel_height[kx - px + hh - 1] + qi @ module.rel_width[ky - py + ww - 1]
            elif position == "absolute":
                logits[:, :, i, j] += qi @ (module.abs_height[kx] + module.abs_width[ky])
    weights = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    out = torch.einsum("nhij,nhdj->nhdi", weights, v).reshape(n, cout, hh, ww)
    if stride == 1:
        return out
    rows = [out[:, :, a:a + 2] for a in range(0, hh, 2)]
    return torch.stack([
        torch.stack([r[:, :, :, b:b + 2].mean(dim=(2, 3)) for b in range(0, ww, 2)], dim=-1) for r in rows
    ], dim=-2)


@pytest.mark.parametrize("cin,cout,size,heads,stride,position,content", [
    (6, 8, (3, 4), 2, 1, "relative", True),
    (6, 8, (3, 5), 2, 2, "relative", True),  # odd sides: the last pool windows are partial
    (4, 4, (2, 3), 1, 1, "absolute", True),
    (4, 8, (3, 3), 4, 1, "none", True),
    (4, 4, (3, 2), 2, 1, "relative", False),  # q r^T alone: the gist scales q first, so this term too
])
def test_matches_logits_written_out(cin, cout, size, heads, stride, position, content):
    module = _build(cin, cout, stride, size, heads=heads, encoding=position, content=content).double().eval()
    _randomise(module)
    x = torch.randn(2, cin, *size, dtype=torch.float64)
    expected = _reference(module, x, heads, position, content, stride)
    assert expected.shape == (2, cout, -(-size[0] // stride), -(-size[1] // stride))
    torch.testing.assert_close(module(x), expected)


def test_rel_to_abs_picks_the_offset_of_each_pair():
    length = 4
    rel = torch.arange(2 * 3 * length * (2 * length - 1), dtype=torch.float64).view(2, 3, length, 2 * length - 1)
    out = rel_to_abs(rel)
    assert out.shape == (2, 3, length, length)
    for i in range(length):
        for j in range(length):
            assert torch.equal(out[:, :, i, j], rel[:, :, i, j - i + length - 1])


# The reference gist's MHSA (group_pointwise q/k/v weights [C_in, heads, C_out/heads], relative
# r_width (2W-1, d) and r_height (2H-1, d)) built in TensorFlow 2 graph mode in a scratch script,
# counting its variables; its output on one input, with those weights copied in, matched this
# module's (max |diff| 2e-15 in float64; 1e-7 where Keras' AveragePooling2D ran in float32).
@pytest.mark.parametrize("channels,size,expected", [(512, (14, 14), 793_344), (512, (7, 7), 789_760), (64, (8, 8), 12_768)])
def test_parameter_count_of_the_reference_code(channels, size, expected):
    assert n_params(_build(channels, size=size)) == expected


def test_paper_defaults():
    entry = get_module_entry("mhsa")
    assert entry.kind == "conv"
    assert entry.schema.defaults() == {"heads": 4, "encoding": "relative", "content": True}


def test_reference_code_layout_and_init():
    torch.manual_seed(0)
    module = _build(512, size=(14, 14))
    assert module.qkv.bias is None and module.qkv.out_channels == 3 * 512
    assert module.rel_height.shape == module.rel_width.shape == (27, 128)  # shared by the 4 heads
    assert module.qkv.weight.std().item() == pytest.approx(0.01, rel=0.02)
    # the gist passes d^-1/2 as TF1 random_normal_initializer's mean; its stddev stays at the default 1
    both = torch.cat([module.rel_height, module.rel_width]).detach()
    assert both.mean().item() == pytest.approx(128**-0.5, abs=0.03)
    assert both.std().item() == pytest.approx(1.0, rel=0.05)


def test_position_modes_own_their_embeddings():
    assert _build(8, encoding="none").rel_height is None
    absolute = _build(8, size=(3, 5), encoding="absolute")
    assert absolute.rel_height is None and absolute.abs_height.shape == (3, 2) and absolute.abs_width.shape == (5, 2)
    assert n_params(_build(8, encoding="none")) == 3 * 8 * 8


def test_refuses_another_input_size():
    module = _build(8, size=(4, 4)).eval()
    assert module(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)
    with pytest.raises(ConfigError) as info:
        module(torch.randn(1, 8, 5, 4))
    assert info.value.key == "input_size" and info.value.value == (5, 4) and "4x4" in info.value.allowed


def test_needs_the_feature_size():
    with pytest.raises(ConfigError) as info:
        build_module("mhsa", 8)
    assert info.value.key == "feature_size"


@pytest.mark.parametrize("channels,hp,key", [
    (64, {"heads": 3}, "heads"),
    (64, {"heads": 0}, "heads"),
    (64, {"encoding": "rotary"}, "encoding"),
    (64, {"content": False, "encoding": "none"}, "content"),
])
def test_bad_hyperparameters_name_their_key(channels, hp, key):
    with pytest.raises(ConfigError) as info:
        build_module("mhsa", channels, **hp)
    assert info.value.key == key


def test_heads_must_divide_the_output_channels():
    with pytest.raises(ConfigError) as info:
        _build(8, 6)
    assert info.value.key == "heads"
