"""``unimri::attention_gates``: Gn fused grid attention gates on the same ``(x, g)`` as one op
(selective attention). Maths: :mod:`unimri_kernels.reference.attention_gates` (each gate is
exactly ``unimri::attention_gate`` with its own parameters). Shapes (``d`` = 2 or 3):

* x (B, Cx, *S), g (B, Cg, *Sg); the gates' parameters stacked along a leading dimension:
  theta_weight (Gn, Ci, Cx, s, ..., s), phi_weight (Gn, Ci, Cg), phi_bias (Gn, Ci),
  psi_weight (Gn, Ci), psi_bias (Gn,)
* y (Gn, B, Cx, *S) with ``y[k] = alpha[:, k:k+1] * x``, alpha (B, Gn, *S)

:func:`attention_gates_alpha` returns alpha alone (``unimri::attention_gates_alpha``), for the
folded SAS head (:mod:`unimri_kernels.ops.sas_head`), which reads x and alpha instead of y:
the C++ forward then skips writing y and its backward reading grad_y.

On the CPU one kernel runs every gate: x's patches and g are gathered once per tile, one
matrix product gives all gates' pre-activations, and the backward sums the gates' x and g
gradients inside the kernel (see csrc/attention_gate_kernel.h). On CUDA (Triton) and with the
reference backend the single-gate kernels run gate after gate and their gradients are summed.
"""
from __future__ import annotations

import torch

from unimri_kernels.dispatch import backend_for, cpp_ops, eager_cpp_route
from unimri_kernels.ops.attention_gate import (
    _attention_gate_backward_op,
    _attention_gate_op,
    _shape,
    autocast_inputs,
    check_attention_gate_inputs,
)


def check_attention_gates_inputs(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                 subsample, focal) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument when the inputs do not fit."""
    named = {"theta_weight": theta_weight, "phi_weight": phi_weight, "phi_bias": phi_bias,
             "psi_weight": psi_weight, "psi_bias": psi_bias}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention_gates: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"attention_gates: x must be a torch.Tensor, got {type(x).__name__}")
    if theta_weight.dim() != x.dim() + 1 or theta_weight.shape[0] < 1:
        raise ValueError(
            f"attention_gates: theta_weight must be (gates, inter_channels, x channels, "
            f"subsample, ...) with {x.dim() + 1} dimensions for x of shape {_shape(x)}, "
            f"got {_shape(theta_weight)}")
    gates = theta_weight.shape[0]
    for name, t, rank in (("phi_weight", phi_weight, 3), ("phi_bias", phi_bias, 2),
                          ("psi_weight", psi_weight, 2), ("psi_bias", psi_bias, 1)):
        if t.dim() != rank or t.shape[0] != gates:
            raise ValueError(
                f"attention_gates: {name} must have {rank} dimensions, the first the number of "
                f"gates {gates} (from theta_weight {_shape(theta_weight)}), got {_shape(t)}")
    # every gate's slice has the same shape: checking the first checks them all
    check_attention_gate_inputs(x, g, theta_weight[0], phi_weight[0], phi_bias[0], psi_weight[0],
                                psi_bias[:1], subsample, focal)


def _per_gate(theta_weight, phi_weight, phi_bias, psi_weight, psi_bias):
    """The parameters of each gate, as the single-gate op takes them."""
    return [(theta_weight[k], phi_weight[k], phi_bias[k], psi_weight[k], psi_bias[k:k + 1])
            for k in range(theta_weight.shape[0])]


@torch.library.custom_op("unimri::attention_gates", mutates_args=(), device_types=("cpu", "cuda"))
def _attention_gates_op(
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
    check_attention_gates_inputs(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                 subsample, focal)
    args = [t.contiguous() for t in (x, g, theta_weight, phi_weight, phi_bias, psi_weight,
                                     psi_bias)]
    if backend_for(x) == "cpp":
        y, alpha = cpp_ops().attention_gates_cpu(*args, subsample, float(focal))
        return y, alpha
    ys, alphas = zip(*(_attention_gate_op(args[0], args[1], *params, subsample, focal)
                       for params in _per_gate(*args[2:])))
    return torch.stack(ys), torch.cat(alphas, dim=1)


@_attention_gates_op.register_fake
def _attention_gates_fake(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                          subsample, focal):
    check_attention_gates_inputs(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                 subsample, focal)
    gates = theta_weight.shape[0]
    return (x.new_empty((gates,) + tuple(x.shape)),
            x.new_empty((x.shape[0], gates) + tuple(x.shape[2:])))


@torch.library.custom_op("unimri::attention_gates_backward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _attention_gates_backward_op(
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
    grad_psi_bias), each shaped like its input; grad_x and grad_g summed over the gates."""
    args = [t.contiguous() for t in (grad_y, grad_alpha, x, g, theta_weight, phi_weight,
                                     phi_bias, psi_weight, psi_bias)]
    if backend_for(x) == "cpp":
        return tuple(cpp_ops().attention_gates_backward_cpu(*args, subsample, float(focal)))
    grad_y, grad_alpha, x, g = args[:4]
    per_gate = [_attention_gate_backward_op(grad_y[k], grad_alpha[:, k:k + 1].contiguous(), x, g,
                                            *params, subsample, focal)
                for k, params in enumerate(_per_gate(*args[4:]))]
    grad_x = torch.stack([gr[0] for gr in per_gate]).sum(0)
    grad_g = torch.stack([gr[1] for gr in per_gate]).sum(0)
    params = [torch.stack([gr[i] for gr in per_gate]) for i in range(2, 6)]
    grad_psi_bias = torch.cat([gr[6].reshape(1) for gr in per_gate])
    return grad_x, grad_g, *params, grad_psi_bias


@_attention_gates_backward_op.register_fake
def _attention_gates_backward_fake(grad_y, grad_alpha, x, g, theta_weight, phi_weight, phi_bias,
                                   psi_weight, psi_bias, subsample, focal):
    return tuple(t.new_empty(t.shape) for t in (x, g, theta_weight, phi_weight, phi_bias,
                                                 psi_weight, psi_bias))


def _setup_context(ctx, inputs, output) -> None:
    x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal = inputs
    ctx.save_for_backward(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias)
    ctx.subsample = subsample
    ctx.focal = focal


def _backward(ctx, grad_y, grad_alpha):
    grads = _attention_gates_backward_op(grad_y, grad_alpha, *ctx.saved_tensors, ctx.subsample,
                                         ctx.focal)
    return *grads, None, None


_attention_gates_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("unimri::attention_gates_alpha", mutates_args=(), device_types=("cpu", "cuda"))
def _attention_gates_alpha_op(
    x: torch.Tensor,
    g: torch.Tensor,
    theta_weight: torch.Tensor,
    phi_weight: torch.Tensor,
    phi_bias: torch.Tensor,
    psi_weight: torch.Tensor,
    psi_bias: torch.Tensor,
    subsample: int,
    focal: float,
) -> torch.Tensor:
    check_attention_gates_inputs(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                 subsample, focal)
    args = [t.contiguous() for t in (x, g, theta_weight, phi_weight, phi_bias, psi_weight,
                                     psi_bias)]
    if backend_for(x) == "cpp":
        return cpp_ops().attention_gates_alpha_cpu(*args, subsample, float(focal))
    return _attention_gates_op(*args, subsample, focal)[1]


@_attention_gates_alpha_op.register_fake
def _attention_gates_alpha_fake(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                subsample, focal):
    return _attention_gates_fake(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                 subsample, focal)[1]


@torch.library.custom_op("unimri::attention_gates_alpha_backward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _attention_gates_alpha_backward_op(
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
    """The gradients of :func:`_attention_gates_backward_op` with no grad_y."""
    args = [t.contiguous() for t in (grad_alpha, x, g, theta_weight, phi_weight, phi_bias,
                                     psi_weight, psi_bias)]
    if backend_for(x) == "cpp":
        return tuple(cpp_ops().attention_gates_alpha_backward_cpu(*args, subsample, float(focal)))
    grad_y = x.new_zeros((theta_weight.shape[0], *x.shape))
    return _attention_gates_backward_op(grad_y, *args, subsample, focal)


@_attention_gates_alpha_backward_op.register_fake
def _attention_gates_alpha_backward_fake(grad_alpha, x, g, theta_weight, phi_weight, phi_bias,
                                         psi_weight, psi_bias, subsample, focal):
    return _attention_gates_backward_fake(None, grad_alpha, x, g, theta_weight, phi_weight,
                                          phi_bias, psi_weight, psi_bias, subsample, focal)


def _backward_alpha(ctx, grad_alpha):
    grads = _attention_gates_alpha_backward_op(grad_alpha, *ctx.saved_tensors, ctx.subsample,
                                               ctx.focal)
    return *grads, None, None


_attention_gates_alpha_op.register_autograd(_backward_alpha, setup_context=_setup_context)


class EagerAttentionGates(torch.autograd.Function):
    """The C++ kernels without the custom op's per-call overhead (about 0.9 ms per forward +
    backward, measured at the deepest SAS level of the benchmark UNet), for eager mode on CPU
    (:func:`attention_gates` uses it outside ``torch.compile``). Inputs checked and
    contiguous."""

    @staticmethod
    def forward(ctx, x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample: int,
                focal: float):
        params = (theta_weight, phi_weight, phi_bias, psi_weight, psi_bias)
        ctx.save_for_backward(x, g, *params)
        ctx.subsample, ctx.focal = subsample, focal
        return tuple(cpp_ops().attention_gates_cpu(x, g, *params, subsample, focal))

    @staticmethod
    def backward(ctx, grad_y, grad_alpha):
        grads = cpp_ops().attention_gates_backward_cpu(grad_y.contiguous(), grad_alpha.contiguous(),
                                                        *ctx.saved_tensors, ctx.subsample, ctx.focal)
        return *grads, None, None


class EagerAttentionGatesAlpha(torch.autograd.Function):
    """:class:`EagerAttentionGates` for the attention maps alone."""

    @staticmethod
    def forward(ctx, x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample: int,
                focal: float):
        params = (theta_weight, phi_weight, phi_bias, psi_weight, psi_bias)
        # the activations that the backward would recompute are kept (saved_h, saved_coarse)
        alpha, saved_h, saved_coarse = cpp_ops().attention_gates_alpha_saving_cpu(x, g, *params, subsample, focal)
        ctx.save_for_backward(x, g, *params, saved_h, saved_coarse)
        ctx.subsample, ctx.focal = subsample, focal
        return alpha

    @staticmethod
    def backward(ctx, grad_alpha):
        *inputs, saved_h, saved_coarse = ctx.saved_tensors
        grads = cpp_ops().attention_gates_alpha_backward_cpu(grad_alpha.contiguous(), *inputs, ctx.subsample,
                                                              ctx.focal, None, saved_h, saved_coarse)
        return *grads, None, None


def _run_gates(eager_fn, op, x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
               subsample, focal):
    """Autocast casts, checks, then the eager C++ route (CPU, outside torch.compile) or the
    custom op."""
    if all(isinstance(t, torch.Tensor) for t in (x, g, theta_weight, phi_weight, phi_bias,
                                                  psi_weight, psi_bias)):
        x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias = autocast_inputs(
            x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias)
    check_attention_gates_inputs(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                 subsample, focal)
    if eager_cpp_route(x):
        args = [t.contiguous() for t in (x, g, theta_weight, phi_weight, phi_bias, psi_weight,
                                         psi_bias)]
        return eager_fn.apply(*args, int(subsample), float(focal))
    return op(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, int(subsample),
              float(focal))


def attention_gates_alpha(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                          subsample: int = 2, focal: float = 1.0) -> torch.Tensor:
    """The attention maps alpha (B, Gn, *S) of :func:`attention_gates`, without forming y."""
    return _run_gates(EagerAttentionGatesAlpha, _attention_gates_alpha_op, x, g, theta_weight,
                      phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal)


def attention_gates(
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
    """Gn fused grid attention gates on the same ``(x, g)``: ``(y, alpha)`` with
    y (Gn, B, Cx, *S), ``y[k] = alpha[:, k:k+1] * x``, and alpha (B, Gn, *S).

    See the module docstring for shapes. Under ``torch.autocast`` the gates run in the
    autocast dtype, as :func:`unimri_kernels.ops.attention_gate.attention_gate` does.
    """
    return _run_gates(EagerAttentionGates, _attention_gates_op, x, g, theta_weight, phi_weight,
                      phi_bias, psi_weight, psi_bias, subsample, focal)


__all__ = ["EagerAttentionGates", "EagerAttentionGatesAlpha", "attention_gates",
           "attention_gates_alpha", "check_attention_gates_inputs"]
