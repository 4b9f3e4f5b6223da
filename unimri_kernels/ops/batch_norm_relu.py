"""``unimri::batch_norm_relu``: batch norm followed by ReLU as one op.

``(out, mean, var) = batch_norm_relu(x, weight, bias, running_mean, running_var, eps)`` with
the maths of :mod:`unimri_kernels.reference.batch_norm_relu`: x (B, C, *S) contiguous;
weight, bias (C,) or None; ``running_mean``/``running_var`` (C,) to normalise with (evaluation)
or None for the batch's statistics (training), which are returned (mean, biased variance;
float32, float64 for float64 x) for the caller to update its running statistics.

On CPU (C++): the forward reads x twice (statistics, then ``max(x * scale + shift, 0)``) and
writes once; the backward recomputes the ReLU mask from x (only x is saved) and reads
(grad_out, x) twice, writing grad_x once. Batch norm then ReLU in PyTorch reads x three
times and the output twice, writes twice, and saves both x and the output. Other devices and
``UNIMRI_BACKEND=reference`` run the reference.
"""
from __future__ import annotations

import torch

from unimri_kernels.dispatch import backend_for, cpp_ops
from unimri_kernels.reference.batch_norm_relu import batch_norm_relu_reference


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_batch_norm_relu_inputs(x, weight, bias, running_mean, running_var, eps) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument when the inputs do not fit."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"batch_norm_relu: x must be a floating-point tensor, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"batch_norm_relu: x must be a non-empty (B, C, ...) tensor, got shape "
                         f"{tuple(x.shape)}")
    c = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.shape != (c,):
            raise ValueError(f"batch_norm_relu: {name} must be ({c},) for x of shape "
                             f"{tuple(x.shape)}, got {tuple(getattr(t, 'shape', ()))}")
        if t.device != x.device:
            raise ValueError(f"batch_norm_relu: {name} is on {t.device} but x is on {x.device}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm_relu: give both running_mean and running_var or neither")
    if not eps > 0:
        raise ValueError(f"batch_norm_relu: eps must be > 0, got {eps!r}")


@torch.library.custom_op("unimri::batch_norm_relu", mutates_args=(), device_types=("cpu", "cuda"))
def _batch_norm_relu_op(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                        running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_batch_norm_relu_inputs(x, weight, bias, running_mean, running_var, eps)
    stats = _stats_dtype(x)
    if backend_for(x) == "cpp":
        out, mean, var = cpp_ops().batch_norm_relu_cpu(x.contiguous(), weight, bias, running_mean,
                                                      running_var, running_mean is None, 0.0,
                                                      float(eps))
        return out, mean.to(stats), var.to(stats)
    compute = stats if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    with torch.no_grad():
        out, mean, var = batch_norm_relu_reference(x.to(compute), weight, bias, running_mean,
                                                   running_var, eps)
    return out.to(x.dtype), mean.to(stats).clone(), var.to(stats).clone()


@_batch_norm_relu_op.register_fake
def _batch_norm_relu_fake(x, weight, bias, running_mean, running_var, eps):
    check_batch_norm_relu_inputs(x, weight, bias, running_mean, running_var, eps)
    c, stats = x.shape[1], _stats_dtype(x)
    return x.new_empty(x.shape), x.new_empty((c,), dtype=stats), x.new_empty((c,), dtype=stats)


@torch.library.custom_op("unimri::batch_norm_relu_backward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _batch_norm_relu_backward_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None,
                                 bias: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor,
                                 eps: float, batch_stats: bool
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight, grad_bias); the last two (C,) in the statistics' dtype."""
    if backend_for(x) == "cpp":
        gx, gw, gb = cpp_ops().batch_norm_relu_backward_cpu(grad_out.contiguous(), x.contiguous(),
                                                            weight, bias, mean, var, float(eps),
                                                            bool(batch_stats))
        return gx, gw.to(mean.dtype), gb.to(mean.dtype)
    compute = mean.dtype
    w = torch.ones_like(mean) if weight is None else weight.detach().to(compute)
    b = torch.zeros_like(mean) if bias is None else bias.detach().to(compute)
    given = (None, None) if batch_stats else (mean, var)

    def forward(x_, w_, b_):
        return batch_norm_relu_reference(x_, w_, b_, *given, eps)[0]

    _, vjp = torch.func.vjp(forward, x.detach().to(compute), w, b)
    gx, gw, gb = vjp(grad_out.to(compute))
    return gx.to(x.dtype), gw, gb


@_batch_norm_relu_backward_op.register_fake
def _batch_norm_relu_backward_fake(grad_out, x, weight, bias, mean, var, eps, batch_stats):
    return x.new_empty(x.shape), mean.new_empty(mean.shape), mean.new_empty(mean.shape)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, running_mean, running_var, eps = inputs
    _, mean, var = output
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.eps = eps
    ctx.batch_stats = running_mean is None
    ctx.mark_non_differentiable(mean, var)


def _backward(ctx, grad_out, _grad_mean, _grad_var):
    x, weight, bias, mean, var = ctx.saved_tensors
    gx, gw, gb = _batch_norm_relu_backward_op(grad_out, x, weight, bias, mean, var, ctx.eps,
                                              ctx.batch_stats)
    gw = None if weight is None else gw.to(weight.dtype)
    gb = None if bias is None else gb.to(bias.dtype)
    return gx, gw, gb, None, None, None


_batch_norm_relu_op.register_autograd(_backward, setup_context=_setup_context)


class DirectBatchNormRelu(torch.autograd.Function):
    """The C++ kernels without the custom op's per-call overhead: the "direct" route of
    :func:`unimri_kernels.dispatch.route`
    (:func:`unimri.nn.norm_act.norm_relu` uses it outside ``torch.compile``). In training the
    running statistics, when given, are updated in place by ``factor`` (see
    ``batch_norm_relu_cpu``). Returns relu(batch_norm(x)) only."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training: bool, factor: float,
                eps: float):
        out, mean, var = cpp_ops().batch_norm_relu_cpu(x, weight, bias, running_mean, running_var,
                                                      training, factor, eps)
        ctx.save_for_backward(x, weight, bias, mean, var)
        ctx.eps, ctx.training = eps, training
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, var = ctx.saved_tensors
        gx, gw, gb = cpp_ops().batch_norm_relu_backward_cpu(grad_out, x, weight, bias, mean, var,
                                                            ctx.eps, ctx.training)
        gw = None if weight is None else gw.to(weight.dtype)
        gb = None if bias is None else gb.to(bias.dtype)
        return gx, gw, gb, None, None, None, None, None


def batch_norm_relu(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                    running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
                    eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(relu(batch_norm(x)), mean, var)``; see the module docstring. Running statistics are
    read, never updated (the caller updates them from the returned batch statistics)."""
    check_batch_norm_relu_inputs(x, weight, bias, running_mean, running_var, eps)
    return _batch_norm_relu_op(x, weight, bias, running_mean, running_var, float(eps))


__all__ = ["DirectBatchNormRelu", "batch_norm_relu", "check_batch_norm_relu_inputs"]
