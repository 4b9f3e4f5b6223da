"""``unimri::max_pool2x`` (2x max pooling in one vectorised CPU kernel) against its reference,
``F.max_pool2d/3d(x, 2)``: hypothesis on random 2D/3D shapes with ties and NaN (outputs and
gradients must be identical: pooling picks, it does not round), every CPU build, low
precision, gradcheck, opcheck, torch.compile(fullgraph=True), the modules the backbones use,
and bad input."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from unimri.models import create_model
from unimri.nn.plain import with_plain_modules
from unimri.nn.pooling import MaxPool2x2d, MaxPool2x3d, fusable_pool
from unimri_kernels.dispatch import available_backends, cpu_variants, use_backend
from unimri_kernels.ops.max_pool import max_pool2x
from unimri_kernels.reference.max_pool import max_pool2x_reference

HAS_CPP = "cpp" in available_backends("cpu")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
F64 = torch.float64


def _input(shape, dtype=F64, seed=0, ties=True, nans=0):
    """Values on a coarse grid (many ties, zeros as after a ReLU) and ``nans`` NaNs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=F64)
    if ties:
        x = torch.round(x * 2).clamp_min(0) / 2
    flat = x.view(-1)
    for i in torch.randint(0, flat.numel(), (nans,), generator=gen).tolist():
        flat[i] = float("nan")
    return x.to(dtype)


def _assert_same(shape, dtype=F64, nans=2, seed=0):
    """Output and gradient of the op (current backend) identical to the reference's."""
    x = _input(shape, dtype, seed, nans=nans).requires_grad_()
    out = max_pool2x(x)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    (gx,) = torch.autograd.grad(out, x, go)
    xr = x.detach().double().requires_grad_()
    ref = max_pool2x_reference(xr)
    (gref,) = torch.autograd.grad(ref, xr, go.double())
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.equal(out.double().isnan(), ref.isnan()), f"NaN positions differ ({shape})"
    assert torch.equal(out.double().nan_to_num(), ref.nan_to_num()), f"output differs ({shape}, {dtype})"
    assert torch.equal(gx.double(), gref), f"gradient differs ({shape}, {dtype})"


@needs_cpp
@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 2), channels=st.integers(1, 3),
       spatial=st.lists(st.integers(2, 11), min_size=2, max_size=3), nans=st.integers(0, 3),
       seed=st.integers(0, 2 ** 16))
def test_cpp_matches_reference(batch, channels, spatial, nans, seed):
    with use_backend("cpp"):
        _assert_same((batch, channels, *spatial), nans=nans, seed=seed)


VARIANTS = cpu_variants() if HAS_CPP else []


# widths around the vector sizes (8 doubles / 16 floats per AVX-512 vector, 4 / 8 for AVX2)
@needs_cpp
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("shape", [(2, 3, 4, 2), (1, 2, 3, 33), (2, 1, 6, 64), (1, 2, 5, 65),
                                   (1, 1, 2, 130), (2, 2, 3, 5, 34), (1, 2, 4, 4, 67)], ids=str)
def test_every_cpu_build_matches_reference(variant, shape):
    _assert_same(shape, nans=3)


@needs_cpp
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 9, 40), (2, 2, 5, 6, 35)], ids=str)
def test_low_precision_is_exact(variant, dtype, shape):
    _assert_same(shape, dtype, nans=2)


@needs_cpp
def test_signed_zero_ties_pick_the_first():
    x = torch.tensor([[[[-0.0, 0.0], [0.0, -0.0]]]], dtype=F64, requires_grad=True)
    with use_backend("cpp"):
        (gx,) = torch.autograd.grad(max_pool2x(x), x, torch.ones(1, 1, 1, 1, dtype=F64))
    assert gx.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


@needs_cpp
@pytest.mark.parametrize("shape", [(2, 2, 5, 6), (1, 2, 4, 3, 5)], ids=str)
def test_gradcheck(shape):
    x = _input(shape, ties=False, seed=3).requires_grad_()
    with use_backend("cpp"):
        assert torch.autograd.gradcheck(max_pool2x, (x,))


@pytest.mark.parametrize("shape", [(2, 3, 6, 7), (1, 2, 4, 4, 5)], ids=str)
def test_opcheck(shape):
    x = _input(shape, F64, ties=False).requires_grad_()
    torch.library.opcheck(torch.ops.unimri.max_pool2x.default, (x,))


@pytest.mark.parametrize("shape,nans", [((2, 3, 7, 10), 1), ((1, 2, 5, 4, 6), 0)], ids=["2d", "3d"])
def test_reference_backend_matches_torch_pooling(shape, nans):
    """The reference backend (the reference forward and the op's registered backward) against
    PyTorch's own max pooling, an independent implementation, in float64: equal bit for bit,
    ties and NaNs included."""
    x = _input(shape, nans=nans, seed=4).requires_grad_()
    xt = x.detach().clone().requires_grad_()
    with use_backend("reference"):
        out = max_pool2x(x)
    want = (F.max_pool2d if len(shape) == 4 else F.max_pool3d)(xt, kernel_size=2, stride=2)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    (gx,), (gt,) = torch.autograd.grad(out, x, go), torch.autograd.grad(want, xt, go)
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(gx, gt, rtol=0, atol=0)


@pytest.mark.parametrize("cls,ref_cls,shape", [(MaxPool2x2d, nn.MaxPool2d, (2, 3, 10, 9)),
                                               (MaxPool2x3d, nn.MaxPool3d, (2, 2, 6, 5, 8))], ids=["2d", "3d"])
def test_modules_equal_torch_pooling(cls, ref_cls, shape):
    pool, ref = cls(), ref_cls(kernel_size=2, stride=2)
    assert pool.extra_repr() == ref.extra_repr() and isinstance(pool, ref_cls) and not pool.state_dict()
    x = _input(shape, torch.float32, nans=1).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out, want = pool(x), ref(xr)
    torch.testing.assert_close(out, want, equal_nan=True, rtol=0, atol=0)
    go = torch.randn(out.shape)
    out.backward(go)
    want.backward(go)
    assert torch.equal(x.grad, xr.grad)


@needs_cpp
def test_what_runs_the_module_forward():
    x = torch.randn(2, 3, 8, 8)
    assert fusable_pool(x, 2) and not fusable_pool(x, 3)
    assert not fusable_pool(x.to(memory_format=torch.channels_last), 2)
    assert not fusable_pool(torch.randn(2, 3, 1, 8), 2)  # too small: nn.MaxPool raises its error
    pool = MaxPool2x2d()
    with pytest.raises(RuntimeError):
        pool(torch.randn(2, 3, 1, 8))
    cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(pool(cl), F.max_pool2d(x, 2), rtol=0, atol=0)
    plain = with_plain_modules(nn.Sequential(pool))[0]
    assert pool.fuse and not plain.fuse


def test_backbones_use_it_where_no_indices_are_needed():
    unet = create_model("unet", spatial_dims=3, features=4)
    assert any(isinstance(m, MaxPool2x3d) for m in unet.modules())
    segnet = create_model("segnet", spatial_dims=2, features=4)  # unpooling needs the indices
    pools = [m for m in segnet.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools and all(p.return_indices and not isinstance(p, MaxPool2x2d) for p in pools)


def assert_compiles_in_one_frame_like(net: nn.Module, ref: nn.Module, x: torch.Tensor) -> None:
    """``torch.compile(net, fullgraph=True)`` traces one frame and matches the module ``ref``
    (float64: outputs and parameter gradients to rounding)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("inductor")
    out = torch.compile(net, backend=counter, fullgraph=True)(x)
    out.square().sum().backward()
    ref(x).square().sum().backward()
    assert counter.frame_count == 1
    torch.testing.assert_close(out, ref(x), rtol=1e-12, atol=1e-12)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)


def test_compile_fullgraph_no_graph_break():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), MaxPool2x2d(), nn.Conv2d(4, 2, 1)).double()
    ref = copy.deepcopy(net)
    ref[1].fuse = False
    assert_compiles_in_one_frame_like(net, ref, torch.randn(2, 2, 10, 12, dtype=F64))


@pytest.mark.parametrize("x,error,needle", [
    (torch.ones(2, 3, 4, 4, dtype=torch.int64), TypeError, "x must be a floating-point tensor"),
    (torch.randn(2, 3, 4), ValueError, "x must be \\(B, C, H, W\\) or \\(B, C, D, H, W\\)"),
    (torch.randn(2, 3, 1, 4), ValueError, "every spatial dim >= 2, got shape \\(2, 3, 1, 4\\)"),
    (torch.randn(0, 3, 4, 4), ValueError, "B, C >= 1"),
])
def test_bad_input_names_the_argument(x, error, needle):
    with pytest.raises(error, match=needle):
        max_pool2x(x)
