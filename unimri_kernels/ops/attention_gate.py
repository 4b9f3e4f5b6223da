"""``unimri::attention_gate``: the fused grid attention gate (SAS) as a custom op.

Forward ``(y, alpha) = attention_gate(x, g, theta_weight, phi_weight, phi_bias, psi_weight,
psi_bias, subsample, focal)`` with the maths of
:mod:`unimri_kernels.reference.attention_gate`. Below the public function the parameters travel
as one :class:`GateParams`; the custom op's schema takes them flat. Shapes (``d`` = 2 or 3
spatial dims):

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
from dataclasses import dataclass
from typing import NamedTuple

import torch

from unimri_kernels.dispatch import backend_for, cpp_ops
from unimri_kernels.reference.attention_gate import attention_gate_reference, coarse_shape

_SHAPE_HELP = "(B, C, H, W) or (B, C, D, H, W)"


@dataclass(frozen=True)
class GateShape:
    """The sizes of one attention-gate problem: x (batch, cx, *size), g (batch, cg, *g_size),
    ci inter channels, theta's subsample factor (tests and the compile check build on it)."""

    batch: int
    cx: int
    cg: int
    ci: int
    size: tuple[int, ...]
    g_size: tuple[int, ...]
    subsample: int


class GateParams(NamedTuple):
    """The parameters of one attention gate, or of Gn gates stacked along a leading dimension
    (:mod:`unimri_kernels.ops.attention_gates`):

    * theta_weight (Ci, Cx, s, ..., s), stacked (Gn, Ci, Cx, s, ..., s)
    * phi_weight (Ci, Cg), stacked (Gn, Ci, Cg)
    * phi_bias (Ci,), stacked (Gn, Ci)
    * psi_weight (Ci,), stacked (Gn, Ci)
    * psi_bias (1,), stacked (Gn,)
    * subsample s (int >= 1) and focal f (> 0)
    """

    theta_weight: torch.Tensor
    phi_weight: torch.Tensor
    phi_bias: torch.Tensor
    psi_weight: torch.Tensor
    psi_bias: torch.Tensor
    subsample: int = 2
    focal: float = 1.0

    @classmethod
    def from_flat(cls, flat_params, one_gate: bool = False) -> "GateParams":
        """The bundle of a custom op's flat parameters (as its schema takes them), contiguous,
        with focal as a float; ``one_gate``: psi_bias as (1,), as the single-gate kernels take it."""
        params = cls(*flat_params)
        if one_gate:
            params = params._replace(psi_bias=params.psi_bias.reshape(1))
        return params.normalized().contiguous()

    @property
    def weights(self) -> tuple[torch.Tensor, ...]:
        """The five tensors, in the schemas' order."""
        return tuple(self[:5])

    def with_weights(self, *weights: torch.Tensor) -> "GateParams":
        """The same gate(s) with other tensors (e.g. cast or made contiguous) in place of the five."""
        return GateParams(*weights, self.subsample, self.focal)

    def normalized(self) -> "GateParams":
        """subsample as ``int`` and focal as ``float``, as the schemas take them."""
        return self._replace(subsample=int(self.subsample), focal=float(self.focal))

    def contiguous(self) -> "GateParams":
        return self.with_weights(*(t.contiguous() for t in self.weights))

    def gate(self, k: int) -> "GateParams":
        """Gate ``k`` of stacked parameters, shaped as the single-gate op takes them."""
        return self.with_weights(self.theta_weight[k], self.phi_weight[k], self.phi_bias[k],
                                 self.psi_weight[k], self.psi_bias[k:k + 1])

    @property
    def num_gates(self) -> int:
        """Gn of stacked parameters."""
        return self.theta_weight.shape[0]


#: The gate parameters as the custom ops' schemas spell them (schemas take flat tensors and
#: scalars; everything above and below a schema passes one :class:`GateParams`).
_GATE_SCHEMA = ("Tensor theta_weight, Tensor phi_weight, Tensor phi_bias, Tensor psi_weight, "
                "Tensor psi_bias, SymInt subsample, float focal")


def gate_custom_op(name: str, inputs: str, outputs: str):
    """``torch.library.custom_op`` decorator for ``unimri::<name>`` whose schema is
    ``(<inputs>, <the gate parameters>) -> <outputs>``; the decorated function receives the
    parameters flat after the inputs (``*flat_params``, see :meth:`GateParams.from_flat`)."""
    return torch.library.custom_op(f"unimri::{name}", mutates_args=(), device_types=("cpu", "cuda"),
                                   schema=f"({inputs}, {_GATE_SCHEMA}) -> {outputs}")


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_tensors(op: str, named: dict[str, object], like: torch.Tensor) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument unless every value in ``named`` is
    a floating-point tensor of ``like``'s dtype and device (``op`` prefixes the message)."""
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
        if t.dtype != like.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but x has {like.dtype}")
        if t.device != like.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {like.device}")


def check_attention_gate_inputs(x: torch.Tensor, g: torch.Tensor, params: GateParams) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument when the inputs do not fit."""
    theta_weight, phi_weight, phi_bias, psi_weight, psi_bias, subsample, focal = params
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"attention_gate: x must be a torch.Tensor, got {type(x).__name__}")
    _check_tensors("attention_gate", {"x": x, "g": g, **dict(zip(GateParams._fields, params.weights))}, x)
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


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The reference's dtype for x: float32 for half/bf16 (fp32 accumulation), else x's."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _reference_forward(x: torch.Tensor, g: torch.Tensor, params: GateParams
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference forward in fp32 for half/bf16 inputs (fp32 accumulation), else as is."""
    compute = compute_dtype(x)
    weights = [t.to(compute) for t in params.weights[:4]] + [params.psi_bias.to(compute).reshape(1)]
    with torch.no_grad():
        y, alpha = attention_gate_reference(x.to(compute), g.to(compute), *weights,
                                            subsample=params.subsample, focal=params.focal)
    return y.to(x.dtype), alpha.to(x.dtype)


@gate_custom_op("attention_gate", "Tensor x, Tensor g", "(Tensor, Tensor)")
def _attention_gate_op(x: torch.Tensor, g: torch.Tensor, *flat_params) -> tuple[torch.Tensor, torch.Tensor]:
    params = GateParams.from_flat(flat_params, one_gate=True)
    x, g = x.contiguous(), g.contiguous()
    backend = backend_for(x)
    if backend == "cpp":
        y, alpha = cpp_ops().attention_gate_cpu(x, g, *params)
        return y, alpha
    if backend == "triton":
        from unimri_kernels.triton.attention_gate import attention_gate_forward

        return attention_gate_forward(x, g, *params.weights, subsample=params.subsample,
                                      focal=params.focal)
    return _reference_forward(x, g, params)


@_attention_gate_op.register_fake
def _attention_gate_fake(x, g, *flat_params):
    check_attention_gate_inputs(x, g, GateParams(*flat_params))
    alpha_shape = (x.shape[0], 1) + tuple(x.shape[2:])
    # contiguous like the kernels' outputs, whatever x's memory format (e.g. channels_last)
    return x.new_empty(x.shape), x.new_empty(alpha_shape)


def _reference_backward(grad_y: torch.Tensor, grad_alpha: torch.Tensor, x: torch.Tensor,
                        g: torch.Tensor, params: GateParams) -> tuple[torch.Tensor, ...]:
    """Gradients by autograd through the reference (recomputes the forward), fp32 for
    half/bf16 inputs."""
    compute = compute_dtype(x)
    originals = (x, g, *params.weights)
    inputs = [t.detach().to(compute) for t in originals]

    def forward(*leaves):
        return attention_gate_reference(*leaves, subsample=params.subsample, focal=params.focal)

    # torch.func.vjp: plain autograd is switched off below the custom op's autograd key.
    _, vjp = torch.func.vjp(forward, *inputs)
    grads = vjp((grad_y.to(compute), grad_alpha.to(compute)))
    return tuple((torch.zeros_like(t) if gr is None else gr).to(t.dtype)
                 for gr, t in zip(grads, originals))


@gate_custom_op("attention_gate_backward", "Tensor grad_y, Tensor grad_alpha, Tensor x, Tensor g",
                "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
def _attention_gate_backward_op(grad_y: torch.Tensor, grad_alpha: torch.Tensor, x: torch.Tensor,
                                g: torch.Tensor, *flat_params) -> tuple[torch.Tensor, ...]:
    """(grad_x, grad_g, grad_theta_weight, grad_phi_weight, grad_phi_bias, grad_psi_weight,
    grad_psi_bias), each shaped like its input (grad_psi_bias (1,))."""
    params = GateParams.from_flat(flat_params, one_gate=True)
    grad_y, grad_alpha, x, g = (t.contiguous() for t in (grad_y, grad_alpha, x, g))
    backend = backend_for(x)
    if backend == "cpp":
        return tuple(cpp_ops().attention_gate_backward_cpu(grad_y, grad_alpha, x, g, *params))
    if backend == "triton":
        from unimri_kernels.triton.attention_gate import attention_gate_backward

        return attention_gate_backward(grad_y, grad_alpha, x, g, *params.weights,
                                       subsample=params.subsample, focal=params.focal)
    return _reference_backward(grad_y, grad_alpha, x, g, params)


@_attention_gate_backward_op.register_fake
def _attention_gate_backward_fake(grad_y, grad_alpha, x, g, *flat_params):
    weights = GateParams(*flat_params).weights
    return tuple(t.new_empty(t.shape) for t in (x, g, *weights[:4])) + (weights[4].new_empty((1,)),)


def _setup_context(ctx, inputs, output) -> None:
    x, g, *weights, subsample, focal = inputs
    ctx.save_for_backward(x, g, *weights)
    ctx.subsample = subsample
    ctx.focal = focal
    ctx.psi_bias_shape = weights[4].shape


def _backward(ctx, grad_y, grad_alpha):
    x, g, *weights = ctx.saved_tensors
    grads = _attention_gate_backward_op(grad_y, grad_alpha, x, g, *weights, ctx.subsample, ctx.focal)
    gx, gg, gtw, gpw, gpb, gsw, gsb = grads
    return gx, gg, gtw, gpw, gpb, gsw, gsb.reshape(ctx.psi_bias_shape), None, None


_attention_gate_op.register_autograd(_backward, setup_context=_setup_context)


def attention_gate_op(x: torch.Tensor, g: torch.Tensor, params: GateParams
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The custom op ``unimri::attention_gate`` on checked inputs (its schema takes the
    parameters flat)."""
    return _attention_gate_op(x, g, *params.normalized())


def attention_gate_backward_op(grad_y: torch.Tensor, grad_alpha: torch.Tensor, x: torch.Tensor,
                               g: torch.Tensor, params: GateParams) -> tuple[torch.Tensor, ...]:
    """The custom op ``unimri::attention_gate_backward``: the seven gradients of
    :func:`attention_gate_op`."""
    return _attention_gate_backward_op(grad_y, grad_alpha, x, g, *params.normalized())


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


def autocast_gate(x: torch.Tensor, g: torch.Tensor, params: GateParams
                  ) -> tuple[torch.Tensor, torch.Tensor, GateParams]:
    """``(x, g, params)`` after :func:`autocast_inputs` (unchanged unless every one is a tensor;
    the checks then say which is not)."""
    tensors = (x, g, *params.weights)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return x, g, params
    x, g, *weights = autocast_inputs(*tensors)
    return x, g, params.with_weights(*weights)


def attention_gate(x: torch.Tensor, g: torch.Tensor, theta_weight: torch.Tensor, phi_weight: torch.Tensor,
                   phi_bias: torch.Tensor, psi_weight: torch.Tensor, psi_bias: torch.Tensor,
                   subsample: int = 2, focal: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused grid attention gate: ``(y, alpha)``, y (B, Cx, *S) = alpha * x, alpha (B, 1, *S).

    See the module docstring for shapes; ``g`` may be on any grid (same rank as ``x``).
    Under ``torch.autocast`` the gate runs in the autocast dtype (see :func:`autocast_inputs`);
    y and alpha then have that dtype. :func:`gate` takes the parameters as one
    :class:`GateParams`.
    """
    return gate(x, g, GateParams(theta_weight, phi_weight, phi_bias, psi_weight, psi_bias,
                                 subsample, focal))


def gate(x: torch.Tensor, g: torch.Tensor, params: GateParams) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_gate` with its parameters as one bundle: autocast, the checks (once),
    then the custom op (every route: it has no separate direct Function)."""
    x, g, params = autocast_gate(x, g, params)
    check_attention_gate_inputs(x, g, params)
    return attention_gate_op(x, g, params)


__all__ = ["GateParams", "attention_gate", "attention_gate_backward_op", "attention_gate_op",
           "autocast_gate", "autocast_inputs", "check_attention_gate_inputs", "coarse_shape",
           "compute_dtype", "gate", "gate_custom_op"]
