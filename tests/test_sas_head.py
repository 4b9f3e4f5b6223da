"""``unimri::sas_head`` (the folded selective-attention head read from x and the gates' attention
maps, never forming ``alpha_k * x`` on CPU) and ``unimri::attention_gates_alpha`` (the gates'
attention maps alone) against their float64 references: hypothesis on random shapes, every CPU
build, the BLAS and ATen tile products, bf16/fp16 tile products and the rule choosing them,
low precision, gradcheck, opcheck, the reference
backend, the direct route, torch.compile(fullgraph=True) of SelectiveAttention and bad input."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require_half_products
from unimri.nn import AttentionGate, SelectiveAttention
from unimri_kernels.dispatch import available_backends, cpp_ops, cpu_variants, use_backend
from unimri_kernels.ops.attention_gates import attention_gates, attention_gates_alpha
from unimri_kernels.ops.sas_head import _sas_head_backward_op, _sas_head_op, sas_head
from unimri_kernels.reference.sas_head import sas_head_reference

HAS_CPP = "cpp" in available_backends("cpu")
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
VARIANTS = cpu_variants() if HAS_CPP else []
F64 = torch.float64
NAMES = ["out", "grad_x", "grad_alpha", "grad_w", "grad_gamma", "grad_beta", "grad_merge"]


def _inputs(shape, gates, out_channels, dtype=F64, seed=0, requires_grad=True):
    """x (B, C, *S) >= 0 (post-ReLU features), alpha in (0, 1), parameters in float64."""
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=gen, dtype=F64).relu().add(0.1).to(dtype)
    alpha = torch.rand((shape[0], gates, *shape[2:]), generator=gen, dtype=F64).to(dtype)
    w = torch.randn(gates, c, c, generator=gen, dtype=F64)
    gamma = torch.rand(gates, c, generator=gen, dtype=F64).add(0.5)
    beta = torch.randn(gates, c, generator=gen, dtype=F64)
    merge = torch.randn(out_channels, gates, c, generator=gen, dtype=F64)
    ins = [x, alpha, w, gamma, beta, merge]
    return [t.requires_grad_(requires_grad) for t in ins]


def _assert_matches(shape, gates, out_channels, dtype=F64, tol=1e-9, seed=0):
    """Output, batch statistics and the six gradients of the op (current backend) against the
    float64 reference on the same (rounded) inputs, relative to each tensor's largest value."""
    ins = _inputs(shape, gates, out_channels, dtype, seed)
    out, mean, var = sas_head(*ins)
    gen = torch.Generator().manual_seed(seed + 1)
    go = torch.randn(out.shape, generator=gen, dtype=F64).to(dtype)
    got = torch.autograd.grad(out, ins, go)
    ref_ins = [t.detach().double().requires_grad_() for t in ins]
    ref, ref_mean, ref_var = sas_head_reference(*ref_ins)
    want = torch.autograd.grad(ref, ref_ins, go.double())
    assert out.shape == ref.shape and out.dtype == dtype
    pairs = [(out, ref), *zip(got, want)]
    for name, (a, e) in zip(NAMES, pairs):
        err = (a.double() - e).abs().max().item()
        assert err <= tol * (e.abs().max().item() + 1e-3), f"{name}: error {err} ({shape}, {dtype})"
    for a, e in ((mean, ref_mean), (var, ref_var)):
        assert (a.double() - e).abs().max().item() <= tol * (e.abs().max().item() + 1.0)


@needs_cpp
@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 9), gates=st.integers(1, 3),
       out_channels=st.integers(1, 6), spatial=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       seed=st.integers(0, 2 ** 16))
def test_cpp_matches_reference(batch, channels, gates, out_channels, spatial, seed):
    if batch * int(torch.tensor(spatial).prod()) < 2:
        spatial = [*spatial[:-1], spatial[-1] + 1]  # batch statistics need 2 values per channel
    with use_backend("cpp"):
        _assert_matches((batch, channels, *spatial), gates, out_channels, seed=seed)


# pixel counts around the vector widths and the tiles (hundreds to thousands of pixels)
SHAPES = [(2, 5, 1, 31), (1, 3, 33, 1), (2, 7, 45, 46), (3, 16, 70, 61)]


@needs_cpp
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_cpu_build_matches_reference(variant, shape):
    _assert_matches(shape, 2, shape[1])


@needs_cpp
@pytest.mark.parametrize("shape", SHAPES[2:])
def test_aten_tile_products_match_blas(monkeypatch, shape):
    """Where the BLAS symbols are absent the tile products fall back to at::mm; forced with
    UNIMRI_TILE_GEMM=aten, the results agree with the BLAS route to rounding."""
    ins = _inputs(shape, 2, 4, torch.float32, requires_grad=False)
    ops = cpp_ops()
    x, alpha = ins[0], ins[1]
    mat, bias = torch.randn(2, 4, shape[1], dtype=F64), torch.randn(4, dtype=F64)
    grad_p = torch.randn(shape[0], 4, *shape[2:])
    mats = (torch.randn(2, shape[1], 4, dtype=F64), torch.randn(2, shape[1], shape[1], dtype=F64),
            torch.randn(2, shape[1], dtype=F64))

    def run():
        return (*ops.sas_head_moments_cpu(x, alpha), ops.sas_head_apply_cpu(x, alpha, mat, bias),
                *ops.sas_head_weight_grad_cpu(grad_p, x, alpha),
                *ops.sas_head_input_grad_cpu(grad_p, x, alpha, *mats))

    blas = run()
    monkeypatch.setenv("UNIMRI_TILE_GEMM", "aten")
    assert not torch.ops.unimri.tile_gemm_uses_blas()
    for a, b in zip(run(), blas):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@needs_cpp
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-4), (torch.bfloat16, 6e-2), (torch.float16, 1e-2)])
def test_low_precision_against_float64(variant, dtype, tol):
    _assert_matches((2, 6, 23, 19), 2, 6, dtype=dtype, tol=tol)


@needs_cpp
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("tile_products", ["half"], indirect=True)
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 6e-2), (torch.float16, 1e-2)])
def test_half_tile_products_against_float64(variant, tile_products, dtype, tol):
    """bf16/fp16 tiles multiplied in their own type (MKL's mixed-precision GEMM, float32
    accumulation) on every pass and shape: within the same tolerance of the float64 reference
    as the float32 tile products, also over several tiles per sample."""
    require_half_products(dtype)
    _assert_matches((2, 6, 23, 19), 2, 6, dtype=dtype, tol=tol)
    _assert_matches((2, 40, 70, 61), 2, 40, dtype=dtype, tol=tol)


def _head_passes(x, alpha, out_channels):
    """Every C++ pass of the head on fixed random matrices: moments, output, weight and input
    gradients."""
    gen = torch.Generator().manual_seed(5)
    c, k = x.shape[1], alpha.shape[1]
    mat = torch.randn(k, out_channels, c, generator=gen, dtype=F64)
    bias = torch.randn(out_channels, generator=gen, dtype=F64)
    grad_p = torch.randn(x.shape[0], out_channels, *x.shape[2:], generator=gen).to(x.dtype)
    mats = (torch.randn(k, c, out_channels, generator=gen, dtype=F64),
            torch.randn(k, c, c, generator=gen, dtype=F64) / c, torch.randn(k, c, generator=gen, dtype=F64))
    ops = cpp_ops()
    return {"moments": ops.sas_head_moments_cpu(x, alpha), "apply": (ops.sas_head_apply_cpu(x, alpha, mat, bias),),
            "weight_grad": ops.sas_head_weight_grad_cpu(grad_p, x, alpha),
            "input_grad": ops.sas_head_input_grad_cpu(grad_p, x, alpha, *mats)}


@needs_cpp
@pytest.mark.parametrize("channels", [16, 32])
def test_default_tile_products_follow_the_rule(monkeypatch, channels):
    """By default a bf16 pass multiplies bf16 tiles exactly where the rule says (AMX for bf16 on
    this CPU, and every inner dimension of its products >= 32: the pixels for moments and
    weight gradients, K * C for the output, C and C_out for the input gradients), else float32
    tiles; the two differ by bf16 rounding only."""
    require_half_products(torch.bfloat16)
    monkeypatch.delenv("UNIMRI_TILE_GEMM", raising=False)
    paying = torch.ops.unimri.tile_gemm_half_products(torch.bfloat16) == "where_paying"
    ins = _inputs((2, channels, 12, 10), 2, channels, torch.bfloat16, requires_grad=False)
    x, alpha = ins[0].detach(), ins[1].detach()
    inner = {"moments": 120, "apply": 2 * channels, "weight_grad": 120, "input_grad": channels}
    runs = {}
    for mode in ("auto", "half", "fp32"):
        monkeypatch.setenv("UNIMRI_TILE_GEMM", mode)
        runs[mode] = _head_passes(x, alpha, channels)
    for name, got in runs["auto"].items():
        expected = "half" if paying and inner[name] >= 32 else "fp32"
        for a, b in zip(got, runs[expected][name]):
            assert torch.equal(a, b), f"{name}: default differs from {expected} tiles"
        assert not all(torch.equal(a, b) for a, b in zip(runs["half"][name], runs["fp32"][name])), \
            f"{name}: half and fp32 tiles gave identical results"
        for a, b in zip(runs["half"][name], runs["fp32"][name]):
            torch.testing.assert_close(a.double(), b.double(), rtol=3e-2, atol=3e-2 * b.abs().max().item())


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_gradcheck_and_opcheck(backend):
    if backend == "cpp" and not HAS_CPP:
        pytest.skip("C++ extension not built")
    ins = _inputs((2, 3, 4, 5), 2, 4)
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda *a: sas_head(*a)[0], ins)
        assert torch.autograd.gradcheck(lambda *a: _sas_head_op(*a, 1e-5)[0], ins)
        torch.library.opcheck(_sas_head_op, (*ins, 1e-5))
        out, _, _, m, gram = _sas_head_op(*ins, 1e-5)
        torch.library.opcheck(_sas_head_backward_op,
                              (torch.randn_like(out), *[t.detach() for t in ins], m, gram, 1e-5))


def test_reference_backend_matches_reference():
    with use_backend("reference"):
        _assert_matches((2, 4, 6, 5), 3, 2)


@needs_cpp
def test_direct_route_equals_the_custom_op():
    """The direct route (a small autograd Function) and the custom op (compiled graphs) run the
    same code: identical outputs and gradients."""
    ins = _inputs((2, 5, 9, 11), 2, 5, torch.float32)
    go = torch.randn(2, 5, 9, 11)
    with use_backend("cpp"):
        out = sas_head(*ins)[0]
        assert type(out.grad_fn).__name__ == "DirectSasHeadBackward"
        got = torch.autograd.grad(out, ins, go)
        want_out = _sas_head_op(*ins, 1e-5)[0]
        want = torch.autograd.grad(want_out, ins, go)
    assert torch.equal(out, want_out)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_alpha_only_gates_equal_the_gates_op(backend):
    """``attention_gates_alpha`` gives the alpha of ``attention_gates`` and, for a gradient
    through alpha alone, the same gradients of every input."""
    if backend == "cpp" and not HAS_CPP:
        pytest.skip("C++ extension not built")
    torch.manual_seed(3)
    gates, cx, cg, ci = 2, 4, 6, 3
    x = torch.randn(2, cx, 9, 10, dtype=F64).relu().requires_grad_()   # odd edges: 9 = 2 * 4 + 1
    g = torch.randn(2, cg, 4, 5, dtype=F64, requires_grad=True)
    params = [torch.randn(gates, ci, cx, 2, 2, dtype=F64), torch.randn(gates, ci, cg, dtype=F64),
              torch.randn(gates, ci, dtype=F64), torch.randn(gates, ci, dtype=F64),
              torch.randn(gates, dtype=F64)]
    params = [p.requires_grad_() for p in params]
    with use_backend(backend):
        alpha = attention_gates_alpha(x, g, *params)
        _, want_alpha = attention_gates(x, g, *params)
        ga = torch.randn_like(alpha)
        got = torch.autograd.grad(alpha, [x, g, *params], ga)
        want = torch.autograd.grad(want_alpha, [x, g, *params], ga)
        assert torch.autograd.gradcheck(lambda *a: attention_gates_alpha(*a), (x, g, *params))
        torch.library.opcheck(torch.ops.unimri.attention_gates_alpha, (x, g, *params, 2, 1.0))
    torch.testing.assert_close(alpha, want_alpha, rtol=0, atol=0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_cpp
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("size,g_size", [((9, 10), (4, 5)), ((12, 10), (6, 5)), ((5, 6, 7), (2, 3, 3))],
                         ids=["2d-odd-edges", "2d-g-on-coarse-grid", "3d"])
def test_gates_backward_from_saved_forward_equals_recomputed(monkeypatch, dtype, size, g_size):
    """The direct route keeps what the gates' forward computed (tiles' h, coarse attention)
    instead of letting the backward recompute it: identical alpha and gradients, bit for bit
    (also with bf16 tiles multiplied in bf16); saved tensors of other inputs are refused."""
    if dtype == torch.bfloat16:
        require_half_products(dtype)
        monkeypatch.setenv("UNIMRI_TILE_GEMM", "half")
    torch.manual_seed(4)
    gates, cx, cg, ci = 2, 5, 6, 3
    d = len(size)
    x = torch.randn(2, cx, *size, dtype=F64).relu().to(dtype)
    g = torch.randn(2, cg, *g_size, dtype=F64).to(dtype)
    params = [t.to(dtype) for t in (torch.randn(gates, ci, cx, *(2,) * d, dtype=F64), torch.randn(gates, ci, cg, dtype=F64),
                                     torch.randn(gates, ci, dtype=F64), torch.randn(gates, ci, dtype=F64),
                                     torch.randn(gates, dtype=F64))]
    ga, gx_in = torch.randn(2, gates, *size).to(dtype), torch.randn_like(x)
    ops = cpp_ops()
    alpha, saved_h, saved_coarse = ops.attention_gates_alpha_saving_cpu(x, g, *params, 2, 1.5)
    assert torch.equal(alpha, ops.attention_gates_alpha_cpu(x, g, *params, 2, 1.5))
    want = ops.attention_gates_alpha_backward_cpu(ga, x, g, *params, 2, 1.5, gx_in)
    got = ops.attention_gates_alpha_backward_cpu(ga, x, g, *params, 2, 1.5, gx_in, saved_h, saved_coarse)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    _, other_h, other_coarse = ops.attention_gates_alpha_saving_cpu(x[:1].contiguous(), g[:1].contiguous(), *params,
                                                                    2, 1.5)
    with pytest.raises(RuntimeError, match="saved_h / saved_coarse do not match"):
        ops.attention_gates_alpha_backward_cpu(ga, x, g, *params, 2, 1.5, None, other_h, other_coarse)
    with pytest.raises(RuntimeError, match="go together"):
        ops.attention_gates_alpha_backward_cpu(ga, x, g, *params, 2, 1.5, None, saved_h, None)


def _backward_nodes(out: torch.Tensor) -> set[str]:
    names, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and type(fn).__name__ not in names:
            names.add(type(fn).__name__)
            stack += [f for f, _ in fn.next_functions]
    return names


@needs_cpp
@pytest.mark.parametrize("module_cls", [SelectiveAttention, AttentionGate])
def test_training_modules_take_the_gates_and_head_route(module_cls):
    """In training, the folded modules run the alpha-only gates and this op as one node (no
    gated block); in evaluation they keep the gated inputs of the gates' op."""
    module = module_cls(4, 6)
    x, g = torch.randn(2, 4, 8, 8).relu().requires_grad_(), torch.randn(2, 6, 4, 4)
    names = _backward_nodes(module(x, g)[0])
    assert "DirectGatesAndHeadBackward" in names and "DirectAttentionGatesBackward" not in names
    module.eval()
    assert "DirectGatesAndHeadBackward" not in _backward_nodes(module(x, g)[0])


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gates_and_head_node_equals_the_two_ops(dtype):
    """The one-node direct route (the head's share of grad x added inside the gate kernel) gives
    what the two custom ops give: alpha exactly, outputs and every gradient to rounding (the
    merge's norm is F.batch_norm here, the fused batch norm + ReLU in the module)."""
    torch.manual_seed(5)
    sas = SelectiveAttention(5, 7, num_gates=3).to(dtype)
    x = torch.randn(2, 5, 11, 10, dtype=dtype).relu().requires_grad_()   # odd edge rows
    g = torch.randn(2, 7, 5, 5, dtype=dtype, requires_grad=True)
    go = torch.randn(2, 5, 11, 10, dtype=dtype)
    leaves = [x, g, *sas.parameters()]
    out, alpha = sas(x, g)
    got = torch.autograd.grad((out * go).sum() + alpha.square().sum(), leaves)
    params = sas.params
    w = torch.stack([gate.out_conv.weight.reshape(5, 5) for gate in sas.gates])
    gamma = torch.stack([gate.out_norm.weight for gate in sas.gates])
    beta = torch.stack([gate.out_norm.bias for gate in sas.gates])
    merge = sas.merge[0].weight.reshape(5, 3, 5)
    want_alpha = torch.ops.unimri.attention_gates_alpha(x, g, *params)
    merged = _sas_head_op(x, want_alpha, w, gamma, beta, merge, 1e-5)[0]
    want_out = torch.relu(torch.nn.functional.batch_norm(
        merged, None, None, sas.merge[1].weight, sas.merge[1].bias, True, 0.0, 1e-5))
    want = torch.autograd.grad((want_out * go).sum() + want_alpha.square().sum(), leaves)
    assert torch.equal(alpha, want_alpha)
    torch.testing.assert_close(out, want_out, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5 if dtype == torch.float32 else 1e-10,
                                   atol=1e-5 if dtype == torch.float32 else 1e-10)


def test_compile_fullgraph_no_graph_break():
    """torch.compile of a SelectiveAttention in training (both custom ops) in one frame, equal to
    the per-gate modules: output, parameter gradients, running statistics."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch.manual_seed(0)
    sas = SelectiveAttention(4, 6).double()
    ref = copy.deepcopy(sas)
    ref.fold = False
    x, g = torch.randn(2, 4, 8, 10, dtype=F64).relu(), torch.randn(2, 6, 4, 5, dtype=F64)
    counter = CompileCounterWithBackend("inductor")
    out = torch.compile(lambda a, b: sas(a, b)[0], backend=counter, fullgraph=True)(x, g)
    want = ref(x, g)[0]
    out.square().sum().backward()
    want.square().sum().backward()
    assert counter.frame_count == 1
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    for p, q in zip(sas.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10)
    for a, b in zip(sas.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _bad(**change):
    ins = dict(zip(["x", "alpha", "w", "gamma", "beta", "merge"],
                   _inputs((2, 3, 4, 5), 2, 4, requires_grad=False)))
    ins.update(change)
    return list(ins.values())


@pytest.mark.parametrize("args,error,needle", [
    (_bad(x=torch.ones(2, 3, 4, 5, dtype=torch.int64)), TypeError, "x must be a floating-point"),
    (_bad(x=torch.randn(2, 3)), ValueError, "x must be a non-empty \\(B, C, \\*S\\)"),
    (_bad(alpha=torch.rand(2, 2, 4, 6, dtype=F64)), ValueError, "alpha must be \\(B, K, \\*S\\)"),
    (_bad(alpha=torch.rand(2, 2, 4, 5)), TypeError, "alpha must have x's dtype"),
    (_bad(w=torch.randn(2, 3, 4, dtype=F64)), ValueError, "w must be \\(2, 3, 3\\)"),
    (_bad(gamma=torch.rand(3, 3, dtype=F64)), ValueError, "gamma must be \\(2, 3\\)"),
    (_bad(merge=torch.randn(4, 3, 3, dtype=F64)), ValueError, "merge must be \\(C_out, 2, 3\\)"),
])
def test_bad_input_names_the_argument(args, error, needle):
    with pytest.raises(error, match=needle):
        sas_head(*args)
