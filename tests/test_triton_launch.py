"""The Triton launchers as a GPU sees them, checked without a GPU.

* grids of huge shapes (meta tensors, nothing allocated, launches recorded) stay within
  CUDA's limits and cover the problem; int64 offsets are switched on where needed;
* every ``tl.dot`` tile edge is >= 16 (a GPU rejects smaller ones; the interpreter not);
* the shipped CUDA block sizes and warps run in the interpreter against float64;
* the int64 offset code paths run in the interpreter against float64;
* out-of-range labels raise ``ValueError`` on the Triton path as on CPU;
* no float atomics in the gate and bitwise-identical reruns in every mode;
* dot operands: half for half inputs, TF32 for fp32 only when allowed.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import requires_cuda
from unimri_kernels.dispatch import available_backends, use_backend

pytest.importorskip("triton")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from unimri_kernels.triton import attention_gate as gate_mod  # noqa: E402
from unimri_kernels.triton import gate_config  # noqa: E402
from unimri_kernels.triton import unified_focal_loss as loss_mod  # noqa: E402
from unimri_kernels.compile_check import (GateProblem, LossProblem,  # noqa: E402
                                          launches_of)
from unimri_kernels.triton.launch import (CUDA_MAX_GRID, MIN_DOT, Target,  # noqa: E402
                                          check_grid, dot_operands, gpu_configs)

INTERPRETED = "triton" in available_backends("cpu")
needs_interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs TRITON_INTERPRET=1")
OP_LOSS = torch.ops.unimri.unified_focal_loss
IGNORE = -100


def _in_limits(grid) -> bool:
    return all(1 <= n <= hi for n, hi in zip(grid, CUDA_MAX_GRID)) and len(grid) <= 3


def _const(launch, name):
    return launch.kwargs[name]


def _arg(launch, name):
    return launch.args[launch.fn.arg_names.index(name)]


# ------------------------------------------------------------------ grids on huge shapes
@pytest.mark.parametrize("batch,classes,spatial", [
    (2, 2, (512, 512, 256)),   # 2**26 pixels per sample: axis 1 would need 65,536+ blocks
    (1, 16, (256, 256, 256)),  # C·N = 2**28 and B·C·N on int64
    (1, 16, (512, 512, 512)),  # C·N = 2**31: offsets inside a sample need int64
    (70000, 2, (8, 8)),        # more samples than axis 1 or 2 could hold
])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loss_grid_fits_cuda_and_covers_every_pixel(batch, classes, spatial, dtype):
    n = _prod(spatial)
    launches = launches_of(LossProblem(batch, classes, spatial, dtype))
    assert [ln.name for ln in launches] == ["_ufl_stats_kernel", "_ufl_finish_kernel",
                                            "_ufl_grad_kernel"]
    finish = launches.pop(1)
    assert finish.grid == (batch,)
    assert _arg(finish, "ROWS") == _arg(launches[0], "NUM_BLOCKS")
    for ln in launches:
        assert _in_limits(ln.grid), (ln.name, ln.grid)
        block_n, num_blocks = _const(ln, "BLOCK_N"), _arg(ln, "NUM_BLOCKS")
        assert num_blocks * block_n >= n and (num_blocks - 1) * block_n < n
        assert ln.grid == (batch * num_blocks,)
        assert _const(ln, "BLOCK_C") >= classes
        assert _const(ln, "IDX64") == (classes * n >= 2**31)


@pytest.mark.parametrize("problem", [
    GateProblem(1, 128, 64, 32, (256, 256, 256), (64, 64, 64), 2, "bfloat16"),  # Cx·N = 2**31
    GateProblem(2, 16, 32, 64, (512, 512, 256), (128, 128, 64), 2, "float16"),
    GateProblem(70000, 4, 8, 16, (16, 16), (8, 8), 2, "float32"),  # batch beyond axis 1
    GateProblem(1, 1, 1, 1, (8192, 8192), (4096, 4096), 2, "float32"),
])
def test_gate_grids_fit_cuda_and_cover_every_pixel(problem):
    launches = launches_of(problem)
    d = len(problem.size)
    n, ng = _prod(problem.size), _prod(problem.g_size)
    coarse = tuple(v // problem.subsample for v in problem.size)
    nc = _prod(coarse)
    big = max(problem.cx * n, problem.cg * ng, problem.cg * nc, n) >= 2**31
    for ln in launches:
        assert _in_limits(ln.grid), (ln.name, ln.grid)
        assert _const(ln, "IDX64") == big, ln.name
        if ln.name == "_coarse_kernel":
            assert ln.grid[0] * _const(ln, "BLOCK_P") >= problem.batch * nc
        if ln.name == "_grad_x_kernel":
            tiles, cblocks = _arg(ln, "TILES"), _arg(ln, "CBLOCKS")
            assert tiles * _const(ln, "BLOCK_P") >= nc and cblocks * _const(ln, "BLOCK_CX") >= problem.cx
            assert ln.grid == (problem.batch * tiles * cblocks,)
        if ln.name in ("_scale_kernel", "_dalpha_kernel"):
            tiles, block = _arg(ln, "TILES"), _const(ln, "BLOCK")
            assert tiles * block >= n and (tiles - 1) * block < n
            if ln.name == "_dalpha_kernel":  # loops over the channels
                assert ln.grid == (problem.batch * tiles,)
            else:
                cblocks = _arg(ln, "CBLOCKS")
                assert ln.grid == (problem.batch * tiles * cblocks,)
                assert cblocks * _const(ln, "BLOCK_C") >= problem.cx
    off_grid = (coarse != problem.size) + (coarse != problem.g_size)
    assert d in (2, 3)
    assert [ln.name for ln in launches].count("_adjoint_kernel") == off_grid


def _prod(sizes) -> int:
    out = 1
    for s in sizes:
        out *= s
    return out


def test_check_grid_names_the_kernel_and_the_limit():
    assert check_grid((5, 7), "k") == (5, 7)
    with pytest.raises(ValueError, match=r"k: .*axis 1.*65535"):
        check_grid((1, 70000), "k")
    with pytest.raises(ValueError, match=r"axis 0"):
        check_grid((2**31,), "k")


# ------------------------------------------------------------------ dot tiles >= 16
@settings(max_examples=40)
@given(ci=st.integers(1, 300), cx=st.integers(1, 40), cg=st.integers(1, 300),
       three=st.booleans(), s=st.sampled_from([1, 2, 3]), dtype=st.sampled_from(
           ["float32", "float16", "bfloat16", "float64"]), det=st.booleans())
def test_gate_dot_tiles_are_at_least_16(ci, cx, cg, three, s, dtype, det):
    size = (5, 9, 7) if three else (9, 13)
    prob = GateProblem(2, cx, cg, ci, size, tuple(max(1, v // 3) for v in size), s, dtype)
    for ln in launches_of(prob, deterministic=det):
        if ln.name in ("_coarse_kernel", "_tile_backward_kernel", "_grad_x_kernel"):
            edges = ("CI_PAD", "BLOCK_CX" if ln.name == "_grad_x_kernel" else "BLOCK_K", "BLOCK_P")
            for name in edges:
                assert _const(ln, name) >= MIN_DOT, (name, ln.kwargs)
            assert _const(ln, "CI_PAD") >= ci


def test_dot_operands_follow_dtype_and_tf32():
    gpu = Target(gpu=True, interpreted=False, allow_tf32=False)
    tf32 = Target(gpu=True, interpreted=False, allow_tf32=True)
    interp = Target(gpu=False, interpreted=True, allow_tf32=True)
    import triton.language as tl

    assert dot_operands(torch.bfloat16, gpu) == (tl.bfloat16, "ieee")
    assert dot_operands(torch.float16, tf32) == (tl.float16, "ieee")
    assert dot_operands(torch.float32, gpu) == (tl.float32, "ieee")
    assert dot_operands(torch.float32, tf32) == (tl.float32, "tf32")
    assert dot_operands(torch.float64, tf32) == (tl.float64, "ieee")
    assert dot_operands(torch.float32, interp) == (tl.float32, "ieee")  # no TF32 there
    assert dot_operands(torch.bfloat16, interp) == (tl.float32, "ieee")  # bf16 dot broken


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_launchers_pass_tf32_setting_and_half_operands(allow_tf32):
    import triton.language as tl

    for dtype, dot in (("float32", tl.float32), ("bfloat16", tl.bfloat16),
                       ("float16", tl.float16)):
        prob = GateProblem(1, 4, 8, 16, (12, 10), (6, 5), 2, dtype)
        for ln in launches_of(prob, allow_tf32=allow_tf32):
            if ln.name in ("_coarse_kernel", "_tile_backward_kernel"):
                assert _const(ln, "DOT") == dot
                want = "tf32" if allow_tf32 and dtype == "float32" else "ieee"
                assert _const(ln, "PREC") == want
                assert ln.args[2].dtype == getattr(torch, dtype)  # theta weights as operands


# ------------------------------------------------------------------ shipped configs, numerically
def _loss_reference(logits, target, params, batch):
    z = logits.detach().double().requires_grad_()
    t = target.double() if target.dtype.is_floating_point else target
    from unimri_kernels.reference.unified_focal_loss import unified_focal_loss_reference

    loss = unified_focal_loss_reference(z, t, params, 0.4, 0.6, 1e-6, IGNORE, batch)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), grad


LOSS_TOL = {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 2e-6),
            torch.bfloat16: (1e-2, 2e-3)}


@needs_interpreter
@pytest.mark.parametrize("classes,n", [(2, 3000), (5, 700), (16, 300)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("soft", [False, True])
def test_loss_cuda_configuration_in_interpreter(classes, n, dtype, soft):
    gen = torch.Generator().manual_seed(classes * n)
    logits = (torch.randn(2, classes, n, generator=gen, dtype=torch.float64) * 4).to(dtype)
    if soft:
        target = torch.softmax(torch.randn(2, classes, n, generator=gen, dtype=torch.float64) * 3,
                               1).to(dtype)
    else:
        target = torch.randint(0, classes, (2, n), generator=gen)
        target[:, ::7] = IGNORE
    params = torch.rand(4, classes, generator=gen, dtype=torch.float64)
    with gpu_configs():
        cfg = loss_mod.ufl_stats_config(2, classes, n, dtype, loss_mod.target_for(logits.device))
        assert cfg.block_n >= 32 and cfg.num_blocks > 1  # a GPU tiling, several blocks
        with use_backend("triton"):
            loss, grad = OP_LOSS(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, False)
    ref_loss, ref_grad = _loss_reference(logits, target, params, False)
    rtol, atol = LOSS_TOL[dtype]
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol * 5, atol=atol * 5)


def _gate_case(ci, cx, cg, size, g_size, s=2, focal=1.0):
    from test_attention_gate import Case

    return Case(2, cx, cg, ci, size, g_size, s, focal)


GATE_CASES = [((4, 3, 5, (13, 15), (5, 6)), torch.float64),
              ((40, 5, 3, (9, 7, 5), (4, 3, 2)), torch.float64),   # CI_PAD 64, 3D
              ((6, 2, 4, (12, 10), (12, 10), 2, 2.0), torch.float32),  # g finer than theta
              ((20, 6, 5, (11, 13), (3, 4), 2, 1.5), torch.bfloat16)]


@needs_interpreter
@pytest.mark.parametrize("args,dtype", GATE_CASES, ids=[f"{a[0]}-{d}" for a, d in GATE_CASES])
def test_gate_cuda_configuration_in_interpreter(args, dtype):
    from test_attention_gate import assert_matches_reference, run_op, reference_results, NAMES

    case = _gate_case(*args)
    with gpu_configs():
        if dtype == torch.float64:
            assert_matches_reference(case, "triton")
            return
        outs, grads, cot = run_op(case, "triton", dtype)
    ref_outs, ref_grads = reference_results(case, cot)
    tol = 1e-5 if dtype == torch.float32 else 6e-2
    for name, got, want in zip(NAMES, (*outs, *grads), (*ref_outs, *ref_grads)):
        err = (got.double() - want).abs().max().item()
        assert err <= tol * (want.abs().max().item() + 1e-3), f"{name}: {err} ({dtype})"


# ------------------------------------------------------------------ int64 offset paths
@needs_interpreter
def test_loss_int64_offset_path_matches_reference(monkeypatch):
    monkeypatch.setattr(loss_mod, "needs_int64", lambda *extents: True)
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 77, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 77), generator=gen)
    params = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    with use_backend("triton"):
        loss, grad = OP_LOSS(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, True, True, False)
    ref_loss, ref_grad = _loss_reference(logits, target, params, True)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-12)


@needs_interpreter
def test_gate_int64_offset_path_matches_reference(monkeypatch):
    from test_attention_gate import assert_matches_reference

    monkeypatch.setattr(gate_config, "needs_int64", lambda *extents: True)
    case = _gate_case(3, 2, 3, (7, 9, 6), (3, 5, 2))
    assert gate_mod.GateShape(1, 1, 1, 1, 2, 2, 4, 4, 4, 2, 2, 2).idx64
    assert_matches_reference(case, "triton")


# ------------------------------------------------------------------ label contract
@needs_interpreter
@pytest.mark.parametrize("bad", [3, 7, -1, -101])
def test_triton_rejects_out_of_range_labels(bad):
    logits = torch.randn(2, 3, 50)
    target = torch.randint(0, 3, (2, 50))
    target[1, 17] = bad
    target[0, 3] = IGNORE  # ignored pixels stay legal
    params = torch.rand(4, 3, dtype=torch.float64)
    with use_backend("triton"), pytest.raises(ValueError, match=r"target holds 1 label\(s\) "
                                              r"outside \[0, 3\).*ignore_index=-100"):
        OP_LOSS(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, False)


@needs_interpreter
def test_triton_accepts_ignore_index_anywhere():
    logits = torch.randn(1, 3, 40)
    target = torch.full((1, 40), IGNORE)
    target[0, :5] = 2
    params = torch.rand(4, 3, dtype=torch.float64)
    with use_backend("triton"):
        loss, _ = OP_LOSS(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, False)
    ref, _ = _loss_reference(logits, target, params, False)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-5, atol=2e-6)


@needs_interpreter
@pytest.mark.parametrize("batch", [False, True])
def test_bad_labels_poison_their_loss_row_and_gradient(monkeypatch, batch):
    """What a captured CUDA graph sees (no host report): NaN in the affected rows only."""
    monkeypatch.setattr(loss_mod, "report_bad_labels", lambda *a: None)
    logits = torch.randn(3, 4, 70)
    target = torch.randint(0, 4, (3, 70))
    target[1, 5] = 9
    params = torch.rand(4, 4, dtype=torch.float64)
    with use_backend("triton"):
        loss, grad = OP_LOSS(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, batch, True, False)
    kept = (target < 4).unsqueeze(1).expand_as(grad)  # the bad pixel itself gets 0
    if batch:
        assert loss.shape == (1,) and torch.isnan(loss).all() and torch.isnan(grad[kept]).all()
    else:
        assert torch.isnan(loss[1]) and torch.isnan(grad[1][kept[1]]).all()
        keep = [0, 2]
        ref, _ = _loss_reference(logits[keep], target[keep], params, False)
        torch.testing.assert_close(loss[keep].double(), ref, rtol=2e-5, atol=2e-6)
        assert torch.isfinite(grad[keep]).all()


def test_pending_label_reports_raise_once_finished():
    from unimri_kernels.triton import labels

    class Done:
        def query(self):
            return True

        def synchronize(self):
            pass

    labels._pending.append((Done(), torch.tensor([0.0, 2.0]), 5, -1))
    with pytest.raises(ValueError, match=r"target holds 2 label\(s\) outside \[0, 5\) .*=-1"):
        labels.raise_pending()
    assert not labels._pending
    labels.raise_pending()  # nothing left to report


# ------------------------------------------------------------------ determinism
class _AtomicCounter:
    def __init__(self, monkeypatch):
        import triton.runtime.interpreter as interp

        self.calls = 0
        original = interp.InterpreterBuilder.create_atomic_rmw

        def counting(builder, *args, **kwargs):
            self.calls += 1
            return original(builder, *args, **kwargs)

        monkeypatch.setattr(interp.InterpreterBuilder, "create_atomic_rmw", counting)


@triton.jit
def _one_atomic_kernel(ptr):
    tl.atomic_add(ptr, 1.0)


@needs_interpreter
@pytest.mark.parametrize("args", [(4, 3, 5, (9, 7), (3, 2)), (3, 2, 3, (5, 6, 4), (3, 2, 2)),
                                  (5, 2, 4, (6, 8), (6, 8), 2, 2.0)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_gate_uses_no_atomics_and_repeats_bitwise(monkeypatch, args, deterministic):
    from test_attention_gate import run_op

    case = _gate_case(*args)
    counter = _AtomicCounter(monkeypatch)
    _one_atomic_kernel[(1,)](torch.zeros(1))
    assert counter.calls == 1  # the counter sees atomics
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        counter.calls = 0
        first = run_op(case, "triton", torch.float32)
        second = run_op(case, "triton", torch.float32)
    finally:
        torch.use_deterministic_algorithms(old)
    assert counter.calls == 0
    for a, b in zip((*first[0], *first[1]), (*second[0], *second[1])):
        assert torch.equal(a, b)


@needs_interpreter
def test_deterministic_loss_repeats_bitwise(monkeypatch):
    counter = _AtomicCounter(monkeypatch)
    logits = torch.randn(2, 4, 999)
    target = torch.randint(0, 4, (2, 999))
    params = torch.rand(4, 4, dtype=torch.float64)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with use_backend("triton"):
            runs = [OP_LOSS(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, False)
                    for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(old)
    assert counter.calls == 0
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# ------------------------------------------------------------------ on a GPU, when present
@pytest.mark.cuda
@requires_cuda
def test_cuda_deterministic_gate_repeats_bitwise():
    from test_attention_gate import run_op

    case = _gate_case(32, 16, 24, (40, 36), (9, 11))
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first = run_op(case, "triton", torch.float32, "cuda")
        second = run_op(case, "triton", torch.float32, "cuda")
    finally:
        torch.use_deterministic_algorithms(old)
    for a, b in zip((*first[0], *first[1]), (*second[0], *second[1])):
        assert torch.equal(a, b)


@pytest.mark.cuda
@requires_cuda
def test_cuda_reports_out_of_range_labels_without_a_sync():
    from unimri_kernels.triton.labels import raise_pending

    logits = torch.randn(2, 3, 50, device="cuda")
    target = torch.randint(0, 3, (2, 50), device="cuda")
    target[1, 17] = 3
    params = torch.rand(4, 3, dtype=torch.float64, device="cuda")
    loss, grad = OP_LOSS(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, False)
    with pytest.raises(ValueError, match=r"target holds 1 label"):
        raise_pending()
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1])
    assert torch.isfinite(grad[0]).all() and torch.isnan(grad[1, :, :17]).all()


@pytest.mark.cuda
@requires_cuda
def test_cuda_graph_capture_turns_bad_labels_into_nan():
    """Inside a captured graph nothing can be reported on the host: the row goes NaN."""
    from unimri_kernels.triton.labels import raise_pending

    logits = torch.randn(2, 3, 64, device="cuda")
    target = torch.randint(0, 3, (2, 64), device="cuda")
    params = torch.rand(4, 3, dtype=torch.float64, device="cuda")
    loss_mod.ufl_forward_triton(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False)  # JIT
    raise_pending()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss, _ = loss_mod.ufl_forward_triton(logits, target, params, 0.4, 0.6, 1e-6, IGNORE,
                                              False)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(loss).all()
    target[1, 9] = 7
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1])
