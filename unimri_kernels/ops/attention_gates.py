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

from unimri_kernels.dispatch import backend_for, cpp_ops, route
from unimri_kernels.ops.attention_gate import (
    GateParams,
    attention_gate_backward_op,
    attention_gate_op,
    autocast_gate,
    check_attention_gate_inputs,
    gate_custom_op,
)


def check_attention_gates_inputs(x: torch.Tensor, g: torch.Tensor, params: GateParams) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument when the inputs do not fit."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"attention_gates: x must be a torch.Tensor, got {type(x).__name__}")
    for name, t in zip(GateParams._fields, params.weights):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention_gates: {name} must be a torch.Tensor, got {type(t).__name__}")
    theta_weight = params.theta_weight
    if theta_weight.dim() != x.dim() + 1 or theta_weight.shape[0] < 1:
        raise ValueError(
            f"attention_gates: theta_weight must be (gates, inter_channels, x channels, "
            f"subsample, ...) with {x.dim() + 1} dimensions for x of shape {tuple(x.shape)}, "
            f"got {tuple(theta_weight.shape)}")
    gates = theta_weight.shape[0]
    for name, t, rank in (("phi_weight", params.phi_weight, 3), ("phi_bias", params.phi_bias, 2),
                          ("psi_weight", params.psi_weight, 2), ("psi_bias", params.psi_bias, 1)):
        if t.dim() != rank or t.shape[0] != gates:
            raise ValueError(
                f"attention_gates: {name} must have {rank} dimensions, the first the number of "
                f"gates {gates} (from theta_weight {tuple(theta_weight.shape)}), got {tuple(t.shape)}")
    # every gate's slice has the same shape: checking the first checks them all
    check_attention_gate_inputs(x, g, params.gate(0))


@gate_custom_op("attention_gates", "Tensor x, Tensor g", "(Tensor, Tensor)")
def _attention_gates_op(x: torch.Tensor, g: torch.Tensor, *flat_params) -> tuple[torch.Tensor, torch.Tensor]:
    params = GateParams.from_flat(flat_params)
    x, g = x.contiguous(), g.contiguous()
    if backend_for(x) == "cpp":
        y, alpha = cpp_ops().attention_gates_cpu(x, g, *params)
        return y, alpha
    ys, alphas = zip(*(attention_gate_op(x, g, params.gate(k)) for k in range(params.num_gates)))
    return torch.stack(ys), torch.cat(alphas, dim=1)


@_attention_gates_op.register_fake
def _attention_gates_fake(x, g, *flat_params):
    params = GateParams(*flat_params)
    check_attention_gates_inputs(x, g, params)
    gates = params.num_gates
    return (x.new_empty((gates,) + tuple(x.shape)),
            x.new_empty((x.shape[0], gates) + tuple(x.shape[2:])))


@gate_custom_op("attention_gates_backward", "Tensor grad_y, Tensor grad_alpha, Tensor x, Tensor g",
                "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
def _attention_gates_backward_op(grad_y: torch.Tensor, grad_alpha: torch.Tensor, x: torch.Tensor,
                                 g: torch.Tensor, *flat_params) -> tuple[torch.Tensor, ...]:
    """(grad_x, grad_g, grad_theta_weight, grad_phi_weight, grad_phi_bias, grad_psi_weight,
    grad_psi_bias), each shaped like its input; grad_x and grad_g summed over the gates."""
    params = GateParams.from_flat(flat_params)
    grad_y, grad_alpha, x, g = (t.contiguous() for t in (grad_y, grad_alpha, x, g))
    if backend_for(x) == "cpp":
        return tuple(cpp_ops().attention_gates_backward_cpu(grad_y, grad_alpha, x, g, *params))
    per_gate = [attention_gate_backward_op(grad_y[k], grad_alpha[:, k:k + 1].contiguous(), x, g,
                                           params.gate(k))
                for k in range(params.num_gates)]
    grad_x = torch.stack([gr[0] for gr in per_gate]).sum(0)
    grad_g = torch.stack([gr[1] for gr in per_gate]).sum(0)
    weights = [torch.stack([gr[i] for gr in per_gate]) for i in range(2, 6)]
    grad_psi_bias = torch.cat([gr[6].reshape(1) for gr in per_gate])
    return grad_x, grad_g, *weights, grad_psi_bias


@_attention_gates_backward_op.register_fake
def _attention_gates_backward_fake(grad_y, grad_alpha, x, g, *flat_params):
    return tuple(t.new_empty(t.shape) for t in (x, g, *GateParams(*flat_params).weights))


def _setup_context(ctx, inputs, output) -> None:
    x, g, *weights, subsample, focal = inputs
    ctx.save_for_backward(x, g, *weights)
    ctx.subsample = subsample
    ctx.focal = focal


def _backward(ctx, grad_y, grad_alpha):
    grads = _attention_gates_backward_op(grad_y, grad_alpha, *ctx.saved_tensors, ctx.subsample,
                                         ctx.focal)
    return *grads, None, None


_attention_gates_op.register_autograd(_backward, setup_context=_setup_context)


@gate_custom_op("attention_gates_alpha", "Tensor x, Tensor g", "Tensor")
def _attention_gates_alpha_op(x: torch.Tensor, g: torch.Tensor, *flat_params) -> torch.Tensor:
    params = GateParams.from_flat(flat_params)
    x, g = x.contiguous(), g.contiguous()
    if backend_for(x) == "cpp":
        return cpp_ops().attention_gates_alpha_cpu(x, g, *params)
    return _attention_gates_op(x, g, *params)[1]


@_attention_gates_alpha_op.register_fake
def _attention_gates_alpha_fake(x, g, *flat_params):
    return _attention_gates_fake(x, g, *flat_params)[1]


@gate_custom_op("attention_gates_alpha_backward", "Tensor grad_alpha, Tensor x, Tensor g",
                "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
def _attention_gates_alpha_backward_op(grad_alpha: torch.Tensor, x: torch.Tensor, g: torch.Tensor,
                                       *flat_params) -> tuple[torch.Tensor, ...]:
    """The gradients of :func:`_attention_gates_backward_op` with no grad_y."""
    params = GateParams.from_flat(flat_params)
    grad_alpha, x, g = (t.contiguous() for t in (grad_alpha, x, g))
    if backend_for(x) == "cpp":
        return tuple(cpp_ops().attention_gates_alpha_backward_cpu(grad_alpha, x, g, *params))
    grad_y = x.new_zeros((params.num_gates, *x.shape))
    return _attention_gates_backward_op(grad_y, grad_alpha, x, g, *params)


@_attention_gates_alpha_backward_op.register_fake
def _attention_gates_alpha_backward_fake(grad_alpha, x, g, *flat_params):
    return _attention_gates_backward_fake(None, grad_alpha, x, g, *flat_params)


def _backward_alpha(ctx, grad_alpha):
    grads = _attention_gates_alpha_backward_op(grad_alpha, *ctx.saved_tensors, ctx.subsample,
                                               ctx.focal)
    return *grads, None, None


_attention_gates_alpha_op.register_autograd(_backward_alpha, setup_context=_setup_context)


class DirectAttentionGates(torch.autograd.Function):
    """The C++ kernels without the custom op's per-call overhead (about 0.9 ms per forward +
    backward, measured at the deepest SAS level of the benchmark UNet): the "direct" route of
    :func:`unimri_kernels.dispatch.route`. ``apply(x, g, *params)`` with checked, contiguous
    inputs: a :class:`GateParams` unpacked, since autograd tracks only the tensors passed to
    ``apply`` themselves."""

    @staticmethod
    def forward(ctx, x, g, *flat_params):
        params = GateParams(*flat_params)
        ctx.save_for_backward(x, g, *params.weights)
        ctx.subsample, ctx.focal = params.subsample, params.focal
        return tuple(cpp_ops().attention_gates_cpu(x, g, *params))

    @staticmethod
    def backward(ctx, grad_y, grad_alpha):
        x, g, *weights = ctx.saved_tensors
        grads = cpp_ops().attention_gates_backward_cpu(grad_y.contiguous(), grad_alpha.contiguous(), x, g,
                                                        *weights, ctx.subsample, ctx.focal)
        return *grads, None, None


class DirectAttentionGatesAlpha(torch.autograd.Function):
    """:class:`DirectAttentionGates` for the attention maps alone."""

    @staticmethod
    def forward(ctx, x, g, *flat_params):
        params = GateParams(*flat_params)
        # the activations that the backward would recompute are kept (saved_h, saved_coarse)
        alpha, saved_h, saved_coarse = cpp_ops().attention_gates_alpha_saving_cpu(x, g, *params)
        ctx.save_for_backward(x, g, *params.weights, saved_h, saved_coarse)
        ctx.subsample, ctx.focal = params.subsample, params.focal
        return alpha

    @staticmethod
    def backward(ctx, grad_alpha):
        x, g, *weights, saved_h, saved_coarse = ctx.saved_tensors
        grads = cpp_ops().attention_gates_alpha_backward_cpu(grad_alpha.contiguous(), x, g, *weights,
                                                              ctx.subsample, ctx.focal, None, saved_h,
                                                              saved_coarse)
        return *grads, None, None


def checked_gates(x: torch.Tensor, g: torch.Tensor, params: GateParams
                  ) -> tuple[torch.Tensor, torch.Tensor, GateParams]:
    """Autocast casts, then the checks (the one check of a call): ``(x, g, params)`` ready for a
    route, subsample and focal normalised."""
    x, g, params = autocast_gate(x, g, params)
    check_attention_gates_inputs(x, g, params)
    return x, g, params.normalized()


def _run_gates(direct: type[torch.autograd.Function], op, x: torch.Tensor, g: torch.Tensor,
               params: GateParams):
    """The direct C++ Function or the custom op (:func:`~unimri_kernels.dispatch.route`) on the
    output of :func:`checked_gates`."""
    if route(x) == "direct":
        return direct.apply(x.contiguous(), g.contiguous(), *params.contiguous())
    return op(x, g, *params)


def run_gates_alpha(x: torch.Tensor, g: torch.Tensor, params: GateParams) -> torch.Tensor:
    """:func:`gates_alpha` on the output of :func:`checked_gates` (no second check)."""
    return _run_gates(DirectAttentionGatesAlpha, _attention_gates_alpha_op, x, g, params)


def gates_alpha(x: torch.Tensor, g: torch.Tensor, params: GateParams) -> torch.Tensor:
    """The attention maps alpha (B, Gn, *S) of :func:`gates`, without forming y."""
    return run_gates_alpha(*checked_gates(x, g, params))


def gates(x: torch.Tensor, g: torch.Tensor, params: GateParams) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_gates` with the stacked parameters as one :class:`GateParams`."""
    return _run_gates(DirectAttentionGates, _attention_gates_op, *checked_gates(x, g, params))


def attention_gates_alpha(x, g, theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                          subsample: int = 2, focal: float = 1.0) -> torch.Tensor:
    """The attention maps alpha (B, Gn, *S) of :func:`attention_gates`, without forming y."""
    return gates_alpha(x, g, GateParams(theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                        subsample, focal))


def attention_gates(x: torch.Tensor, g: torch.Tensor, theta_weight: torch.Tensor, phi_weight: torch.Tensor,
                    phi_bias: torch.Tensor, psi_weight: torch.Tensor, psi_bias: torch.Tensor,
                    subsample: int = 2, focal: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gn fused grid attention gates on the same ``(x, g)``: ``(y, alpha)`` with
    y (Gn, B, Cx, *S), ``y[k] = alpha[:, k:k+1] * x``, and alpha (B, Gn, *S).

    See the module docstring for shapes. Under ``torch.autocast`` the gates run in the
    autocast dtype, as :func:`unimri_kernels.ops.attention_gate.attention_gate` does.
    """
    return gates(x, g, GateParams(theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                  subsample, focal))


__all__ = ["DirectAttentionGates", "DirectAttentionGatesAlpha", "attention_gates",
           "attention_gates_alpha", "check_attention_gates_inputs", "checked_gates", "gates",
           "gates_alpha", "run_gates_alpha"]
