"""``unimri::attention_gates`` (several gates on the same (x, g), one CPU kernel) against its
float64 reference: hypothesis on random shapes and gate counts, fixed edge cases, gradcheck,
opcheck, torch.compile(fullgraph=True), low precision (also with bf16/fp16 tile products and
the rule choosing them) and bad input."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require_half_products
from test_attention_gate import CPU_BACKENDS, FIXED, HAS_CPP, Case, cases
from unimri_kernels.dispatch import cpu_variants, use_backend
from unimri_kernels.ops.attention_gates import attention_gates
from unimri_kernels.reference.attention_gates import attention_gates_reference

NAMES = ["y", "alpha", "grad_x", "grad_g", "grad_theta_weight", "grad_phi_weight",
         "grad_phi_bias", "grad_psi_weight", "grad_psi_bias"]


def stacked_inputs(case: Case, gates: int, dtype=torch.float64, seed=0) -> list[torch.Tensor]:
    """x, g and the parameters of ``gates`` gates (each drawn like the single-gate tests'),
    stacked along a leading dimension."""
    per_gate = [case.inputs(dtype, seed=seed + 7 * k) for k in range(gates)]
    x, g = per_gate[0][:2]
    params = [torch.stack([p[i] for p in per_gate]) for i in range(2, 6)]
    psi_bias = torch.cat([p[6] for p in per_gate])
    return [t.clone().requires_grad_(True) for t in (x, g, *params, psi_bias)]


def results(fn, case: Case, gates: int, dtype=torch.float64, cotangents=None):
    """Outputs and input gradients for random cotangents (given, or drawn and returned)."""
    inputs = stacked_inputs(case, gates, dtype)
    y, alpha = fn(*inputs, subsample=case.subsample, focal=case.focal)
    if cotangents is None:
        gen = torch.Generator().manual_seed(1)
        cotangents = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (y, alpha)]
    grads = torch.autograd.grad((y, alpha), inputs, [c.to(y.dtype) for c in cotangents])
    return (y, alpha, *grads), cotangents


def assert_matches_reference(case: Case, gates: int, backend: str, dtype=torch.float64,
                             atol=1e-10, rtol=1e-10):
    with use_backend(backend):
        got, cot = results(attention_gates, case, gates, dtype)
    want, _ = results(attention_gates_reference, case, gates, torch.float64, cot)
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape, f"{name}: shape {a.shape} != {b.shape} ({case}, {gates} gates)"
        assert a.dtype == dtype, f"{name}: dtype {a.dtype} != {dtype}"
        scale = b.abs().max().item() + 1.0
        torch.testing.assert_close(a.double(), b, atol=atol * scale, rtol=rtol,
                                   msg=lambda m: f"{name} ({backend}, {case}, {gates} gates): {m}")
    assert got[0].shape == (gates, case.batch, case.cx, *case.size)
    assert got[1].shape == (case.batch, gates, *case.size)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@settings(max_examples=25)
@given(case=cases(), gates=st.integers(1, 3))
def test_cpp_matches_reference(case, gates):
    assert_matches_reference(case, gates, "cpp")


@settings(max_examples=5)
@given(case=cases(max_2d=9, max_3d=5, max_channels=4), gates=st.integers(1, 3))
def test_reference_backend_matches_reference(case, gates):
    """The per-gate loop of the non-C++ backends (CUDA runs it with the Triton kernels)."""
    assert_matches_reference(case, gates, "reference")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", FIXED, ids=[str(c.size) + "-" + str(c.g_size) for c in FIXED])
def test_fixed_cases_two_gates(case, backend):
    assert_matches_reference(case, 2, backend)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_gates_are_independent_single_gates():
    """Gate k of the stacked op is exactly the single-gate op with gate k's parameters."""
    from unimri_kernels.ops.attention_gate import attention_gate

    case = FIXED[0]
    inputs = stacked_inputs(case, 3, torch.float32)
    y, alpha = attention_gates(*inputs, subsample=case.subsample, focal=case.focal)
    x, g, tw, pw, pb, sw, sb = inputs
    for k in range(3):
        yk, ak = attention_gate(x, g, tw[k], pw[k], pb[k], sw[k], sb[k:k + 1], case.subsample, case.focal)
        torch.testing.assert_close(y[k], yk, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(alpha[:, k:k + 1], ak, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2),
                                       (torch.bfloat16, 6e-2)], ids=str)
def test_low_precision_against_float64(dtype, tol):
    """fp32 accumulation: errors stay within the input rounding (relative to the max), as
    for the single gate."""
    with use_backend("cpp"):
        assert_within_rounding(Case(2, 16, 8, 8, (21, 19), (6, 5), 2, 1.5), dtype, tol)


def assert_within_rounding(case: Case, dtype: torch.dtype, tol: float) -> None:
    """Two gates of ``case`` in ``dtype`` (current backend) against the float64 reference: every
    output and gradient within ``tol`` of the largest reference value."""
    got, cot = results(attention_gates, case, 2, dtype)
    want, _ = results(attention_gates_reference, case, 2, torch.float64, cot)
    for name, a, b in zip(NAMES, got, want):
        assert a.dtype == dtype
        err = (a.double() - b).abs().max().item()
        assert err <= tol * (b.abs().max().item() + 1e-3), f"{name}: max error {err} ({dtype}, {case})"


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("variant", cpu_variants() if HAS_CPP else [], indirect=True)
@pytest.mark.parametrize("tile_products", ["half"], indirect=True)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)], ids=str)
def test_half_tile_products_against_float64(variant, tile_products, dtype, tol):
    """bf16/fp16 tile products (x patches, g, d pre and the weights in their own type, float32
    accumulation), forced on every shape: within the same tolerance of the float64 reference,
    g on its own grid (resampled in the tile) and on the coarse grid (copied)."""
    require_half_products(dtype)
    for case in (Case(2, 16, 8, 8, (21, 19), (6, 5), 2, 1.5), Case(1, 8, 6, 4, (12, 10), (6, 5), 2, 1.0)):
        assert_within_rounding(case, dtype, tol)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("cx,ci", [(16, 8), (32, 16)])
def test_default_tile_products_follow_the_rule(monkeypatch, cx, ci):
    """By default bf16 gates multiply bf16 tiles where the CPU has AMX for bf16 and every inner
    dimension (x patch rows, g channels, the gates' stacked inter channels) is >= 32, else
    float32 tiles; the two differ by bf16 rounding only."""
    require_half_products(torch.bfloat16)
    monkeypatch.delenv("UNIMRI_TILE_GEMM", raising=False)
    paying = torch.ops.unimri.tile_gemm_half_products(torch.bfloat16) == "where_paying"
    case = Case(2, cx, 2 * cx, ci, (16, 14), (8, 7), 2, 1.0)
    runs = {}
    with use_backend("cpp"):
        for mode in ("auto", "half", "fp32"):
            monkeypatch.setenv("UNIMRI_TILE_GEMM", mode)
            runs[mode], cot = results(attention_gates, case, 2, torch.bfloat16, None if not runs else cot)
    expected = "half" if paying and min(4 * cx, 2 * cx, 2 * ci) >= 32 else "fp32"
    for name, a, b in zip(NAMES, runs["auto"], runs[expected]):
        assert torch.equal(a, b), f"{name}: default differs from {expected} tiles"
    assert not all(torch.equal(a, b) for a, b in zip(runs["half"], runs["fp32"])), "half and fp32 tiles agree"
    for name, a, b in zip(NAMES, runs["half"], runs["fp32"]):
        torch.testing.assert_close(a.double(), b.double(), rtol=5e-2, atol=5e-2 * b.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("case", [Case(2, 3, 2, 2, (6, 5), (3, 2), 2, 1.0),
                                  Case(1, 2, 2, 2, (4, 5, 3), (2, 2, 1), 2, 2.0)], ids=["2d", "3d"])
def test_gradcheck_cpp(case):
    inputs = stacked_inputs(case, 2)
    with use_backend("cpp"):
        assert torch.autograd.gradcheck(
            lambda *a: attention_gates(*a, subsample=case.subsample, focal=case.focal), inputs)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("case", [Case(2, 3, 2, 2, (6, 5), (3, 2), 2, 1.0),
                                  Case(1, 2, 2, 2, (4, 5, 3), (2, 2, 1), 2, 2.0)], ids=["2d", "3d"])
def test_direct_route_equals_the_custom_op(case):
    """On the direct route (eager mode, CPU) the C++ kernels run through a small autograd
    Function (less per-call overhead); it must give exactly what the custom op (used when
    compiled) gives."""
    def custom_op(*args, subsample, focal):
        return torch.ops.unimri.attention_gates(*args, subsample, focal)

    with use_backend("cpp"):
        direct, cot = results(attention_gates, case, 2)
        op, _ = results(custom_op, case, 2, cotangents=cot)
        y, _ = attention_gates(*stacked_inputs(case, 2), subsample=case.subsample, focal=case.focal)
    assert type(y.grad_fn).__name__ == "DirectAttentionGatesBackward"
    for name, a, b in zip(NAMES, direct, op):
        assert torch.equal(a, b), f"{name} differs between the direct route and the custom op"


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_opcheck_cpp():
    case = Case(2, 3, 2, 2, (6, 5), (3, 2), 2, 1.0)
    with use_backend("cpp"):
        torch.library.opcheck(torch.ops.unimri.attention_gates.default,
                              (*stacked_inputs(case, 2), case.subsample, case.focal))


def test_compile_fullgraph_no_graph_break():
    from torch._dynamo.testing import CompileCounterWithBackend

    inputs = stacked_inputs(Case(2, 3, 4, 2, (9, 8), (4, 4), 2, 1.0), 2, torch.float32)
    counter = CompileCounterWithBackend("inductor")

    def fn(*args):
        y, alpha = attention_gates(*args, subsample=2, focal=1.0)
        return (y * 2).sum() + alpha.mean()

    torch._dynamo.reset()
    loss = torch.compile(fn, backend=counter, fullgraph=True)(*inputs)
    loss.backward()
    assert counter.frame_count == 1
    want = fn(*[t.detach().requires_grad_(True) for t in inputs])
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)


BAD = [
    ("theta_weight", lambda a: a.__setitem__(2, a[2][0]), r"theta_weight must be \(gates"),
    ("phi_weight", lambda a: a.__setitem__(3, a[3][:1]), "phi_weight must have 3 dimensions"),
    ("phi_bias", lambda a: a.__setitem__(4, a[4][0]), "phi_bias must have 2 dimensions"),
    ("psi_weight", lambda a: a.__setitem__(5, a[5][:, :1]), "psi_weight must be"),
    ("psi_bias", lambda a: a.__setitem__(6, a[6][:1]), "psi_bias must have 1 dimensions"),
    ("g", lambda a: a.__setitem__(1, a[1][:1]), "g's batch size"),
    ("dtype", lambda a: a.__setitem__(3, a[3].float()), "phi_weight has dtype"),
]


@pytest.mark.parametrize("name,mutate,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_argument(name, mutate, needle):
    args = [t.detach() for t in stacked_inputs(FIXED[0], 2)]
    mutate(args)
    with pytest.raises((ValueError, TypeError), match=needle):
        attention_gates(*args, subsample=2, focal=1.0)
