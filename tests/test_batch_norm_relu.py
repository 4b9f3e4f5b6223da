"""``unimri::batch_norm_relu`` (batch norm + ReLU in one CPU kernel) against its float64
reference and against ``relu(nn.BatchNorm(x))``: hypothesis on random shapes, train and
eval, gradcheck, opcheck, torch.compile(fullgraph=True), running statistics, low precision
and bad input."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from unimri.models.blocks import ConvNormAct
from unimri.nn.plain import with_plain_modules
from unimri.nn.norm_act import fusable, norm_relu
from unimri_kernels.dispatch import available_backends, use_backend
from unimri_kernels.ops.batch_norm_relu import batch_norm_relu
from unimri_kernels.reference.batch_norm_relu import batch_norm_relu_reference

HAS_CPP = "cpp" in available_backends("cpu")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
F64 = torch.float64


def _inputs(shape, train, affine=True, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    # an offset mean, so that the variance is not E[x^2] by accident
    x = (torch.randn(shape, generator=gen, dtype=F64) * 1.5 + 2.0).to(dtype).requires_grad_()
    w = torch.randn(c, generator=gen, dtype=F64).requires_grad_() if affine else None
    b = torch.randn(c, generator=gen, dtype=F64).requires_grad_() if affine else None
    rm = None if train else torch.randn(c, generator=gen, dtype=F64)
    rv = None if train else torch.rand(c, generator=gen, dtype=F64) + 0.5
    return x, w, b, rm, rv


def _compare(shape, train, affine, dtype=F64, tol=1e-10):
    x, w, b, rm, rv = _inputs(shape, train, affine, dtype)
    with use_backend("cpp"):
        out, mean, var = batch_norm_relu(x, w, b, rm, rv, 1e-5)
    xr = x.detach().double().requires_grad_()
    ref, mref, vref = batch_norm_relu_reference(xr, w, b, rm, rv, 1e-5)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    leaves = [t for t in (w, b) if t is not None]
    got = torch.autograd.grad(out, [x, *leaves], go.to(dtype))
    want = torch.autograd.grad(ref, [xr, *leaves], go)
    for name, a, e in [("out", out, ref), ("mean", mean, mref), ("var", var, vref),
                       *zip(["grad_x", "grad_weight", "grad_bias"], got, want)]:
        err = (a.double() - e.double()).abs().max().item()
        assert err <= tol * (e.abs().max().item() + 1.0), f"{name}: error {err} ({shape}, train={train})"


@needs_cpp
@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 5),
       spatial=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       train=st.booleans(), affine=st.booleans())
def test_cpp_matches_reference(batch, channels, spatial, train, affine):
    if train and batch * int(torch.tensor(spatial).prod()) < 2:
        return  # one value per channel: refused in training, as by nn.BatchNorm
    _compare((batch, channels, *spatial), train, affine)


@needs_cpp
@pytest.mark.parametrize("n", [2048, 2049, 4100], ids=["one-block", "block+1", "blocks+tail"])
def test_rows_longer_than_a_block(n):
    _compare((2, 3, n), True, True)
    _compare((2, 3, n), False, True)


@needs_cpp
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2),
                                       (torch.float16, 5e-3)], ids=str)
def test_low_precision_against_float64(dtype, tol):
    _compare((3, 4, 20, 17), True, True, dtype, tol)


@needs_cpp
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gradcheck(train):
    x, w, b, rm, rv = _inputs((2, 3, 4, 5), train)
    with use_backend("cpp"):
        assert torch.autograd.gradcheck(lambda *a: batch_norm_relu(*a, rm, rv, 1e-5)[0], (x, w, b))


@needs_cpp
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_opcheck(train):
    x, w, b, rm, rv = _inputs((2, 3, 4, 5), train)
    with use_backend("cpp"):
        torch.library.opcheck(torch.ops.unimri.batch_norm_relu.default, (x, w, b, rm, rv, 1e-5))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_reference_backend_matches_torch_batch_norm(train):
    """The reference backend (the reference forward and the op's registered backward, through
    the batch statistics in training) against PyTorch's ``relu(batch_norm(x))``, an independent
    implementation, in float64, with a cotangent that is not all ones."""
    x, w, b, rm, rv = _inputs((2, 3, 5, 4), train)
    with use_backend("reference"):
        out = batch_norm_relu(x, w, b, rm, rv, 1e-5)[0]
    want = F.relu(F.batch_norm(x, rm, rv, w, b, training=train, eps=1e-5))
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    for got, expected in zip(torch.autograd.grad(out, (x, w, b), go), torch.autograd.grad(want, (x, w, b), go)):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ the module helper
def _bn_pair(momentum=0.1, dims=2, c=4):
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(c, momentum=momentum)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    return bn, copy.deepcopy(bn)


@needs_cpp
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
@pytest.mark.parametrize("dims", [2, 3])
def test_norm_relu_equals_batch_norm_then_relu(momentum, dims):
    """Outputs, gradients and running statistics over three training steps and in eval."""
    fused, plain = _bn_pair(momentum, dims)
    shape = (3, 4, 6, 5) if dims == 2 else (2, 4, 3, 4, 5)
    for step in range(3):
        x = torch.randn(shape, dtype=torch.float32) * 2 + 1
        xf, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
        assert fusable(xf, fused)
        yf, yp = norm_relu(xf, fused), F.relu(plain(xp))
        torch.testing.assert_close(yf, yp, rtol=1e-5, atol=1e-5)
        go = torch.randn(shape)
        yf.backward(go)
        yp.backward(go)
        torch.testing.assert_close(xf.grad, xp.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fused.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(fused, name), getattr(plain, name))
    fused.eval()
    plain.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(norm_relu(x, fused), F.relu(plain(x)), rtol=1e-5, atol=1e-5)


@needs_cpp
def test_single_value_per_channel_in_training_is_refused():
    fused, _ = _bn_pair()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        norm_relu(torch.randn(1, 4, 1, 1), fused)


def test_other_layouts_and_norms_use_the_modules():
    bn, _ = _bn_pair()
    x = torch.randn(2, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    assert not fusable(x, bn)
    torch.testing.assert_close(norm_relu(x, bn), F.relu(copy.deepcopy(bn)(x)))
    assert not fusable(x.contiguous(), nn.InstanceNorm2d(4))


@needs_cpp
def test_conv_block_uses_it_and_eager_models_do_not():
    block = ConvNormAct(2, 4, 2, "batch")
    x = torch.randn(2, 2, 8, 8)
    plain = with_plain_modules(nn.Sequential(block))[0]
    assert block.fuse_norm_relu and not plain.fuse_norm_relu
    assert list(block.state_dict()) == list(plain.state_dict())  # checkpoints unchanged
    torch.testing.assert_close(block(x), plain(x), rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_no_graph_break():
    from torch._dynamo.testing import CompileCounterWithBackend

    block = ConvNormAct(2, 4, 2, "batch")
    ref = copy.deepcopy(block)
    ref.fuse_norm_relu = False
    x = torch.randn(2, 2, 8, 8)
    counter = CompileCounterWithBackend("inductor")
    torch._dynamo.reset()
    out = torch.compile(block, backend=counter, fullgraph=True)(x)
    out.sum().backward()
    assert counter.frame_count == 1
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block[1].running_mean, ref[1].running_mean)
    assert int(block[1].num_batches_tracked) == int(ref[1].num_batches_tracked) == 1


@pytest.mark.parametrize("args,needle", [
    (dict(weight=torch.ones(3)), "weight must be \\(4,\\)"),
    (dict(running_mean=torch.zeros(4)), "both running_mean and running_var"),
    (dict(eps=0.0), "eps must be > 0"),
])
def test_bad_input_names_the_argument(args, needle):
    kw = dict(weight=None, bias=None, running_mean=None, running_var=None, eps=1e-5) | args
    with pytest.raises(ValueError, match=needle):
        batch_norm_relu(torch.randn(2, 4, 3, 3), **kw)


def test_integer_input_is_refused():
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        batch_norm_relu(torch.ones(2, 4, 3, 3, dtype=torch.int64))
