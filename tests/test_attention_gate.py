"""Tests of the fused attention gate op ``unimri::attention_gate`` against its float64
reference, on every backend present (C++, Triton under TRITON_INTERPRET=1, CUDA)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import requires_cuda
from unimri_kernels.dispatch import available_backends, use_backend
from unimri_kernels.ops.attention_gate import GateParams, GateShape, attention_gate, gate
from unimri_kernels.reference.attention_gate import attention_gate_reference

CPU_BACKENDS = [b for b in available_backends("cpu") if b != "reference"]
HAS_CPP = "cpp" in CPU_BACKENDS
HAS_TRITON_CPU = "triton" in CPU_BACKENDS


@dataclass(frozen=True)
class Case(GateShape):
    """One attention-gate problem: x (B, cx, *size), g (B, cg, *g_size), and the focal exponent."""

    focal: float

    def inputs(self, dtype=torch.float64, device="cpu", seed=0) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        d = len(self.size)

        def rnd(*shape, scale=1.0):
            return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)

        return [rnd(self.batch, self.cx, *self.size), rnd(self.batch, self.cg, *self.g_size),
                rnd(self.ci, self.cx, *(self.subsample,) * d, scale=0.5), rnd(self.ci, self.cg, scale=0.5),
                rnd(self.ci, scale=0.5), rnd(self.ci), rnd(1, scale=0.5)]

    def params(self, weights: list[torch.Tensor]) -> GateParams:
        """The gate's parameters: the five weights of :meth:`inputs` with subsample and focal."""
        return GateParams(*weights, self.subsample, self.focal)


@st.composite
def cases(draw, max_2d: int = 13, max_3d: int = 6, max_channels: int = 5) -> Case:
    d = draw(st.sampled_from([2, 3]))
    s = draw(st.sampled_from([1, 2]))
    hi = max_2d if d == 2 else max_3d
    size = tuple(draw(st.integers(s, hi)) for _ in range(d))
    coarse = tuple(n // s for n in size)
    grid = draw(st.sampled_from(["coarse", "coarser", "fine", "other"]))
    if grid == "coarse":
        g_size = coarse
    elif grid == "coarser":
        g_size = tuple(max(1, (n + 1) // 2) for n in coarse)
    elif grid == "fine":
        g_size = size
    else:
        g_size = tuple(draw(st.integers(1, hi)) for _ in range(d))
    return Case(batch=draw(st.integers(1, 2)), cx=draw(st.integers(1, max_channels)),
                cg=draw(st.integers(1, max_channels)), ci=draw(st.integers(1, max_channels + 1)),
                size=size, g_size=g_size, subsample=s, focal=draw(st.sampled_from([1.0, 0.5, 2.0])))


def run_op(case: Case, backend: str, dtype=torch.float64, device="cpu", seed=0):
    """Outputs and input gradients of the op for random cotangents (grad_output != 1)."""
    inputs = [t.requires_grad_(True) for t in case.inputs(dtype, device, seed)]
    with use_backend(backend):
        y, alpha = gate(inputs[0], inputs[1], case.params(inputs[2:]))
        gen = torch.Generator().manual_seed(seed + 1)
        gy = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
        ga = torch.randn(alpha.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
        grads = torch.autograd.grad((y, alpha), inputs, (gy, ga))
    return (y, alpha), grads, (gy, ga)


def reference_results(case: Case, cotangents, device="cpu", seed=0):
    inputs = [t.requires_grad_(True) for t in case.inputs(torch.float64, device, seed)]
    y, alpha = attention_gate_reference(*inputs, subsample=case.subsample, focal=case.focal)
    gy, ga = (c.to(torch.float64) for c in cotangents)
    return (y, alpha), torch.autograd.grad((y, alpha), inputs, (gy, ga))


NAMES = ["y", "alpha", "grad_x", "grad_g", "grad_theta_weight", "grad_phi_weight",
         "grad_phi_bias", "grad_psi_weight", "grad_psi_bias"]


def assert_matches_reference(case: Case, backend: str, dtype=torch.float64, device="cpu",
                             atol=1e-10, rtol=1e-10):
    outs, grads, cot = run_op(case, backend, dtype, device)
    ref_outs, ref_grads = reference_results(case, cot, device)
    for name, got, want in zip(NAMES, (*outs, *grads), (*ref_outs, *ref_grads)):
        assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape} ({case})"
        assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
        scale = want.abs().max().item() + 1.0
        torch.testing.assert_close(got.double(), want, atol=atol * scale, rtol=rtol,
                                   msg=lambda m: f"{name} ({backend}, {case}): {m}")
    alpha = outs[1]
    assert alpha.shape == (case.batch, 1, *case.size)
    assert alpha.min() >= 0 and alpha.max() <= 1


# ------------------------------------------------------------------ float64 vs reference
@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@settings(max_examples=25)
@given(case=cases())
def test_cpp_matches_reference(case):
    assert_matches_reference(case, "cpp")


@pytest.mark.skipif(not HAS_TRITON_CPU, reason="needs triton with TRITON_INTERPRET=1")
@settings(max_examples=12)
@given(case=cases(max_2d=9, max_3d=5, max_channels=4))
def test_triton_interpreted_matches_reference(case):
    assert_matches_reference(case, "triton")


@settings(max_examples=8)
@given(case=cases(max_2d=9, max_3d=5, max_channels=4))
def test_reference_backend_backward_matches_autograd(case):
    assert_matches_reference(case, "reference")


FIXED = [
    Case(2, 3, 5, 4, (33, 47), (16, 23), 2, 1.0),     # x not a multiple of s, g on theta's grid
    Case(1, 4, 6, 3, (33, 47), (9, 12), 2, 2.0),      # g coarser than theta's grid
    Case(2, 2, 3, 5, (7, 9, 11), (3, 4, 5), 2, 1.0),  # 3D, odd sizes
    Case(1, 3, 2, 2, (5, 6, 7), (5, 6, 7), 1, 0.7),   # 3D, s = 1, same grid
    Case(2, 3, 3, 4, (12, 10), (12, 10), 2, 1.0),     # self-gating grid (g finer than theta)
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", FIXED, ids=[str(c.size) + "-" + str(c.g_size) for c in FIXED])
def test_fixed_cases(case, backend):
    if backend == "triton" and len(case.size) == 2 and case.size[0] > 20:
        case = Case(case.batch, case.cx, case.cg, case.ci, (13, 15),
                    tuple(max(1, n * 13 // 33) for n in case.g_size), case.subsample, case.focal)
    assert_matches_reference(case, backend)


# ------------------------------------------------------------------ low precision
LOW = [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 6e-2)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,tol", LOW, ids=[str(d) for d, _ in LOW])
def test_low_precision_against_float64(backend, dtype, tol):
    """fp32 accumulation: errors stay within the input rounding (relative to the max)."""
    case = Case(2, 6, 5, 4, (11, 13), (3, 4), 2, 1.5) if backend == "triton" else \
        Case(2, 16, 8, 8, (21, 19), (6, 5), 2, 1.5)
    outs, grads, cot = run_op(case, backend, dtype)
    ref_outs, ref_grads = reference_results(case, cot)
    for name, got, want in zip(NAMES, (*outs, *grads), (*ref_outs, *ref_grads)):
        assert got.dtype == dtype
        err = (got.double() - want).abs().max().item()
        assert err <= tol * (want.abs().max().item() + 1e-3), f"{name}: max error {err} ({dtype})"


# ------------------------------------------------------------------ gradcheck / opcheck
def _gradcheck(case: Case, backend: str, device="cpu", fast_mode=False):
    inputs = [t.requires_grad_(True) for t in case.inputs(torch.float64, device)]

    def fn(*args):
        with use_backend(backend):
            return attention_gate(*args, subsample=case.subsample, focal=case.focal)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=fast_mode)


GRADCHECK = [Case(1, 2, 3, 3, (5, 7), (2, 3), 2, 1.7), Case(1, 2, 2, 2, (4, 3, 5), (3, 2, 2), 2, 1.0),
             Case(1, 2, 3, 2, (4, 5), (4, 5), 1, 1.0)]


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("case", GRADCHECK, ids=["2d", "3d", "2d-s1"])
def test_gradcheck_cpp(case):
    _gradcheck(case, "cpp")


@pytest.mark.skipif(not HAS_TRITON_CPU, reason="needs triton with TRITON_INTERPRET=1")
@pytest.mark.parametrize("case", GRADCHECK[:2], ids=["2d", "3d"])
def test_gradcheck_triton_interpreted(case):
    _gradcheck(case, "triton", fast_mode=True)


@pytest.mark.skipif(not HAS_CPP, reason="C++ extension not built")
def test_opcheck_cpp():
    case = GRADCHECK[0]
    inputs = [t.requires_grad_(True) for t in case.inputs()]
    with use_backend("cpp"):
        torch.library.opcheck(torch.ops.unimri.attention_gate.default,
                              (*inputs, case.subsample, case.focal))


@pytest.mark.skipif(not HAS_TRITON_CPU, reason="needs triton with TRITON_INTERPRET=1")
def test_opcheck_triton_interpreted():
    case = Case(1, 2, 2, 2, (5, 4), (2, 2), 2, 1.0)
    inputs = [t.requires_grad_(True) for t in case.inputs()]
    with use_backend("triton"):
        torch.library.opcheck(torch.ops.unimri.attention_gate.default,
                              (*inputs, case.subsample, case.focal),
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor"))


def test_compile_fullgraph_no_graph_break():
    from torch._dynamo.testing import CompileCounterWithBackend

    case = Case(2, 3, 4, 2, (9, 8), (4, 4), 2, 1.0)
    inputs = [t.requires_grad_(True) for t in case.inputs(torch.float32)]
    counter = CompileCounterWithBackend("inductor")

    def fn(*args):
        y, alpha = attention_gate(*args, subsample=2, focal=1.0)
        return (y * 2).sum() + alpha.mean()

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    loss = compiled(*inputs)
    loss.backward()
    assert counter.frame_count == 1
    want = fn(*[t.detach().requires_grad_(True) for t in inputs])
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ memory
def test_backward_saves_only_the_inputs():
    case = Case(2, 8, 6, 4, (16, 16), (8, 8), 2, 1.0)
    inputs = [t.requires_grad_(True) for t in case.inputs(torch.float32)]
    saved: list[torch.Tensor] = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        attention_gate(*inputs, subsample=2, focal=1.0)
    input_ptrs = {t.untyped_storage().data_ptr() for t in inputs}
    assert saved, "nothing saved for backward"
    assert all(t.untyped_storage().data_ptr() in input_ptrs for t in saved)
    assert sum(t.untyped_storage().nbytes() for t in saved) <= sum(
        t.untyped_storage().nbytes() for t in inputs)


# ------------------------------------------------------------------ bad input
def _good():
    return Case(2, 3, 4, 5, (8, 8), (4, 4), 2, 1.0).inputs(torch.float32)


BAD = [
    ("x channels", lambda a: [a[0][:, :2]] + a[1:], "theta_weight"),
    ("g channels", lambda a: [a[0], a[1][:, :3]] + a[2:], "phi_weight"),
    ("batch", lambda a: [a[0], a[1][:1]] + a[2:], "batch"),
    ("2d/3d mix", lambda a: [a[0], a[1].unsqueeze(2)] + a[2:], "g must have x's rank"),
    ("rank of x", lambda a: [a[0][0]] + a[1:], "x must be"),
    ("phi_bias", lambda a: a[:4] + [a[4][:2]] + a[5:], "phi_bias"),
    ("psi_weight", lambda a: a[:5] + [a[5][:1]] + a[6:], "psi_weight"),
    ("psi_bias", lambda a: a[:6] + [torch.zeros(2)], "psi_bias"),
    ("dtype", lambda a: [a[0], a[1].double()] + a[2:], "dtype"),
]


@pytest.mark.parametrize("name,mutate,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_argument(name, mutate, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        attention_gate(*mutate(_good()), subsample=2)


@pytest.mark.parametrize("kw,needle", [(dict(subsample=0), "subsample"), (dict(focal=-1.0), "focal"),
                                       (dict(subsample=4), "subsample")])
def test_bad_scalar_arguments(kw, needle):
    args = _good()
    if kw.get("subsample") == 4:  # weights for s=4 but x (8, 8) -> fine, so use a tiny x
        args[0] = args[0][..., :3, :3]
    with pytest.raises(ValueError, match=needle):
        attention_gate(*args, **{"subsample": 2, **kw})


# ------------------------------------------------------------------ CUDA
@requires_cuda
@pytest.mark.parametrize("case", FIXED, ids=[str(c.size) + "-" + str(c.g_size) for c in FIXED])
def test_cuda_matches_reference(case):
    assert_matches_reference(case, "triton", device="cuda")


@requires_cuda
@settings(max_examples=30)
@given(case=cases(max_2d=40, max_3d=12, max_channels=40))
def test_cuda_property(case):
    assert_matches_reference(case, "triton", device="cuda")


@requires_cuda
@pytest.mark.parametrize("case", GRADCHECK, ids=["2d", "3d", "2d-s1"])
def test_gradcheck_cuda(case):
    _gradcheck(case, "triton", device="cuda")


@requires_cuda
@pytest.mark.parametrize("dtype,tol", LOW, ids=[str(d) for d, _ in LOW])
def test_cuda_low_precision(dtype, tol):
    case = Case(2, 64, 128, 32, (64, 48), (32, 24), 2, 1.0)
    outs, grads, cot = run_op(case, "triton", dtype, "cuda")
    ref_outs, ref_grads = reference_results(case, cot, "cuda")
    for name, got, want in zip(NAMES, (*outs, *grads), (*ref_outs, *ref_grads)):
        err = (got.double() - want).abs().max().item()
        assert err <= tol * (want.abs().max().item() + 1e-3), f"{name}: max error {err} ({dtype})"


@requires_cuda
def test_cuda_compile_fullgraph():
    case = Case(2, 8, 16, 4, (32, 32), (16, 16), 2, 1.0)
    inputs = [t.requires_grad_(True) for t in case.inputs(torch.float32, "cuda")]
    compiled = torch.compile(lambda *a: attention_gate(*a, subsample=2), fullgraph=True)
    y, alpha = compiled(*inputs)
    (y.sum() + alpha.sum()).backward()
    want_y, want_a = attention_gate_reference(*[t.detach() for t in inputs], subsample=2)
    torch.testing.assert_close(y, want_y, rtol=1e-4, atol=1e-4)

