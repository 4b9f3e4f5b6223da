"""``unimri::pointwise_conv`` (1x1 convolution for segmentation heads in one CPU kernel) against
its float64 reference: hypothesis on random shapes, every CPU build, low precision, gradcheck,
opcheck, torch.compile(fullgraph=True), the head modules the backbones use (equal to
``nn.Conv2d/3d``, autocast included) and bad input."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from test_max_pool import assert_compiles_in_one_frame_like
from unimri.models import create_model
from unimri.nn.plain import with_plain_modules
from unimri.nn.pointwise import MAX_FUSED_OUT_CHANNELS, PointwiseConv2d, PointwiseConv3d, fusable_pointwise
from unimri_kernels.dispatch import available_backends, cpu_variants, use_backend
from unimri_kernels.ops.pointwise_conv import pointwise_conv
from unimri_kernels.reference.pointwise_conv import pointwise_conv_reference

HAS_CPP = "cpp" in available_backends("cpu")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
VARIANTS = cpu_variants() if HAS_CPP else []
F64 = torch.float64


def _assert_matches(shape, out_channels, bias=True, dtype=F64, tol=1e-12, seed=0):
    """Output and gradients of the op (current backend) against the float64 reference on the
    same (rounded) inputs."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=F64) + 0.5).to(dtype).requires_grad_()
    w = torch.randn(out_channels, shape[1], generator=gen, dtype=F64).requires_grad_()
    b = torch.randn(out_channels, generator=gen, dtype=F64).requires_grad_() if bias else None
    out = pointwise_conv(x, w, b)
    go = torch.randn(out.shape, generator=gen, dtype=F64).to(dtype)
    leaves = [x, w] + ([b] if bias else [])
    got = torch.autograd.grad(out, leaves, go)
    xr = x.detach().double().requires_grad_()
    ref = pointwise_conv_reference(xr, w, b)
    want = torch.autograd.grad(ref, [xr, w] + ([b] if bias else []), go.double())
    assert out.shape == ref.shape and out.dtype == dtype
    for name, a, e in [("out", out, ref), *zip(["grad_x", "grad_weight", "grad_bias"], got, want)]:
        err = (a.double() - e).abs().max().item()
        assert err <= tol * (e.abs().max().item() + 1.0), f"{name}: error {err} ({shape}, {dtype})"


@needs_cpp
@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 20), out_channels=st.integers(1, 5),
       spatial=st.lists(st.integers(1, 9), min_size=1, max_size=3), bias=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_cpp_matches_reference(batch, channels, out_channels, spatial, bias, seed):
    with use_backend("cpp"):
        _assert_matches((batch, channels, *spatial), out_channels, bias, seed=seed)


# pixel counts around the vector sizes and the tile (2048 float64 values of 2 rows)
@needs_cpp
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("shape,out_channels", [((2, 3, 5, 7), 2), ((1, 16, 33), 2),
                                                ((2, 2, 4100), 3), ((1, 40, 3, 4, 6), 4)], ids=str)
def test_every_cpu_build_matches_reference(variant, shape, out_channels):
    _assert_matches(shape, out_channels)


@needs_cpp
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2),
                                       (torch.float16, 2e-3)], ids=str)
# several tiles whose length is not a multiple of a bf16 vector in the tile-length formula
@pytest.mark.parametrize("shape", [(3, 16, 9, 40), (2, 4, 2000), (1, 6, 3001)], ids=str)
def test_low_precision_against_float64(variant, dtype, tol, shape):
    _assert_matches(shape, 2, dtype=dtype, tol=tol)


@needs_cpp
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_gradcheck(bias):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(2, 3, generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(2, generator=gen, dtype=F64, requires_grad=True) if bias else None
    with use_backend("cpp"):
        assert torch.autograd.gradcheck(pointwise_conv, (x, w, b))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_opcheck(bias):
    x = torch.randn(2, 3, 4, 5, dtype=F64, requires_grad=True)
    w = torch.randn(2, 3, dtype=F64, requires_grad=True)
    b = torch.randn(2, dtype=F64, requires_grad=True) if bias else None
    torch.library.opcheck(torch.ops.unimri.pointwise_conv.default, (x, w, b))


@pytest.mark.parametrize("shape,out_channels,bias", [((2, 5, 6, 7), 3, True), ((1, 4, 3, 4, 5), 2, False)],
                         ids=["2d-bias", "3d-no-bias"])
def test_reference_backend_matches_torch_convolution(shape, out_channels, bias):
    """The reference backend (the reference forward and the op's registered backward) against
    PyTorch's 1x1 convolution, an independent implementation, in float64."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(out_channels, shape[1], generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(out_channels, generator=gen, dtype=F64, requires_grad=True) if bias else None
    leaves = [x, w] + ([b] if bias else [])
    with use_backend("reference"):
        out = pointwise_conv(x, w, b)
    conv = F.conv2d if len(shape) == 4 else F.conv3d
    want = conv(x, w.reshape(*w.shape, *(1,) * (len(shape) - 2)), b)
    go = torch.randn(out.shape, generator=gen, dtype=F64)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    for got, expected in zip(torch.autograd.grad(out, leaves, go), torch.autograd.grad(want, leaves, go)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,ref_cls,shape", [(PointwiseConv2d, nn.Conv2d, (2, 16, 12, 9)),
                                               (PointwiseConv3d, nn.Conv3d, (2, 8, 5, 6, 7))], ids=["2d", "3d"])
def test_modules_equal_torch_convolution(cls, ref_cls, shape):
    conv = cls(shape[1], 3)
    ref = ref_cls(shape[1], 3, 1)
    ref.load_state_dict(conv.state_dict())  # same parameters and keys
    assert isinstance(conv, ref_cls) and conv.extra_repr() == ref.extra_repr()
    x = torch.randn(shape, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    out, want = conv(x), ref(xr)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    go = torch.randn(out.shape)
    out.backward(go)
    want.backward(go)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)
    for p, q in zip(conv.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)


@needs_cpp
def test_autocast_output_and_gradients_as_nn_conv():
    conv = PointwiseConv2d(16, 2)
    ref = nn.Conv2d(16, 2, 1)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, want = conv(x), ref(x)
    assert out.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), want.float(), rtol=1e-2, atol=2e-2)
    out.float().sum().backward()
    want.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=2e-2, atol=0.5)
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad, rtol=1e-2, atol=1e-2)


@needs_cpp
def test_what_runs_the_module_forward():
    conv = PointwiseConv2d(4, 2)
    x = torch.randn(2, 4, 8, 8)
    assert fusable_pointwise(conv, x)
    assert not fusable_pointwise(conv, x.to(memory_format=torch.channels_last))
    assert not fusable_pointwise(PointwiseConv2d(4, MAX_FUSED_OUT_CHANNELS + 1), x)
    with pytest.raises(RuntimeError):  # the module's own error for a wrong channel count
        conv(torch.randn(2, 3, 8, 8))
    plain = with_plain_modules(nn.Sequential(conv))[0]
    assert conv.fuse and not plain.fuse
    torch.testing.assert_close(conv(x), plain(x), rtol=1e-5, atol=1e-5)


@needs_cpp
def test_eager_route_equals_the_custom_op():
    """The module's eager route (a small autograd Function) and the custom op (compiled
    graphs) run the same kernels: identical outputs and gradients."""
    conv = PointwiseConv2d(5, 3)
    x = torch.randn(2, 5, 9, 11, requires_grad=True)
    go = torch.randn(2, 3, 9, 11)
    out = conv(x)
    assert type(out.grad_fn).__name__ == "DirectPointwiseConvBackward"
    got = torch.autograd.grad(out, [x, conv.weight, conv.bias], go)
    w2 = conv.weight.reshape(3, 5)
    with use_backend("cpp"):
        want_out = pointwise_conv(x, w2, conv.bias)
    want = torch.autograd.grad(want_out, [x, conv.weight, conv.bias], go)
    assert torch.equal(out, want_out)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["unet", "fcn", "rcnn", "deeplabv3"])
def test_backbone_heads_use_it(name):
    model = create_model(name, spatial_dims=2, features=4)
    assert any(isinstance(m, PointwiseConv2d) for m in model.modules())


def test_compile_fullgraph_no_graph_break():
    net = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), PointwiseConv2d(6, 2)).double()
    ref = copy.deepcopy(net)
    ref[1].fuse = False
    assert_compiles_in_one_frame_like(net, ref, torch.randn(2, 2, 10, 12, dtype=F64))


@pytest.mark.parametrize("args,error,needle", [
    ((torch.ones(2, 3, 4, dtype=torch.int64), torch.ones(2, 3), None), TypeError, "x must be a floating-point"),
    ((torch.randn(2, 3), torch.ones(2, 3), None), ValueError, "x must be a non-empty \\(B, C_in, \\*S\\)"),
    ((torch.randn(2, 3, 4), torch.ones(2, 4), None), ValueError, "weight must be \\(C_out, 3\\)"),
    ((torch.randn(2, 3, 4), torch.ones(2, 3), torch.ones(3)), ValueError, "bias must be \\(2,\\)"),
])
def test_bad_input_names_the_argument(args, error, needle):
    with pytest.raises(error, match=needle):
        pointwise_conv(*args)
