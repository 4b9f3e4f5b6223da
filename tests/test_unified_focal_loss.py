"""unimri::unified_focal_loss against its float64 reference, on every backend present."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import requires_cuda
from unimri_kernels.dispatch import available_backends, use_backend
from unimri_kernels.reference.unified_focal_loss import unified_focal_loss_reference, unified_focal_loss_torch

BACKENDS = available_backends("cpu")
IGNORE = -100
OP = torch.ops.unimri.unified_focal_loss


def random_params(num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """(4, C) class params mixing the regimes the losses use (γ ∈ {0, 0.5, 2}, e ∈ {0.5, 1})."""
    fw = torch.rand(num_classes, generator=gen, dtype=torch.float64)
    gamma = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)[torch.randint(0, 3, (num_classes,), generator=gen)]
    tw = torch.rand(num_classes, generator=gen, dtype=torch.float64) / num_classes
    ex = torch.tensor([0.5, 0.75, 1.0], dtype=torch.float64)[torch.randint(0, 3, (num_classes,), generator=gen)]
    return torch.stack([fw, gamma, tw, ex])


def ignore_index_case(num_classes: int, batch: int, pixels: int, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """fp64 logits (B, C, N), labels (B, N), class params and an ignore index inside the class
    range (the last class), for the ignore-index tests of every kernel."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_classes, pixels, generator=gen, dtype=torch.float64)
    target = torch.randint(0, num_classes, (batch, pixels), generator=gen)
    return logits, target, random_params(num_classes, gen), num_classes - 1


@st.composite
def loss_cases(draw, max_classes: int = 5):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    bsz = draw(st.integers(1, 3))
    num_classes = draw(st.integers(2, max_classes))
    dims = draw(st.sampled_from([2, 3]))
    sizes = [draw(st.sampled_from([1, 2, 7, 9, 33] if dims == 2 else [1, 3, 7])) for _ in range(dims)]
    scale = draw(st.sampled_from([1.0, 5.0, 60.0]))
    logits = torch.randn(bsz, num_classes, *sizes, generator=gen, dtype=torch.float64) * scale
    kind = draw(st.sampled_from(["index", "index_ignore", "no_foreground", "only_foreground", "soft"]))
    n = logits[0, 0].numel()
    if kind == "soft":
        target = torch.softmax(torch.randn(bsz, num_classes, n, generator=gen, dtype=torch.float64) * 3, 1)
    else:
        target = torch.randint(0, num_classes, (bsz, n), generator=gen)
        if kind == "no_foreground":
            target.zero_()
        elif kind == "only_foreground":
            target.fill_(num_classes - 1)
        elif kind == "index_ignore":
            target[torch.rand(bsz, n, generator=gen) < 0.3] = IGNORE
    params = random_params(num_classes, gen)
    alpha = draw(st.sampled_from([0.3, 0.4, 0.5]))
    return logits.reshape(bsz, num_classes, -1), target, params, alpha, 1 - alpha, draw(st.booleans())


def reference(logits, target, params, alpha, beta, batch, smooth=1e-6):
    z = logits.detach().double().requires_grad_()
    t = target.double() if target.dtype.is_floating_point else target
    loss = unified_focal_loss_reference(z, t, params, alpha, beta, smooth, IGNORE, batch)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    return loss.detach(), grad


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30)
@given(case=loss_cases())
def test_fp64_matches_reference(backend, case):
    logits, target, params, alpha, beta, batch = case
    ref_loss, ref_grad = reference(logits, target, params, alpha, beta, batch)
    with use_backend(backend):
        loss, grad = OP(logits, target, params, alpha, beta, 1e-6, IGNORE, batch, True, False)
    assert loss.dtype == torch.float64 and loss.shape == ref_loss.shape
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-12)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float32, 2e-5, 2e-6), (torch.float16, 2e-3, 2e-4),
                                             (torch.bfloat16, 1e-2, 2e-3)])
@settings(max_examples=10)
@given(case=loss_cases(max_classes=4))
def test_low_precision_within_tolerance(backend, dtype, rtol, atol, case):
    """fp32/fp16/bf16 logits: fp32 accumulation; loss fp32, gradient in the logits' dtype."""
    logits, target, params, alpha, beta, batch = case
    logits = logits.clamp(-30, 30).to(dtype)  # fp16 cannot hold ±60 differences exactly either way
    ref_loss, ref_grad = reference(logits.double(), target, params, alpha, beta, batch)
    tgt = target.to(dtype) if target.dtype.is_floating_point else target
    with use_backend(backend):
        loss, grad = OP(logits, tgt.contiguous(), params, alpha, beta, 1e-6, IGNORE, batch, True, False)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    if tgt.dtype.is_floating_point:  # the soft target itself was rounded to dtype
        ref_loss, ref_grad = reference(logits.double(), tgt.double(), params, alpha, beta, batch)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol * 5, atol=atol * 5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_saturation_is_finite_where_naive_autograd_is_nan(backend, dtype):
    """p → 1 exactly: (1−p)^γ·log p has derivative limit 0; naive autograd gives NaN."""
    logits = torch.zeros(1, 2, 8, dtype=dtype)
    logits[:, 1] = 80.0
    target = torch.ones(1, 8, dtype=torch.int64)
    params = torch.tensor([[0.4, 0.6], [0.5, 0.5], [0.25, 0.25], [1.0, 0.5]], dtype=torch.float64)
    z = logits.double().requires_grad_()
    p = torch.softmax(z, 1)
    naive = ((1 - p) ** 0.5 * -torch.log(p))[:, 1].mean()
    (naive_grad,) = torch.autograd.grad(naive, z)
    assert torch.isnan(naive_grad).any()  # the failure mode being guarded against
    with use_backend(backend):
        loss, grad = OP(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, False)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    ref_loss, ref_grad = reference(logits.double(), target, params, 0.4, 0.6, False)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_gradcheck(backend, batch, soft):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    if soft:
        target = torch.softmax(torch.randn(2, 3, 11, generator=gen, dtype=torch.float64), 1)
    else:
        target = torch.randint(0, 3, (2, 11), generator=gen)
        target[0, :3] = IGNORE
    params = random_params(3, gen)

    def fn(z):
        return OP(z, target, params, 0.3, 0.7, 1e-6, IGNORE, batch, True, False)[0]

    with use_backend(backend):
        assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 20, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 20), generator=gen)
    params = random_params(3, gen)
    with use_backend(backend):
        torch.library.opcheck(OP, (logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, False))
        torch.library.opcheck(OP, (logits.float(), target, params, 0.4, 0.6, 1e-6, IGNORE, True, True, False))


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output_not_one_and_inplace_backward(backend):
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 4, 50, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 4, (3, 50), generator=gen)
    params = random_params(4, gen)
    weights = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    _, ref_grad = reference(logits, target, params, 0.4, 0.6, False)
    for inplace in (False, True):
        z = logits.clone().requires_grad_()
        with use_backend(backend):
            loss, _ = OP(z, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, inplace)
        (loss * weights).sum().backward(retain_graph=True)
        torch.testing.assert_close(z.grad, ref_grad * weights.view(-1, 1, 1), rtol=1e-9, atol=1e-12)
        if inplace:  # the buffer was consumed: a second backward must refuse, not lie
            with pytest.raises(RuntimeError, match="backward ran twice"):
                (loss * weights).sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_no_graph_break(backend):
    from unimri.losses import UnifiedFocalLoss

    loss_fn = UnifiedFocalLoss(validate=False)
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    compiled = torch.compile(loss_fn, backend=counter, fullgraph=True)
    x = torch.randn(2, 3, 9, 7, requires_grad=True)
    t = torch.randint(0, 3, (2, 9, 7))
    with use_backend(backend):
        out = compiled(x, t)
        out.backward()
        eager_x = x.detach().clone().requires_grad_()
        expected = loss_fn(eager_x, t)
        expected.backward()
    assert counter.frame_count == 1
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, eager_x.grad)


def test_torch_compile_inductor_matches_eager():
    from unimri.losses import UnifiedFocalLoss

    loss_fn = UnifiedFocalLoss(validate=False)
    compiled = torch.compile(loss_fn, fullgraph=True)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    t = torch.randint(0, 3, (2, 16, 16))
    out = compiled(x, t)
    out.backward()
    x2 = x.detach().clone().requires_grad_()
    loss_fn(x2, t).backward()
    torch.testing.assert_close(out, loss_fn(x2.detach(), t))
    torch.testing.assert_close(x.grad, x2.grad)


def test_no_grad_skips_the_gradient_buffer():
    logits = torch.randn(2, 3, 10)
    target = torch.randint(0, 3, (2, 10))
    params = random_params(3, torch.Generator().manual_seed(0))
    loss, grad = OP(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, False, True)
    assert grad.numel() == 0
    ref, _ = unified_focal_loss_torch(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, False)
    torch.testing.assert_close(loss, ref)


def test_cpp_rejects_out_of_range_labels():
    if "cpp" not in BACKENDS:
        pytest.skip("C++ extension not built")
    logits = torch.randn(1, 3, 10)
    target = torch.full((1, 10), 3)
    params = random_params(3, torch.Generator().manual_seed(0))
    with use_backend("cpp"), pytest.raises(ValueError, match=r"target holds label 3 outside \[0, 3\)"):
        OP(logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, False)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@settings(max_examples=20)
@given(case=loss_cases())
def test_cuda_triton_matches_reference(dtype, case):
    logits, target, params, alpha, beta, batch = case
    ref_loss, ref_grad = reference(logits.to(dtype).double(), target, params, alpha, beta, batch)
    tgt = target.to(dtype) if target.dtype.is_floating_point else target
    if tgt.dtype.is_floating_point:
        ref_loss, ref_grad = reference(logits.to(dtype).double(), tgt.double(), params, alpha, beta, batch)
    loss, grad = OP(logits.to(dtype).cuda(), tgt.cuda(), params.cuda(), alpha, beta, 1e-6, IGNORE, batch, True, False)
    tol = {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 2e-6), torch.bfloat16: (1e-2, 2e-3)}[dtype]
    torch.testing.assert_close(loss.double().cpu(), ref_loss, rtol=tol[0], atol=tol[1])
    torch.testing.assert_close(grad.double().cpu(), ref_grad, rtol=tol[0] * 5, atol=tol[1] * 5)


@requires_cuda
@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 40, generator=gen, dtype=torch.float64).cuda().requires_grad_()
    target = torch.randint(0, 3, (2, 40), generator=gen).cuda()
    params = random_params(3, gen).cuda()
    assert torch.autograd.gradcheck(
        lambda z: OP(z, target, params, 0.3, 0.7, 1e-6, IGNORE, False, True, False)[0], (logits,), eps=1e-6, atol=1e-7)
    torch.library.opcheck(OP, (logits, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, False))


def test_cpp_baseline_build_matches_reference():
    """The C++ kernels are compiled for baseline x86-64 and for AVX2+FMA (picked at run
    time); UNIMRI_CPU_BASELINE=1 forces the baseline build, checked here in a subprocess."""
    import os
    import subprocess
    import sys

    if "cpp" not in BACKENDS:
        pytest.skip("C++ extension not built")
    script = (
        "import torch, unimri_kernels\n"
        "from unimri_kernels.dispatch import use_backend\n"
        "from unimri_kernels.reference.unified_focal_loss import unified_focal_loss_reference as ref\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for soft in (False, True):\n"
        "    z = torch.randn(2, 4, 300, generator=g, dtype=torch.float64) * 5\n"
        "    t = torch.softmax(torch.randn(2, 4, 300, generator=g, dtype=torch.float64), 1) if soft else torch.randint(0, 4, (2, 300), generator=g)\n"
        "    p = torch.tensor([[.2, .3, .3, .3], [.5, 0, 2, 0], [.25] * 4, [1, .5, .5, .75]], dtype=torch.float64)\n"
        "    zz = z.clone().requires_grad_()\n"
        "    L = ref(zz, t, p, .4, .6, 1e-6, -100, False)\n"
        "    (G,) = torch.autograd.grad(L.sum(), zz)\n"
        "    with use_backend('cpp'):\n"
        "        l2, g2 = torch.ops.unimri.unified_focal_loss(z, t, p, .4, .6, 1e-6, -100, False, True, False)\n"
        "    torch.testing.assert_close(l2, L.detach(), rtol=1e-9, atol=1e-12)\n"
        "    torch.testing.assert_close(g2, G, rtol=1e-7, atol=1e-12)\n"
        "print('OK')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, UNIMRI_CPU_BASELINE="1",
               PYTHONPATH=os.pathsep.join([os.path.join(root, "python"), root, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def _available_memory_gib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


@pytest.mark.slow
def test_cpp_more_than_2_31_elements():
    """bf16 logits (32776, 64, 1024): 2^31 + 2^19 elements, so every b·C·N offset past sample
    32768 needs 64 bits. Samples are independent (batch=False), so the huge problem is the
    small one (8 samples) repeated: losses and gradients must repeat exactly (same tiles,
    same order), and the small one must match the float64 reference."""
    if "cpp" not in BACKENDS:
        pytest.skip("C++ extension not built")
    if _available_memory_gib() < 12:
        pytest.skip("needs ~9 GiB free memory (4 GiB logits, 4 GiB gradient, 0.3 GiB labels)")
    gen = torch.Generator().manual_seed(11)
    small_b, reps, num_classes, n = 8, 4097, 64, 1024
    assert small_b * reps * num_classes * n > 2**31
    logits = (torch.randn(small_b, num_classes, n, generator=gen) * 3).to(torch.bfloat16)
    target = torch.randint(0, num_classes, (small_b, n), generator=gen)
    target[:, ::7] = IGNORE
    params = torch.zeros(4, num_classes, dtype=torch.float64)
    params[0] = 0.6 / num_classes
    params[0, 0] = 0.4
    params[1, 0] = 0.5  # focal factor on the common class only, as UnifiedFocalLoss does
    params[2] = 1.0 / num_classes
    params[3] = 0.5
    params[3, 0] = 1.0
    args = (0.4, 0.6, 1e-6, IGNORE, False, True, False)
    with use_backend("cpp"):
        small_loss, small_grad = OP(logits, target, params, *args)
        ref_loss, _ = reference(logits.double(), target, params, 0.4, 0.6, False)
        torch.testing.assert_close(small_loss.double(), ref_loss, rtol=1e-2, atol=2e-3)
        big_logits = logits.repeat(reps, 1, 1)
        big_loss, big_grad = OP(big_logits, target.repeat(reps, 1), params, *args)
    del big_logits
    assert torch.equal(big_loss.view(reps, small_b), small_loss.expand(reps, small_b))
    grad = big_grad.view(reps, small_b, num_classes, n)
    for r in range(0, reps, 512):
        assert torch.equal(grad[r:r + 512], small_grad.expand(min(512, reps - r), -1, -1, -1)), f"repeat {r}"
    assert torch.equal(grad[-1], small_grad)
