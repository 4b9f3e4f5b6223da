"""Every build of the C++ CPU kernels this machine runs (baseline, AVX2, AVX-512), each against
the float64 reference, and the environment switches that choose one."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from test_attention_gate import FIXED as FIXED_GATE
from test_attention_gate import NAMES, Case, assert_matches_reference, reference_results, run_op
from test_unified_focal_loss import IGNORE, ignore_index_case, loss_cases, random_params, reference
from unimri_kernels.dispatch import cpu_variant, cpu_variants, has_cpp, use_backend
from unimri_kernels.reference.unified_focal_loss import unified_focal_loss_reference

VARIANTS = cpu_variants()
OP = torch.ops.unimri.unified_focal_loss
needs_cpp = pytest.mark.skipif(not has_cpp(), reason="C++ extension not built")


def _run(logits, target, params, alpha, batch):
    return OP(logits, target, params, alpha, 1 - alpha, 1e-6, IGNORE, batch, True, False)


@needs_cpp
def test_baseline_is_always_available():
    assert VARIANTS[0] == "baseline"
    assert cpu_variant() == VARIANTS[-1]  # auto picks the widest


@needs_cpp
def test_environment_forces_and_rejects_variants(monkeypatch):
    monkeypatch.setenv("UNIMRI_CPU_BASELINE", "1")
    assert cpu_variant() == "baseline"
    monkeypatch.delenv("UNIMRI_CPU_BASELINE")
    monkeypatch.setenv("UNIMRI_CPU_VARIANT", "sse9")
    with pytest.raises(ValueError, match="UNIMRI_CPU_VARIANT must be one of"):
        cpu_variant()
    for name in ("avx2", "avx512"):
        if name not in VARIANTS:
            monkeypatch.setenv("UNIMRI_CPU_VARIANT", name)
            with pytest.raises(ValueError, match=f"UNIMRI_CPU_VARIANT={name} cannot run here"):
                cpu_variant()


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])  # env fixed per test
@given(case=loss_cases())
def test_loss_fp64_matches_reference(variant, case):
    logits, target, params, alpha, _, batch = case
    ref_loss, ref_grad = reference(logits, target, params, alpha, 1 - alpha, batch)
    loss, grad = _run(logits, target, params, alpha, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float32, 2e-5, 2e-6), (torch.float16, 2e-3, 2e-4),
                                             (torch.bfloat16, 1e-2, 2e-3)])
@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("n", [1, 15, 17, 512, 1000])  # vector and tile tails
@pytest.mark.parametrize("soft", [False, True])
def test_loss_low_precision_tails(variant, dtype, rtol, atol, num_classes, n, soft):
    gen = torch.Generator().manual_seed(n * 7 + num_classes)
    logits = (torch.randn(2, num_classes, n, generator=gen, dtype=torch.float64) * 4).to(dtype)
    if soft:
        target = torch.softmax(torch.randn(2, num_classes, n, generator=gen, dtype=torch.float64) * 3, 1).to(dtype)
    else:
        target = torch.randint(0, num_classes, (2, n), generator=gen)
        target[torch.rand(2, n, generator=gen) < 0.2] = IGNORE
    params = random_params(num_classes, gen)
    loss, grad = _run(logits, target, params, 0.4, False)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    ref_loss, ref_grad = reference(logits.double(), target.double() if soft else target, params, 0.4, 0.6, False)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol * 5, atol=atol * 5)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("num_classes", [2, 4])
def test_loss_saturated_pixels_keep_the_limit(variant, num_classes):
    """p -> 1 to within fp32 rounding: d/dz of (1 - p)^g log p uses -log p / (1 - p) -> 1."""
    logits = torch.zeros(1, num_classes, 40)
    logits[0, 1] = torch.linspace(10.0, 100.0, 40)
    target = torch.ones(1, 40, dtype=torch.int64)
    params = torch.tensor([[0.4] * num_classes, [0.5] * num_classes, [0.25] * num_classes, [1.0] * num_classes],
                          dtype=torch.float64)
    loss, grad = _run(logits, target, params, 0.4, False)
    ref_loss, ref_grad = reference(logits.double(), target, params, 0.4, 0.6, False)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_loss_ignore_index_inside_the_class_range(variant, num_classes):
    logits, target, params, ignore = ignore_index_case(num_classes, 2, 300, seed=5)
    loss, grad = OP(logits, target, params, 0.4, 0.6, 1e-6, ignore, False, True, False)
    z = logits.clone().requires_grad_()
    ref = unified_focal_loss_reference(z, target, params, 0.4, 0.6, 1e-6, ignore, False)
    (ref_grad,) = torch.autograd.grad(ref.sum(), z)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("bad", [-1, 2, 7])
def test_loss_rejects_labels_in_the_kernel(variant, bad):
    logits = torch.randn(2, 2, 600)
    target = torch.randint(0, 2, (2, 600))
    target[1, 517] = bad
    with pytest.raises(ValueError, match=rf"target holds label {bad} outside \[0, 2\) \(ignore_index=-100\)"):
        _run(logits, target, random_params(2, torch.Generator().manual_seed(0)), 0.4, False)


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("case", FIXED_GATE, ids=[str(c.size) + "-" + str(c.g_size) for c in FIXED_GATE])
def test_gate_fp64_matches_reference(variant, case):
    assert_matches_reference(case, "cpp")


@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 6e-2)])
def test_gate_low_precision(variant, dtype, tol):
    """fp32 accumulation: errors within the input rounding, relative to each output's max."""
    case = Case(2, 16, 8, 8, (21, 19), (6, 5), 2, 1.5)
    outs, grads, cot = run_op(case, "cpp", dtype)
    ref_outs, ref_grads = reference_results(case, cot)
    for name, got, want in zip(NAMES, (*outs, *grads), (*ref_outs, *ref_grads)):
        assert got.dtype == dtype
        err = (got.double() - want).abs().max().item()
        assert err <= tol * (want.abs().max().item() + 1e-3), f"{name}: max error {err} ({dtype})"
