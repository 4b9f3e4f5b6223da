"""``unimri::attention_gate``: the fused grid attention gate (SAS) as a custom op.

Forward ``(y, alpha) = attention_gate(x, g, theta_weight, phi_weight, phi_bias, psi_weight,
psi_bias, subsample, focal)`` with the maths of
:mod:`unimri_kernels.reference.attention_gate`. Shapes (``d`` = 2 or 3 spatial dims):

* x (B, Cx, *S), g (B, Cg, *Sg) with any Sg (resampled to the coarse grid when it differs)
* theta_weight (Ci, Cx, s, ..., s), phi_weight (Ci, Cg), phi_bias (Ci,),
  psi_weight (Ci,), psi_bias (1,)
* y (B, Cx, *S), alpha (B, 1, *S)

What is fused (C++ and Triton alike): per tile of coarse pixels, ``theta x`` and ``phi g``
(with ``g`` resampled in-tile) are computed into a tile-local buffer, followed by add,
ReLU, the ``psi`` projection, sigmoid and ``** focal``; only the coarse attention
(B, 1, *Sc) leaves the tile, so the (B, Ci, *Sc) inter-channel tensor is never written.
A second sweep resamples alpha to x's grid and scales x. Autograd saves only the inputs:
``unimri::attention_gate_backward`` recomputes the pre-activation tile by tile (the C++
kernel in one tile pass that also folds d alpha into the coarse gradient, then a second
that writes every gradient once; see csrc/attention_gate.cpp).
"""
from __future__ import annotations

import math

import torch

from unimri_kernels.dispatch import backend_for, cpp_ops
from unimri_kernels.reference.attention_gate import attention_gate_reference, coarse_shape

_SHAPE_HELP = "(B, C, H, W) or (B, C, D, H, W)"


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_attention_gate_inputs(
    x: torch.Tensor,
    g: torch.Tensor,
    theta_weight: torch.Tensor,
    phi_weight: torch.Tensor,
    phi_bias: torch.Tensor,
    psi_weight: torch.Tensor,
    psi_bias: torch.Tensor,
    subsample: int,
    focal: float,
) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument when the inputs do not fit."""
    named = {"x": x, "g": g, "theta_weight": theta_weight, "phi_weight": phi_weight,
             "phi_bias": phi_bias, "psi_weight": psi_weight, "psi_bias": psi_bias}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention_gate: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"attention_gate: {name} must be a floating-point tensor, got {t.dtype}")
        if t.dtype != x.dtype:
            raise TypeError(f"attention_gate: {name} has dtype {t.dtype} but x has {x.dtype}")
        if t.device != x.device:
            raise ValueError(f"attention_gate: {name} is on {t.device} but x is on {x.device}")
    if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
        raise ValueError(f"attention_gate: subsample must be an int >= 1, got {subsample!r}")
    if not isinstance(focal, (int, float)) or not math.isfinite(focal) or focal <= 0:
        raise ValueError(f"attention_gate: focal must be a finite number > 0, got {focal!r}")
    if x.dim() not in (4, 5):
        raise ValueError(f"attention_gate: x must be {_SHAPE_HELP}, got shape {_shape(x)}")
    d = x.dim() - 2
    if g.dim() != x.dim():
        raise ValueError(
            f"attention_gate: g must have x's rank {x.dim()} ({d}D), got shape {_shape(g)} "
            f"for x of shape {_shape(x)}")
    if g.shape[0] != x.shape[0]:
        raise ValueError(
            f"attention_gate: g's batch size {g.shape[0]} differs from x's {x.shape[0]} "
            f"(x {_shape(x)}, g {_shape(g)})")
    if any(n < subsample for n in x.shape[2:]):
        raise ValueError(
            f"attention_gate: every spatial size of x must be >= subsample={subsample}, "
            f"got x of shape {_shape(x)}")
    if any(n < 1 for n in g.shape[2:]) or x.shape[0] < 1:
        raise ValueError(f"attention_gate: empty x {_shape(x)} or g {_shape(g)}")
    ci = theta_weight.shape[0] if theta_weight.dim() > 0 else -1
    want_theta = (ci, x.shape[1]) + (subsample,) * d
    if theta_weight.dim() != d + 2 or _shape(theta_weight) != want_theta or ci < 1:
        raise ValueError(
            f"attention_gate: theta_weight must be (inter_channels, x channels, "
            f"{', '.join(['subsample'] * d)}) = (Ci, {x.shape[1]}, "
            f"{', '.join([str(subsample)] * d)}), got {_shape(theta_weight)}")
    if _shape(phi_weight) != (ci, g.shape[1]):
        raise ValueError(
            f"attention_gate: phi_weight must be (inter_channels={ci}, g channels={g.shape[1]}), "
            f"got {_shape(phi_weight)}")
    if _shape(phi_bias) != (ci,):
        raise ValueError(f"attention_gate: phi_bias must be ({ci},), got {_shape(phi_bias)}")
    if _shape(psi_weight) != (ci,):
        raise ValueError(f"attention_gate: psi_weight must be ({ci},), got {_shape(psi_weight)}")
    if psi_bias.numel() != 1 or psi_bias.dim() > 1:
        raise ValueError(f"attention_gate: psi_bias must be (1,), got {_shape(psi_bias)}")


def _reference_forward(x, g, tw, pw, pb, sw, sb, subsample, focal):
    """Reference forward in fp32 for half/bf16 inputs (fp32 accumulation), else as is."""
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    args = [t.to(compute) for t in (x, g, tw, pw, pb, sw, sb.reshape(1))]
    with torch.no_grad():
        y, alpha = attention_gate_reference(*args, subsample=subsample, focal=focal)
    return y.to(x.dtype), alpha.to(x.dtype)


@torch.library.custom_op("unimri::attention_gate", mutates_args=(), device_types=("cpu", "cuda"))
def _attention_gate_op(
    x: torch.Tensor,
    g: torch.Tensor,
    theta_weight: torch.Tensor,
    phi_weight: torch.Tensor,
    phi_bias: torch.Tensor,
    psi_weight: torch.Tensor,
    psi_bias: torch.Tensor,
    subsample: int,
    focal: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    check_attention_gate_inputs(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                subsample, focal)
    args = [t.contiguous() for t in (x, g, theta_weight, phi_weight, phi_bias, psi_weight,
                                     psi_bias.reshape(1))]
    backend = backend_for(x)
    if backend == "cpp":
        y, alpha = cpp_ops().attention_gate_cpu(*args, subsample, float(focal))
        return y, alpha
    if backend == "triton":
        from unimri_kernels.triton.attention_gate import attention_gate_forward

        return attention_gate_forward(*args, subsample=subsample, focal=float(focal))
    return _reference_forward(*args, subsample, focal)


@_attention_gate_op.register_fake
def _attention_gate_fake(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                         subsample, focal):
    check_attention_gate_inputs(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                subsample, focal)
    alpha_shape = (x.shape[0], 1) + tuple(x.shape[2:])
    # contiguous like the kernels' outputs, whatever x's memory format (e.g. channels_last)
    return x.new_empty(x.shape), x.new_empty(alpha_shape)


def _reference_backward(grad_y, grad_alpha, x, g, tw, pw, pb, sw, sb, subsample, focal):
    """Gradients by autograd through the reference (recomputes the forward), fp32 for
    half/bf16 inputs."""
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    inputs = [t.detach().to(compute) for t in (x, g, tw, pw, pb, sw, sb)]

    def forward(*leaves):
        return attention_gate_reference(*leaves, subsample=subsample, focal=focal)

    # torch.func.vjp: plain autograd is switched off below the custom op's autograd key.
    _, vjp = torch.func.vjp(forward, *inputs)
    grads = vjp((grad_y.to(compute), grad_alpha.to(compute)))
    return tuple((torch.zeros_like(t) if gr is None else gr).to(t.dtype)
                 for gr, t in zip(grads, (x, g, tw, pw, pb, sw, sb)))


@torch.library.custom_op("unimri::attention_gate_backward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _attention_gate_backward_op(
    grad_y: torch.Tensor,
    grad_alpha: torch.Tensor,
    x: torch.Tensor,
    g: torch.Tensor,
    theta_weight: torch.Tensor,
    phi_weight: torch.Tensor,
    phi_bias: torch.Tensor,
    psi_weight: torch.Tensor,
    psi_bias: torch.Tensor,
    subsample: int,
    focal: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor]:
    """(grad_x, grad_g, grad_theta_weight, grad_phi_weight, grad_phi_bias, grad_psi_weight,
    grad_psi_bias), each shaped like its input (grad_psi_bias (1,))."""
    args = [t.contiguous() for t in (grad_y, grad_alpha, x, g, theta_weight, phi_weight,
                                     phi_bias, psi_weight, psi_bias.reshape(1))]
    backend = backend_for(x)
    if backend == "cpp":
        return tuple(cpp_ops().attention_gate_backward_cpu(*args, subsample, float(focal)))
    if backend == "triton":
        from unimri_kernels.triton.attention_gate import attention_gate_backward

        return attention_gate_backward(*args, subsample=subsample, focal=float(focal))
    return _reference_backward(*args, subsample, focal)


@_attention_gate_backward_op.register_fake
def _attention_gate_backward_fake(grad_y, grad_alpha, x, g, theta_weight, phi_weight, phi_bias,
                                  psi_weight, psi_bias, subsample, focal):
    return tuple(t.new_empty(t.shape) for t in (x, g, theta_weight, phi_weight, phi_bias,
                                                 psi_weight)) + (psi_bias.new_empty((1,)),)


def _setup_context(ctx, inputs, output) -> None:
    x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal = inputs
    ctx.save_for_backward(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias)
    ctx.subsample = subsample
    ctx.focal = focal
    ctx.psi_bias_shape = psi_bias.shape


def _backward(ctx, grad_y, grad_alpha):
    x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias = ctx.saved_tensors
    grads = _attention_gate_backward_op(grad_y, grad_alpha, x, g, theta_weight, phi_weight,
                                        phi_bias, psi_weight, psi_bias, ctx.subsample, ctx.focal)
    gx, gg, gtw, gpw, gpb, gsw, gsb = grads
    return gx, gg, gtw, gpw, gpb, gsw, gsb.reshape(ctx.psi_bias_shape), None, None


_attention_gate_op.register_autograd(_backward, setup_context=_setup_context)


def autocast_inputs(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The gate's mixed-precision policy: under ``torch.autocast`` for the inputs' device type
    the gate runs in the autocast dtype, like the convolutions it fuses. Float32 tensors
    (activations and parameters alike) are cast to that dtype; the casts are differentiable,
    so fp32 parameters receive fp32 gradients. Other dtypes (fp64, already-half) are left as
    they are, as autocast does. Outside autocast nothing is cast and every input must share
    ``x``'s dtype. Kernels accumulate in fp32 whatever the input dtype.
    """
    device_type = tensors[0].device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t.dtype == torch.float32 else t for t in tensors)


def attention_gate(
    x: torch.Tensor,
    g: torch.Tensor,
    theta_weight: torch.Tensor,
    phi_weight: torch.Tensor,
    phi_bias: torch.Tensor,
    psi_weight: torch.Tensor,
    psi_bias: torch.Tensor,
    subsample: int = 2,
    focal: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused grid attention gate: ``(y, alpha)``, y (B, Cx, *S) = alpha * x, alpha (B, 1, *S).

    See the module docstring for shapes; ``g`` may be on any grid (same rank as ``x``).
    Under ``torch.autocast`` the gate runs in the autocast dtype (see :func:`autocast_inputs`);
    y and alpha then have that dtype.
    """
    if all(isinstance(t, torch.Tensor) for t in (x, g, theta_weight, phi_weight, phi_bias,
                                                  psi_weight, psi_bias)):
        x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias = autocast_inputs(
            x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias)
    check_attention_gate_inputs(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                subsample, focal)
    return _attention_gate_op(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                              int(subsample), float(focal))


__all__ = ["attention_gate", "autocast_inputs", "check_attention_gate_inputs", "coarse_shape"]
