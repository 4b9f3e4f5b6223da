"""``unimri::pointwise_conv``: a 1x1 convolution with few output channels (segmentation
heads) as one op.

``out = pointwise_conv(x, weight, bias)`` with x (B, C_in, *S), weight (C_out, C_in), bias
(C_out,) or None; the maths of :mod:`unimri_kernels.reference.pointwise_conv`. Output in x's
dtype; weight and bias may be in another floating dtype (their gradients come back in it).

On CPU (C++): x is read once in tiles that stay in L1 and each output row accumulated from
them with vector FMAs (float32 for half/bf16 x); the backward writes grad_x the same way with
the transposed weight and reduces the weight and bias gradients per tile, then over tiles in
float64 in a fixed order. oneDNN's 1x1 convolution with two output channels reorders NCHW
tensors: 23.7 against 2.0 ms forward + backward at x (8, 16, 128, 128) fp32 on a 2-core Xeon
(AVX-512). Other devices and ``UNIMRI_BACKEND=reference`` run the reference.
"""
from __future__ import annotations

import torch

from unimri_kernels.dispatch import backend_for, cpp_ops
from unimri_kernels.reference.pointwise_conv import pointwise_conv_reference


def check_pointwise_conv_inputs(x, weight, bias) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument when the inputs do not fit."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is None and name == "bias":
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"pointwise_conv: {name} must be a floating-point tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")
    if x.dim() < 3 or x.shape[0] * x.shape[1] == 0:
        raise ValueError(f"pointwise_conv: x must be a non-empty (B, C_in, *S) tensor, got shape "
                         f"{tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[1] or weight.shape[0] == 0:
        raise ValueError(f"pointwise_conv: weight must be (C_out, {x.shape[1]}) for x of shape "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"pointwise_conv: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"pointwise_conv: {name} is on {t.device} but x is on {x.device}")


def _out_shape(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[0], weight.shape[0], *x.shape[2:])


@torch.library.custom_op("unimri::pointwise_conv", mutates_args=(), device_types=("cpu", "cuda"))
def _pointwise_conv_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    check_pointwise_conv_inputs(x, weight, bias)
    if backend_for(x) == "cpp":
        return cpp_ops().pointwise_conv_cpu(x.contiguous(), weight, bias)
    with torch.no_grad():
        return pointwise_conv_reference(x, weight, bias)


@_pointwise_conv_op.register_fake
def _pointwise_conv_fake(x, weight, bias):
    check_pointwise_conv_inputs(x, weight, bias)
    return x.new_empty(_out_shape(x, weight))


@torch.library.custom_op("unimri::pointwise_conv_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _pointwise_conv_backward_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x in x's dtype, grad_weight and grad_bias in weight's dtype)."""
    if backend_for(x) == "cpp":
        gx, gw, gb = cpp_ops().pointwise_conv_backward_cpu(grad_out.contiguous(), x.contiguous(), weight)
        return gx, gw.to(weight.dtype), gb.to(weight.dtype)
    compute = torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32
    g, xc, w = grad_out.to(compute), x.to(compute), weight.detach().to(compute)
    gx = torch.einsum("oi,bo...->bi...", w, g).to(x.dtype)
    gw = torch.einsum("bo...,bi...->oi", g, xc).to(weight.dtype)
    return gx, gw, g.sum([0, *range(2, g.dim())]).to(weight.dtype)


@_pointwise_conv_backward_op.register_fake
def _pointwise_conv_backward_fake(grad_out, x, weight):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape[:1])


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    gx, gw, gb = _pointwise_conv_backward_op(grad_out, x, weight)
    return gx, gw, gb if ctx.has_bias else None


_pointwise_conv_op.register_autograd(_backward, setup_context=_setup_context)


class DirectPointwiseConv(torch.autograd.Function):
    """The C++ kernels without the custom op's per-call overhead (the "direct" route of
    :func:`unimri_kernels.dispatch.route`), on CPU with
    contiguous x (:class:`unimri.nn.pointwise.PointwiseConv2d` uses it outside
    ``torch.compile``)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return cpp_ops().pointwise_conv_cpu(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        gx, gw, gb = cpp_ops().pointwise_conv_backward_cpu(grad_out.contiguous(), x, weight)
        return gx, gw.to(weight.dtype), gb.to(weight.dtype) if ctx.has_bias else None


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The 1x1 convolution of x (B, C_in, *S) by weight (C_out, C_in) (+ bias (C_out,)), as the
    custom op; see the module docstring."""
    check_pointwise_conv_inputs(x, weight, bias)
    return _pointwise_conv_op(x, weight, bias)


__all__ = ["DirectPointwiseConv", "check_pointwise_conv_inputs", "pointwise_conv"]
