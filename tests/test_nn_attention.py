"""Tests of the attention modules of ``unimri.nn`` (SAS gate and the baselines)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import requires_cuda
from unimri.nn import (ATTENTION_KINDS, CBAM, AttentionGate, ChannelAttention,
                       SelectiveAttention, SpatialAttention, create_attention, create_norm)
from unimri_kernels.reference.attention_gate import attention_gate_reference

DIMS = [2, 3]


def _x(d: int, channels: int = 8, batch: int = 2) -> torch.Tensor:
    size = (9, 13) if d == 2 else (5, 7, 6)
    return torch.randn(batch, channels, *size)


def _modules(d: int, c: int = 8, cg: int = 6):
    return {
        "gate": AttentionGate(c, cg, spatial_dims=d),
        "sas": SelectiveAttention(c, cg, spatial_dims=d),
        "spatial": SpatialAttention(c, spatial_dims=d),
        "channel": ChannelAttention(c, spatial_dims=d, reduction=4),
        "cbam": CBAM(c, spatial_dims=d, reduction=4),
    }


@pytest.mark.parametrize("d", DIMS)
def test_shapes_and_ranges(d):
    x = _x(d)
    g = torch.randn(2, 6, *[max(1, n // 2) for n in x.shape[2:]])
    for name, m in _modules(d).items():
        out, attn = m(x, g)
        assert out.shape == x.shape, name
        assert attn.min() >= 0 and attn.max() <= 1, name
        if name in ("gate", "spatial", "cbam"):
            assert attn.shape == (2, 1, *x.shape[2:]), name
        elif name == "sas":
            assert attn.shape == (2, 2, *x.shape[2:])
        else:
            assert attn.shape == (2, 8) + (1,) * d


@pytest.mark.parametrize("d", DIMS)
def test_attention_gate_equals_reference_then_conv_norm(d):
    torch.manual_seed(1)
    m = AttentionGate(8, 6, inter_channels=3, spatial_dims=d, subsample=2, focal=1.5).eval()
    x = _x(d)
    g = torch.randn(2, 6, *[n // 2 for n in x.shape[2:]])
    out, alpha = m(x, g)
    y_ref, a_ref = attention_gate_reference(x, g, m.theta_weight, m.phi_weight, m.phi_bias,
                                            m.psi_weight, m.psi_bias, 2, 1.5)
    torch.testing.assert_close(alpha, a_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, m.out_norm(m.out_conv(y_ref)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", DIMS)
def test_self_gating_and_missing_gate(d):
    x = _x(d)
    out, alpha = AttentionGate(8, spatial_dims=d)(x)
    assert out.shape == x.shape and alpha.shape == (2, 1, *x.shape[2:])
    with pytest.raises(ValueError, match="gating_channels"):
        AttentionGate(8, 6, spatial_dims=d)(x)


def test_gradients_reach_every_parameter():
    m = SelectiveAttention(4, 3, spatial_dims=2, num_gates=3)
    x = torch.randn(2, 4, 10, 11, requires_grad=True)
    g = torch.randn(2, 3, 5, 5, requires_grad=True)
    out, alphas = m(x, g)
    (out.square().mean() + alphas.mean()).backward()
    assert alphas.shape == (2, 3, 10, 11)
    assert x.grad is not None and g.grad is not None
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_channel_attention_is_squeeze_excitation():
    torch.manual_seed(0)
    m = ChannelAttention(8, spatial_dims=2, reduction=2)
    x = torch.randn(3, 8, 5, 6)
    w1, b1 = m.mlp[0].weight.flatten(1), m.mlp[0].bias
    w2, b2 = m.mlp[2].weight.flatten(1), m.mlp[2].bias
    s = torch.sigmoid(F.linear(F.relu(F.linear(x.mean((2, 3)), w1, b1)), w2, b2))
    out, attn = m(x)
    torch.testing.assert_close(attn.flatten(1), s)
    torch.testing.assert_close(out, x * s[:, :, None, None])


def test_spatial_attention_formula():
    m = SpatialAttention(5, spatial_dims=3, kernel_size=3)
    x = torch.randn(2, 5, 4, 6, 5)
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    want = torch.sigmoid(F.conv3d(pooled, m.conv.weight, m.conv.bias, padding=1))
    out, attn = m(x)
    torch.testing.assert_close(attn, want)
    torch.testing.assert_close(out, x * want)


def test_cbam_is_channel_then_spatial():
    m = CBAM(8, spatial_dims=2, reduction=4, kernel_size=5)
    x = torch.randn(2, 8, 7, 9)
    xc, _ = m.channel(x)
    want, want_map = m.spatial(xc)
    out, attn = m(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(attn, want_map)
    assert m.channel.pools == ("avg", "max")


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("name", ["gate", "sas", "spatial", "channel", "cbam"])
def test_compile_fullgraph_every_module(d, name):
    """Dynamo traces every module (forward and backward) as one graph: zero graph breaks."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    m = _modules(d)[name]
    x = _x(d).requires_grad_(True)
    g = torch.randn(2, 6, *[max(1, n // 2) for n in x.shape[2:]])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(m, backend=counter, fullgraph=True)
    out, attn = compiled(x, g)
    (out.sum() + attn.sum()).backward()
    assert counter.frame_count == 1
    want, want_attn = m(x, g)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_compile_inductor_selective_attention():
    torch._dynamo.reset()
    m = SelectiveAttention(6, 4, spatial_dims=2)
    x = torch.randn(2, 6, 12, 10, requires_grad=True)
    g = torch.randn(2, 4, 6, 5)
    out, attn = torch.compile(m, fullgraph=True)(x, g)
    out.mean().backward()
    torch.testing.assert_close(out, m(x, g)[0], rtol=1e-4, atol=1e-4)


def test_create_attention():
    assert create_attention(None, 8) is None
    assert create_attention("none", 8) is None
    assert set(ATTENTION_KINDS) == {"sas", "spatial", "channel", "cbam"}
    types = {"sas": SelectiveAttention, "spatial": SpatialAttention, "channel": ChannelAttention,
             "cbam": CBAM, "gate": AttentionGate}
    for kind, cls in types.items():
        m = create_attention(kind, 8, 4, spatial_dims=3, norm="instance")
        assert isinstance(m, cls), kind
        x = torch.randn(1, 8, 4, 6, 4)
        g = torch.randn(1, 4, 2, 3, 2)
        out, _ = m(x, g)
        assert out.shape == x.shape
    assert create_attention("sas", 8, focal=2.0, num_gates=3).num_gates == 3
    with pytest.raises(ValueError, match="kind"):
        create_attention("transformer", 8)


@pytest.mark.parametrize("norm,cls", [("batch", torch.nn.BatchNorm3d),
                                      ("instance", torch.nn.InstanceNorm3d),
                                      ("group", torch.nn.GroupNorm), (None, torch.nn.Identity)])
def test_norms(norm, cls):
    assert isinstance(create_norm(norm, 12, 3), cls)
    assert create_norm("group", 12, 2).num_groups == 4
    with pytest.raises(ValueError, match="norm"):
        create_norm("layer", 12)


@pytest.mark.parametrize("make,x,needle", [
    (lambda: AttentionGate(8, 6), torch.randn(2, 7, 8, 8), "x must have 8 channels"),
    (lambda: AttentionGate(8, 6), torch.randn(2, 8, 8, 8, 8), r"x must be \(B, C, H, W\)"),
    (lambda: AttentionGate(8, 6, spatial_dims=3), torch.randn(2, 8, 8, 8), r"x must be \(B, C, D, H, W\)"),
    (lambda: SpatialAttention(4), torch.randn(2, 4, 8), "x must be"),
    (lambda: ChannelAttention(4, spatial_dims=3), torch.randn(2, 5, 4, 4, 4), "4 channels"),
])
def test_bad_module_input(make, x, needle):
    with pytest.raises(ValueError, match=needle):
        make()(x, torch.randn(2, 6, 4, 4) if isinstance(make(), AttentionGate) else None)


def test_bad_gating_inputs():
    m = AttentionGate(8, 6)
    x = torch.randn(2, 8, 8, 8)
    with pytest.raises(ValueError, match="g must have 6 channels"):
        m(x, torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="batch"):
        m(x, torch.randn(3, 6, 4, 4))
    with pytest.raises(ValueError, match="g must be"):
        m(x, torch.randn(2, 6, 4, 4, 4))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(in_channels=0), "in_channels"), (dict(in_channels=4, spatial_dims=1), "spatial_dims"),
    (dict(in_channels=4, subsample=0), "subsample"), (dict(in_channels=4, focal=0.0), "focal"),
    (dict(in_channels=4, norm="layer"), "norm"), (dict(in_channels=4, inter_channels=0), "inter_channels"),
])
def test_bad_constructor_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        AttentionGate(**kwargs)


def test_baseline_constructor_errors():
    with pytest.raises(ValueError, match="kernel_size"):
        SpatialAttention(4, kernel_size=4)
    with pytest.raises(ValueError, match="reduction"):
        ChannelAttention(4, reduction=0)
    with pytest.raises(ValueError, match="num_gates"):
        SelectiveAttention(4, num_gates=0)


@requires_cuda
@pytest.mark.parametrize("d", DIMS)
def test_modules_on_cuda(d):
    for name, m in _modules(d).items():
        m = m.cuda()
        x = _x(d).cuda().requires_grad_(True)
        g = torch.randn(2, 6, *[max(1, n // 2) for n in x.shape[2:]], device="cuda")
        out, attn = m(x, g)
        out.sum().backward()
        assert out.shape == x.shape and torch.isfinite(x.grad).all(), name
