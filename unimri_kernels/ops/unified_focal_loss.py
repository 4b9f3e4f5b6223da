"""``unimri::unified_focal_loss``: the fused Unified Focal loss family as one custom op.

Inputs (already flattened and validated by :mod:`unimri.losses`):
    logits        (B, C, N) contiguous, fp16 / bf16 / fp32 / fp64
    target        int64 (B, N) class indices, or soft (B, C, N) in the logits' dtype
    class_params  (4, C) float64: rows fw, g, tw, e (see unimri_kernels.reference.unified_focal_loss)
Outputs:
    loss          (B,) per-sample loss, or (1,) when ``batch`` (fp32; fp64 for fp64 logits)
    grad          (B, C, N) d loss_b / d logits in the logits' dtype (empty if not
                  ``compute_grad``), computed in the forward sweep.

Backward is a scale of ``grad`` by grad_output (the Triton route of
:func:`unified_focal_loss_autograd` instead runs the gradient kernel in backward with
grad_output folded in). With ``inplace_backward`` (what the
loss modules use outside ``torch.compile``) the scale happens in the saved buffer, as
Liger-Kernel does, so forward+backward needs no second logits-sized buffer; backward
through the same graph a second time then raises instead of returning wrong values.

:func:`unified_focal_loss_autograd` is what the loss modules call: under
``torch.compile`` and on the reference backend it is this op; on the "direct" route
(:func:`unimri_kernels.dispatch.route`: eager mode, C++ backend) it skips the custom-op
layers (about 0.1 ms of Python a call, measured) and, for
index targets with fp32/bf16/fp16 logits, splits the one-sweep kernel so that the forward
keeps a per-pixel state and the backward turns it into the gradient with grad_output
folded in (no separate scaling pass).
"""
from __future__ import annotations

import torch
from torch import Tensor

from unimri_kernels.dispatch import backend_for, cpp_ops, route
from unimri_kernels.reference.unified_focal_loss import unified_focal_loss_torch

#: Most classes of the C++ one-sweep path (csrc/unified_focal_loss.h, kStateMaxClasses).
ONE_SWEEP_MAX_CLASSES = 16
_TWICE = ("unimri fused loss: backward ran twice through the same graph; its gradient "
          "buffer was scaled in place the first time. Build the loss with "
          "inplace_backward=False to use retain_graph=True.")


@torch.library.custom_op("unimri::unified_focal_loss", mutates_args=(), device_types=("cpu", "cuda"))
def unified_focal_loss(logits: Tensor, target: Tensor, class_params: Tensor, fp_weight: float,
                       fn_weight: float, smooth: float, ignore_index: int, batch: bool,
                       compute_grad: bool, inplace_backward: bool) -> tuple[Tensor, Tensor]:
    backend = backend_for(logits)
    args = (logits, target, class_params, fp_weight, fn_weight, smooth, ignore_index, batch,
            compute_grad)
    if backend == "cpp":
        return cpp_ops().unified_focal_loss_cpu(*args)
    if backend == "triton":
        from unimri_kernels.triton.unified_focal_loss import unified_focal_loss_triton

        return unified_focal_loss_triton(*args)
    return unified_focal_loss_torch(*args)


@unified_focal_loss.register_fake
def _(logits, target, class_params, fp_weight, fn_weight, smooth, ignore_index, batch,
      compute_grad, inplace_backward):
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = logits.new_empty((1 if batch else logits.shape[0],), dtype=acc)
    grad = torch.empty_like(logits) if compute_grad else logits.new_empty((0,))
    return loss, grad


def _setup_context(ctx, inputs, output):
    _, grad = output
    ctx.save_for_backward(grad)
    ctx.inplace = inputs[9]
    ctx.consumed = False
    ctx.mark_non_differentiable(grad)
    ctx.set_materialize_grads(False)  # else autograd allocates zeros the size of ``grad``


def _backward(ctx, grad_loss, _grad_grad):
    if ctx.consumed:
        raise RuntimeError(_TWICE)
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0:
        raise RuntimeError("unified_focal_loss was called with compute_grad=False; "
                           "it cannot be differentiated")
    if grad_loss is None:  # only the (non-differentiable) gradient output was used
        return (None,) * 10
    inplace = ctx.inplace and not torch.compiler.is_compiling()
    ctx.consumed = inplace
    return _scaled(grad, grad_loss, inplace), None, None, None, None, None, None, None, None, None


def _scaled(grad: Tensor, grad_loss: Tensor, inplace: bool) -> Tensor:
    """``grad`` (B, C, N) times the per-sample ``grad_loss`` (B,) or (1,); in place if asked."""
    scale = grad_loss.reshape(-1, 1, 1).to(grad.dtype)
    return grad.mul_(scale) if inplace else grad * scale


torch.library.register_autograd("unimri::unified_focal_loss", _backward, setup_context=_setup_context)


class _OneSweep(torch.autograd.Function):
    """C++ one-sweep loss: forward -> loss and a per-pixel state, backward -> gradient.

    The state (B, C, N) becomes the gradient in place when ``inplace`` (and the dtypes
    allow), so a second backward through the same graph raises.
    """

    @staticmethod
    def forward(ctx, logits, target, class_params, fp_weight, fn_weight, smooth, ignore_index, batch,
                inplace):
        loss, state, coef = cpp_ops().unified_focal_loss_cpu_state(
            logits, target, class_params, fp_weight, fn_weight, smooth, ignore_index, batch)
        ctx.state, ctx.coef, ctx.dtype, ctx.inplace = state, coef, logits.dtype, inplace
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.state is None:
            raise RuntimeError(_TWICE)
        grad = cpp_ops().unified_focal_loss_cpu_finish(ctx.state, ctx.coef, grad_loss, ctx.dtype, ctx.inplace)
        if ctx.inplace:
            ctx.state = None  # consumed; also lets autograd take the buffer without a copy
        return grad, None, None, None, None, None, None, None, None


class _CppTwoSweeps(torch.autograd.Function):
    """C++ kernel that returns the gradient from the forward (soft targets, fp64, many classes)."""

    @staticmethod
    def forward(ctx, logits, target, class_params, fp_weight, fn_weight, smooth, ignore_index, batch,
                inplace):
        loss, grad = cpp_ops().unified_focal_loss_cpu(
            logits, target, class_params, fp_weight, fn_weight, smooth, ignore_index, batch, True)
        ctx.grad, ctx.inplace = grad, inplace
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(_TWICE)
        if ctx.inplace:
            ctx.grad = None
        return _scaled(grad, grad_loss, ctx.inplace), None, None, None, None, None, None, None, None


class _TritonTwoSweeps(torch.autograd.Function):
    """Triton loss in eager mode: forward = stats + finish kernels (no gradient buffer kept),
    backward = the gradient kernel with grad_output folded in. Three launches in all, no
    host synchronisation; backward may run more than once."""

    @staticmethod
    def forward(ctx, logits, target, class_params, fp_weight, fn_weight, smooth, ignore_index, batch):
        from unimri_kernels.triton.unified_focal_loss import ufl_forward_triton

        loss, stats = ufl_forward_triton(logits, target, class_params, fp_weight, fn_weight, smooth,
                                         ignore_index, batch)
        ctx.save_for_backward(logits)
        ctx.stats = stats
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        from unimri_kernels.triton.unified_focal_loss import ufl_grad_triton

        (logits,) = ctx.saved_tensors
        grad = ufl_grad_triton(logits, ctx.stats, grad_loss)
        return grad, None, None, None, None, None, None, None


def unified_focal_loss_autograd(logits: Tensor, target: Tensor, class_params: Tensor, fp_weight: float,
                                fn_weight: float, smooth: float, ignore_index: int, batch: bool,
                                compute_grad: bool, inplace_backward: bool) -> Tensor:
    """Per-sample loss (B,) — (1,) if ``batch`` — differentiable w.r.t. ``logits``.

    Same arguments and maths as :func:`unified_focal_loss` (whose loss output this is);
    ``compute_grad`` False gives a loss with no gradient (no buffer, no graph).
    """
    path = route(logits)
    if path == "triton" and compute_grad:
        return _TritonTwoSweeps.apply(logits, target, class_params, fp_weight, fn_weight, smooth,
                                      ignore_index, batch)
    if path != "direct":
        loss, _ = torch.ops.unimri.unified_focal_loss(logits, target, class_params, fp_weight, fn_weight,
                                                      smooth, ignore_index, batch, compute_grad,
                                                      inplace_backward)
        return loss
    if not compute_grad:
        return cpp_ops().unified_focal_loss_cpu(logits, target, class_params, fp_weight, fn_weight, smooth,
                                                ignore_index, batch, False)[0]
    args = (logits, target, class_params, fp_weight, fn_weight, smooth, ignore_index, batch, inplace_backward)
    if (target.dtype == torch.int64 and logits.dtype != torch.float64
            and logits.shape[1] <= ONE_SWEEP_MAX_CLASSES):
        return _OneSweep.apply(*args)
    return _CppTwoSweeps.apply(*args)
