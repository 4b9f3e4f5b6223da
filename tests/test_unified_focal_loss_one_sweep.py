"""The C++ one-sweep path of the loss (index targets, fp32/bf16/fp16 logits, C <= 16) and the
eager autograd route the loss modules take (unified_focal_loss_autograd), against the float64
reference on every CPU variant this machine runs.

The forward writes a per-pixel state (probabilities and the focal factor, flags in sign bits)
and the backward turns it into the gradient with grad_output folded in; these tests cover each
flag (label 0/1, which class is the less likely, ignored pixels, underflowed −0 values), each
way of taking (1 − p)^γ (none, square root for γ = 0.5, exp otherwise) and the fallbacks.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from test_cpu_variants import VARIANTS, needs_cpp
from test_unified_focal_loss import IGNORE, ignore_index_case, loss_cases, random_params, reference
from unimri_kernels.dispatch import cpp_ops, use_backend
from unimri_kernels.ops.unified_focal_loss import ONE_SWEEP_MAX_CLASSES, unified_focal_loss_autograd
from unimri_kernels.reference.unified_focal_loss import unified_focal_loss_reference

TOL = {torch.float32: (2e-5, 2e-6), torch.float16: (2e-3, 2e-4), torch.bfloat16: (1e-2, 2e-3)}


def _fused(logits, target, params, alpha, batch, weights, inplace=True):
    """Loss and d(Σ weights·loss)/d logits through the eager autograd route."""
    z = logits.detach().clone().requires_grad_()
    loss = unified_focal_loss_autograd(z, target, params, alpha, 1 - alpha, 1e-6, IGNORE, batch, True, inplace)
    (loss * weights).sum().backward()
    return loss.detach(), z.grad


def _check(logits, target, params, alpha, batch, dtype, weights, inplace=True, grad_tol=5.0):
    loss, grad = _fused(logits.to(dtype), target, params, alpha, batch, weights, inplace)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and grad.dtype == dtype
    ref_loss, ref_grad = reference(logits.to(dtype).double(), target, params, alpha, 1 - alpha, batch)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(loss.double(), ref_loss, rtol=rtol, atol=atol)
    w = weights.double().reshape(-1, 1, 1)
    torch.testing.assert_close(grad.double(), ref_grad * w, rtol=rtol * grad_tol, atol=atol * grad_tol)
    assert torch.isfinite(grad).all()


@needs_cpp
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=loss_cases())
def test_eager_route_matches_reference(variant, dtype, case):
    """Index targets take the one sweep, soft targets the two-sweep kernel; grad_output ≠ 1."""
    logits, target, params, alpha, _, batch = case
    logits = logits.clamp(-30, 30)  # fp16 cannot hold ±60 differences exactly either way
    if target.dtype.is_floating_point:
        target = target.to(dtype).double().to(dtype)
    weights = torch.linspace(-1.5, 2.0, 1 if batch else logits.shape[0])
    _check(logits, target, params, alpha, batch, dtype, weights)


@needs_cpp
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])  # no focal factor, square root, exp
def test_focal_power_modes_and_state_flags(variant, dtype, num_classes, gamma):
    """Every label, both orders of the two probabilities, ties, ignored pixels, and logits far
    enough apart that p (and F) underflow to ±0 in the state: the sign-bit flags must survive."""
    gen = torch.Generator().manual_seed(num_classes * 10 + int(gamma * 4))
    n = 300
    logits = torch.randn(2, num_classes, n, generator=gen, dtype=torch.float64) * 3
    logits[:, :, :40] = 0.0  # ties
    logits[0, 1, 40:80] = 200.0  # p_1 = 1, the others exactly 0 in fp32
    logits[1, 0, 40:80] = -200.0
    target = torch.randint(0, num_classes, (2, n), generator=gen)
    target[:, 60:70] = 1
    target[:, 70:80] = 0
    target[torch.rand(2, n, generator=gen) < 0.2] = IGNORE
    params = random_params(num_classes, gen)
    params[1] = gamma
    if dtype == torch.float32:  # the mixed case: one class without a focal factor
        params[1, 0] = 0.0
    weights = torch.tensor([0.7, -1.3])
    _check(logits, target, params, 0.4, False, dtype, weights)
    _check(logits, target, params, 0.4, True, dtype, weights[:1])


@needs_cpp
@pytest.mark.parametrize("variant", VARIANTS, indirect=True)
@pytest.mark.parametrize("num_classes", [2, 4])
def test_ignore_index_in_range_and_fully_ignored_samples(variant, num_classes):
    logits, target, params, ignore = ignore_index_case(num_classes, 3, 257, seed=11)
    target[1] = ignore  # a sample with no valid pixel: loss and gradient 0
    z = logits.float().requires_grad_()
    loss = unified_focal_loss_autograd(z, target, params, 0.4, 0.6, 1e-6, ignore, False, True, True)
    loss.sum().backward()
    zr = logits.clone().requires_grad_()
    ref = unified_focal_loss_reference(zr, target, params, 0.4, 0.6, 1e-6, ignore, False)
    ref.sum().backward()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(z.grad.double(), zr.grad, rtol=1e-4, atol=1e-5)
    assert (z.grad[1] == 0).all()


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_classes", [2, 3])
def test_eager_route_equals_the_custom_op(dtype, num_classes):
    """The module route (state in the forward, gradient in the backward) and the custom op
    (both in the forward, a scale in the backward) compute the same gradient."""
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(2, num_classes, 700, generator=gen) * 4).to(dtype)
    target = torch.randint(0, num_classes, (2, 700), generator=gen)
    params = random_params(num_classes, gen)
    weights = torch.tensor([2.0, -0.5])
    _, grad = _fused(logits, target, params, 0.3, False, weights)
    z = logits.clone().requires_grad_()
    loss, _ = torch.ops.unimri.unified_focal_loss(z, target, params, 0.3, 0.7, 1e-6, IGNORE, False, True, False)
    (loss * weights).sum().backward()
    torch.testing.assert_close(grad, z.grad, rtol=0, atol=0)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_twice_raises_when_in_place_and_works_otherwise(dtype):
    """float32 takes the one sweep, float64 the two-sweep kernel: same contract for both."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 50, generator=gen, dtype=dtype)
    target = torch.randint(0, 3, (2, 50), generator=gen)
    params = random_params(3, gen)
    z = logits.clone().requires_grad_()
    loss = unified_focal_loss_autograd(z, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, True)
    loss.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.sum().backward()
    z2 = logits.clone().requires_grad_()
    loss2 = unified_focal_loss_autograd(z2, target, params, 0.4, 0.6, 1e-6, IGNORE, False, True, False)
    loss2.sum().backward(retain_graph=True)
    first = z2.grad.clone()
    loss2.sum().backward()
    torch.testing.assert_close(z2.grad, 2 * first)
    torch.testing.assert_close(first, z.grad)


@needs_cpp
def test_more_classes_than_the_one_sweep_takes_fall_back():
    num_classes = ONE_SWEEP_MAX_CLASSES + 1
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, num_classes, 40, generator=gen, dtype=torch.float64)
    target = torch.randint(0, num_classes, (2, 40), generator=gen)
    params = random_params(num_classes, gen)
    _check(logits, target, params, 0.4, False, torch.float32, torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="at most 16 classes"):
        cpp_ops().unified_focal_loss_cpu_state(logits.float().contiguous(), target, params, 0.4, 0.6, 1e-6,
                                               IGNORE, False)


@needs_cpp
def test_finish_rejects_mismatched_state():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 20, generator=gen)
    target = torch.randint(0, 3, (2, 20), generator=gen)
    _, state, coef = cpp_ops().unified_focal_loss_cpu_state(logits, target, random_params(3, gen), 0.4, 0.6,
                                                            1e-6, IGNORE, False)
    assert state.dtype == torch.float32 and coef.shape == (2, 3, 3)
    with pytest.raises(RuntimeError, match="grad_output has 3 elements"):
        cpp_ops().unified_focal_loss_cpu_finish(state, coef, torch.ones(3), torch.float32, False)
    with pytest.raises(RuntimeError, match="does not match"):
        cpp_ops().unified_focal_loss_cpu_finish(state.bfloat16(), coef, torch.ones(2), torch.bfloat16, False)


def test_reference_backend_keeps_the_custom_op():
    """Off the C++ backend the eager route is the custom op (same values as the reference)."""
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 2, 30, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 30), generator=gen)
    params = random_params(2, gen)
    with use_backend("reference"):
        loss, grad = _fused(logits, target, params, 0.4, False, torch.tensor([1.0, -2.0]))
    ref_loss, ref_grad = reference(logits, target, params, 0.4, 0.6, False)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad * torch.tensor([1.0, -2.0], dtype=torch.float64).view(-1, 1, 1))
