"""``unimri::sas_head``: the output side of selective attention folded into one op, reading the
gated inputs ``y_k = alpha_k * x`` through x and the gates' attention maps.

Per gate ``k`` the official block is ``u_k = BN_k(W_k y_k)`` with a 1x1 convolution ``W_k``;
the gates are merged by ``M [u_1; ...; u_K]`` (1x1 convolution, its norm and ReLU applied by
the caller). Batch norm is an affine map per channel, ``BN_k(z) = s_k z + t_k`` with
``s_k = gamma_k / sqrt(var_k + eps)`` and ``t_k = beta_k - mean_k s_k``, so

    P = M [u_1; ...; u_K] = sum_k A_k y_k + c,   A_k = M_k diag(s_k) W_k,   c = sum_k M_k t_k

with ``M_k`` the columns of M that read gate k. In training the batch statistics of
``z_k = W_k y_k`` follow from the moments of ``y_k`` (``mean_k = W_k m_k``,
``E[z_k^2]_i = w_i^T G_k w_i``, ``m_k = E[y_k]``, ``G_k = E[y_k y_k^T]``). The backward pass is
written out: the (C, C) chain rule in closed form, then ``grad y_k = A_k^T grad P +
2 dG_k y_k / n + dm_k / n``, ``grad x = sum_k alpha_k grad y_k`` and
``grad alpha_k = sum_c x grad y_k``.

Shapes: x (B, C, *S), alpha (B, K, *S), w (K, C, C), gamma and beta (K, C), merge
(C_out, K, C); returns ``P`` (B, C_out, *S) in x's dtype and the batch mean and biased variance
of every ``z_k`` (K, C) (for the running statistics). Ground truth:
:mod:`unimri_kernels.reference.sas_head` (the modules' maths in float64).

On CPU (C++, ``csrc/sas_head_kernel.h``) the four passes over the pixels (moments, ``P``,
``grad A``, the input gradients) each read tiles of x and alpha and form the tile's gated rows
in cache: the (K, B, C, N) block of gated inputs is never written, nor its gradient (at the
full-resolution SAS level of the benchmark UNet, x (8, 16, 128²) and two gates, that block is
17 MB, written once and read five times per step before). Other devices and
``UNIMRI_BACKEND=reference`` form the gated block with torch operations. Variances come from
``E[z^2] - E[z]^2`` in float32 (float64 for float64 x); half/bf16 inputs get their moments and
input gradients in float32.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from unimri_kernels.dispatch import backend_for, cpp_ops, pooled_empty, route
from unimri_kernels.ops.attention_gate import GateParams
from unimri_kernels.ops.attention_gates import checked_gates, run_gates_alpha


class HeadParams(NamedTuple):
    """The folded head's parameters for K gates on C channels:

    * w (K, C, C): the gates' output 1x1 convolutions ``W_k``
    * gamma, beta (K, C): the affine parameters of their batch norms
    * merge (C_out, K, C): the merge 1x1 convolution ``M``
    * eps: the batch norms' epsilon
    """

    w: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    merge: torch.Tensor
    eps: float = 1e-5

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """(w, gamma, beta, merge): what autograd sees and the gradients are returned for."""
        return self.w, self.gamma, self.beta, self.merge

    def detached(self, dtype: torch.dtype) -> "HeadParams":
        """The tensors detached and in ``dtype`` (the compute dtype), eps as a float."""
        return HeadParams(*(t.detach().to(dtype) for t in self.tensors), float(self.eps))


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 tensors, else float32: the precision of the head's moments."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off for ``device_type`` (a no-op where autocast does not exist, e.g. meta)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# --- the passes over the pixels with the gated block materialised (torch operations) ---

_CHUNK = 1 << 18


def _chunks(y: torch.Tensor) -> list[tuple[slice, slice]]:
    """(batch, column) slices of y (B, C, N) covering it in pieces of about 2^18 elements,
    so that the float32 copy of a half/bf16 piece stays in cache and is reused."""
    bsz, c, n = y.shape
    cols = max(1, min(n, _CHUNK // max(c, 1)))
    rows = max(1, _CHUNK // (c * cols)) if cols == n else 1
    return [(slice(b, min(b + rows, bsz)), slice(j, min(j + cols, n)))
            for b in range(0, bsz, rows) for j in range(0, n, cols)]


def channel_sum(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sum of t (B, C, N) over B and N: (C,), reducing N first, then B."""
    return t.sum(2, dtype=dtype).sum(0)


def moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum (C,) and ``sum y y^T`` (C, C) of y (B, C, N) over B and N, in float32 (float64 for
    float64 y). Half/bf16 y is converted piece by piece (a bf16 Gram product rounds each entry
    to bf16, and the variance ``w^T G w - mu^2`` then loses most of its digits)."""
    dt = compute_dtype(y)
    if y.dtype == dt:
        return channel_sum(y), torch.bmm(y, y.transpose(1, 2)).sum(0)
    m = y.new_zeros(y.shape[1], dtype=dt)
    gram = y.new_zeros(y.shape[1], y.shape[1], dtype=dt)
    for rows, cols in _chunks(y):
        piece = y[rows, :, cols].to(dt)
        m += channel_sum(piece)
        gram += torch.bmm(piece, piece.transpose(1, 2)).sum(0)
    return m, gram


def _baddbmm_buffer(shape: tuple[int, ...], like: torch.Tensor, *inputs: torch.Tensor
                    ) -> torch.Tensor | None:
    """A recycled output block (see :func:`unimri_kernels.dispatch.pooled_empty`) when no
    autograd graph is being recorded through ``inputs`` (``out=`` is not differentiable)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (like, *inputs)):
        return None
    return pooled_empty(shape, like)


def _baddbmm(bias: torch.Tensor, a: torch.Tensor, y: torch.Tensor,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """``bias + a @ y`` (B, C_out, N) from a (B, C_out, C), y (B, C, N), bias (C_out, 1),
    written into ``out`` or else a recycled block where possible; the product first, then the
    bias added in place (``torch.baddbmm`` with a broadcast bias first copies the bias)."""
    if out is None:
        out = _baddbmm_buffer((y.shape[0], a.shape[1], y.shape[2]), y, a, bias)
    product = torch.bmm(a, y) if out is None else torch.bmm(a, y, out=out)
    return product.add_(bias)


def apply_folded(ys: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``c + sum_k a[k] @ ys[k]``: (B, C_out, N) from ys (K, B, C, N), a (K, C_out, C)."""
    dtype, bsz = ys.dtype, ys.shape[1]
    a, c = a.to(dtype), c.to(dtype)
    out = _baddbmm(c[:, None], a[0].expand(bsz, -1, -1), ys[0])
    for k in range(1, ys.shape[0]):
        out = out.baddbmm_(a[k].expand(bsz, -1, -1), ys[k])
    return out


def _grad_y(at: torch.Tensor, d: torch.Tensor, e: torch.Tensor, grad_p: torch.Tensor,
            y: torch.Tensor) -> torch.Tensor:
    """``at grad_P + d y + e`` (B, C, N) for one gate. The terms nearly cancel (the norm's
    projection), so half/bf16 inputs are combined in float32 piece by piece and rounded once."""
    bias = e[:, None]
    if y.dtype == at.dtype:
        bsz = y.shape[0]
        return _baddbmm(bias, at.expand(bsz, -1, -1), grad_p).baddbmm_(d.expand(bsz, -1, -1), y)
    out = torch.empty(y.shape, dtype=at.dtype, device=y.device)
    for rows, cols in _chunks(y):
        gp, yc = grad_p[rows, :, cols].to(at.dtype), y[rows, :, cols].to(at.dtype)
        nb = gp.shape[0]
        out[rows, :, cols] = torch.bmm(at.expand(nb, -1, -1), gp).add_(bias).baddbmm_(
            d.expand(nb, -1, -1), yc)
    return out


def gated(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The gated inputs ``alpha_k * x`` (K, B, C, N) of x (B, C, N) and alpha (B, K, N)."""
    return alpha.transpose(0, 1).unsqueeze(2) * x.unsqueeze(0)


class _TorchPasses:
    """The four passes with the gated block formed by torch operations (any device)."""

    @staticmethod
    def moments(x, alpha):
        sums, grams = zip(*(moments(y) for y in gated(x, alpha)))
        return torch.stack(sums), torch.stack(grams)

    @staticmethod
    def apply(x, alpha, a, c):
        return apply_folded(gated(x, alpha), a, c)

    @staticmethod
    def weight_grad(grad_p, x, alpha, dtype):
        gp = grad_p.to(x.dtype)
        da = torch.stack([torch.bmm(gp, y.transpose(1, 2)).sum(0).to(dtype) for y in gated(x, alpha)])
        return da, channel_sum(grad_p, dtype)

    @staticmethod
    def input_grad(grad_p, x, alpha, at, d, e):
        gp = grad_p.to(x.dtype)
        gys = torch.stack([_grad_y(at[k], d[k], e[k], gp, y) for k, y in enumerate(gated(x, alpha))])
        xs = x.to(gys.dtype)
        grad_x = (alpha.transpose(0, 1).unsqueeze(2).to(gys.dtype) * gys).sum(0)
        grad_alpha = (xs.unsqueeze(0) * gys).sum(2).transpose(0, 1)
        return grad_x.to(x.dtype), grad_alpha.to(alpha.dtype)


class _KernelPasses:
    """The four passes by the C++ kernels (CPU): x and alpha read in tiles, no gated block."""

    @staticmethod
    def moments(x, alpha):
        s, gram = cpp_ops().sas_head_moments_cpu(x, alpha)
        dt = compute_dtype(x)
        return s.to(dt), gram.to(dt)

    @staticmethod
    def apply(x, alpha, a, c):
        return cpp_ops().sas_head_apply_cpu(x, alpha, a, c)

    @staticmethod
    def weight_grad(grad_p, x, alpha, dtype):
        da, dc = cpp_ops().sas_head_weight_grad_cpu(grad_p.contiguous(), x, alpha)
        return da.to(dtype), dc.to(dtype)

    @staticmethod
    def input_grad(grad_p, x, alpha, at, d, e):
        return tuple(cpp_ops().sas_head_input_grad_cpu(grad_p.contiguous(), x, alpha, at, d, e))


def _passes(x: torch.Tensor):
    return _KernelPasses if x.device.type == "cpu" and backend_for(x) == "cpp" else _TorchPasses


def _stats(head: HeadParams, m, gram):
    """Per gate: batch mean and biased variance of z_k (K, C), rsqrt(var + eps), s, t.
    (Batched matrix products rather than einsum: a fifth of the per-call overhead, which
    counts at the deep levels of a UNet.)"""
    w = head.w
    mu = torch.bmm(w, m.unsqueeze(2)).squeeze(2)
    var = (torch.bmm(w, gram).mul_(w).sum(2) - mu * mu).clamp_min(0)
    r = torch.rsqrt(var + head.eps)
    s = head.gamma * r
    return mu, var, r, s, head.beta - mu * s


def _fold(merge, w, s, t):
    """``A_k = M_k diag(s_k) W_k`` (K, C_out, C) and ``c = sum_k M_k t_k`` (C_out,)."""
    mk = merge.transpose(0, 1)                                   # (K, C_out, C)
    return torch.bmm(mk * s.unsqueeze(1), w), torch.bmm(mk, t.unsqueeze(2)).sum(0).squeeze(1)


def sas_head_forward(x, alpha, head: HeadParams):
    """(P (B, C_out, N), mean (K, C), var (K, C), m (K, C), gram (K, C, C)) for x (B, C, N) and
    alpha (B, K, N) contiguous; ``head`` in the compute dtype."""
    n = x.shape[0] * x.shape[2]
    passes = _passes(x)
    s_sum, g_sum = passes.moments(x, alpha)
    m, gram = s_sum / n, g_sum / n
    mu, var, _, s, t = _stats(head, m, gram)
    a, c = _fold(head.merge, head.w, s, t)
    return passes.apply(x, alpha, a, c), mu, var, m, gram


def sas_head_backward(grad_p, x, alpha, head: HeadParams, m, gram):
    """(grad_x, grad_alpha, grad_w, grad_gamma, grad_beta, grad_merge) in the dtypes of x, alpha
    and of the (compute-dtype) parameters ``head``; m (K, C) and gram (K, C, C) are the forward's
    moments of the gated inputs."""
    n = x.shape[0] * x.shape[2]
    passes = _passes(x)
    w, gamma, merge = head.w, head.gamma, head.merge
    mu, _, r, s, t = _stats(head, m, gram)
    da, dc = passes.weight_grad(grad_p, x, alpha, w.dtype)     # (K, C_out, C), (C_out,)
    mk = merge.transpose(0, 1)                                   # (K, C_out, C)
    wt = w.transpose(1, 2)
    dmerge = torch.bmm(da, (w * s.unsqueeze(2)).transpose(1, 2)) + dc[:, None] * t.unsqueeze(1)
    mta = torch.bmm(mk.transpose(1, 2), da)                      # M_k^T dA_k
    dt = (mk * dc[:, None]).sum(1)
    ds = (mta * w).sum(2) - mu * dt
    dvar = -0.5 * r ** 3 * gamma * ds
    dmu = -s * dt - 2 * mu * dvar
    dw = s.unsqueeze(2) * mta + dvar.unsqueeze(2) * torch.bmm(w, gram + gram.transpose(1, 2)) \
        + dmu.unsqueeze(2) * m.unsqueeze(1)
    dgram = torch.bmm(wt, dvar.unsqueeze(2) * w)
    dm = torch.bmm(wt, dmu.unsqueeze(2)).squeeze(2)
    a, _ = _fold(merge, w, s, t)
    grad_x, grad_alpha = passes.input_grad(grad_p, x, alpha, a.transpose(1, 2).contiguous(),
                                           (2.0 / n) * dgram, dm / n)
    return grad_x, grad_alpha, dw, r * ds, dt, dmerge.transpose(0, 1).contiguous()


# --- the op: checks, custom op (torch.compile, opcheck), direct route ---

def _check_floating(named: dict) -> None:
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"sas_head: {name} must be a floating-point tensor, got "
                            f"{getattr(t, 'dtype', type(t).__name__)}")


def check_sas_head_inputs(x, alpha, head: HeadParams) -> None:
    """Raise ``TypeError``/``ValueError`` naming the argument when the inputs do not fit."""
    _check_floating({"x": x, "alpha": alpha})
    if x.dim() < 3 or x.numel() == 0:
        raise ValueError(f"sas_head: x must be a non-empty (B, C, *S) tensor, got shape {tuple(x.shape)}")
    bsz = x.shape[0]
    if alpha.dim() != x.dim() or alpha.shape[0] != bsz or alpha.shape[2:] != x.shape[2:] \
            or alpha.shape[1] < 1:
        raise ValueError(f"sas_head: alpha must be (B, K, *S) = ({bsz}, K, "
                         f"{', '.join(map(str, x.shape[2:]))}) for x of shape {tuple(x.shape)}, got "
                         f"{tuple(alpha.shape)}")
    if alpha.dtype != x.dtype:
        raise TypeError(f"sas_head: alpha must have x's dtype {x.dtype}, got {alpha.dtype}")
    if alpha.device != x.device:
        raise ValueError(f"sas_head: alpha is on {alpha.device} but x is on {x.device}")
    check_head_parameters(x, alpha.shape[1], head)


def check_head_parameters(x, k, head: HeadParams) -> None:
    """The parameter checks of :func:`check_sas_head_inputs` for a checked x (B, C, *S) and k
    gates (without needing alpha)."""
    named = dict(zip(HeadParams._fields, head.tensors))  # the four tensors, eps left out
    _check_floating(named)
    c, merge = x.shape[1], head.merge
    for name, shape in (("w", (k, c, c)), ("gamma", (k, c)), ("beta", (k, c))):
        if tuple(named[name].shape) != shape:
            raise ValueError(f"sas_head: {name} must be {shape} for {k} gates and {c} channels, got "
                             f"{tuple(named[name].shape)}")
    if merge.dim() != 3 or merge.shape[1:] != (k, c) or merge.shape[0] < 1:
        raise ValueError(f"sas_head: merge must be (C_out, {k}, {c}), got {tuple(merge.shape)}")
    for name, t in named.items():
        if t.device != x.device:
            raise ValueError(f"sas_head: {name} is on {t.device} but x is on {x.device}")


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1).contiguous()


def _forward(x, alpha, head: HeadParams):
    """The op's forward on any backend: (out (B, C_out, *S), mean, var, m, gram)."""
    with no_autocast(x.device.type):
        out, mean, var, m, gram = sas_head_forward(_flat(x), _flat(alpha), head.detached(compute_dtype(x)))
    return out.view(x.shape[0], -1, *x.shape[2:]), mean, var, m, gram


def _backward_impl(grad_out, x, alpha, head: HeadParams, m, gram):
    """(grad_x, grad_alpha, grad_w, grad_gamma, grad_beta, grad_merge), each in its input's shape
    and dtype."""
    with no_autocast(x.device.type):
        gx, galpha, *grads = sas_head_backward(_flat(grad_out), _flat(x), _flat(alpha),
                                               head.detached(compute_dtype(x)), m, gram)
    grads = [g.to(p.dtype) for g, p in zip(grads, head.tensors)]
    return gx.contiguous().view(x.shape), galpha.contiguous().view(alpha.shape), *grads


@torch.library.custom_op("unimri::sas_head", mutates_args=(), device_types=("cpu", "cuda"))
def _sas_head_op(x: torch.Tensor, alpha: torch.Tensor, w: torch.Tensor, gamma: torch.Tensor,
                 beta: torch.Tensor, merge: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, mean, var, m, gram); m (K, C) and gram (K, C, C) are the moments of the gated
    inputs, saved for the backward."""
    head = HeadParams(w, gamma, beta, merge, eps)
    check_sas_head_inputs(x, alpha, head)
    return _forward(x, alpha, head)


@_sas_head_op.register_fake
def _sas_head_fake(x, alpha, w, gamma, beta, merge, eps):
    check_sas_head_inputs(x, alpha, HeadParams(w, gamma, beta, merge, eps))
    k, c = alpha.shape[1], x.shape[1]
    cdt = compute_dtype(x)
    stat = x.new_empty((k, c), dtype=cdt)
    return (x.new_empty((x.shape[0], merge.shape[0], *x.shape[2:])), stat, stat.clone(),
            stat.clone(), x.new_empty((k, c, c), dtype=cdt))


@torch.library.custom_op("unimri::sas_head_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _sas_head_backward_op(grad_out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor,
                          w: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                          merge: torch.Tensor, m: torch.Tensor, gram: torch.Tensor, eps: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                     torch.Tensor, torch.Tensor]:
    """(grad_x, grad_alpha, grad_w, grad_gamma, grad_beta, grad_merge)."""
    return _backward_impl(grad_out, x, alpha, HeadParams(w, gamma, beta, merge, eps), m, gram)


@_sas_head_backward_op.register_fake
def _sas_head_backward_fake(grad_out, x, alpha, w, gamma, beta, merge, m, gram, eps):
    return tuple(t.new_empty(t.shape) for t in (x, alpha, w, gamma, beta, merge))


def _setup_context(ctx, inputs, output) -> None:
    x, alpha, *flat_head = inputs
    head = HeadParams(*flat_head)
    ctx.save_for_backward(x, alpha, *head.tensors, output[3], output[4])
    ctx.eps = head.eps
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, grad_out, *_):
    x, alpha, *head_tensors, m, gram = ctx.saved_tensors
    return *_sas_head_backward_op(grad_out, x, alpha, *head_tensors, m, gram, ctx.eps), None


_sas_head_op.register_autograd(_backward, setup_context=_setup_context)


class DirectSasHead(torch.autograd.Function):
    """The same forward and backward without the custom op's per-call overhead: what
    :func:`folded_head` runs outside ``torch.compile`` (its passes pick the C++ kernels or torch
    operations by device and backend). ``apply(x, alpha, w, gamma, beta, merge, eps)`` with the
    :class:`HeadParams` unpacked (autograd tracks only the tensors passed to ``apply``); inputs
    checked."""

    @staticmethod
    def forward(ctx, x, alpha, *flat_head):
        head = HeadParams(*flat_head)
        out, mean, var, m, gram = _forward(x, alpha, head)
        ctx.save_for_backward(x, alpha, *head.tensors, m, gram)
        ctx.eps = head.eps
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _gm, _gv):
        x, alpha, *head_tensors, m, gram = ctx.saved_tensors
        return *_backward_impl(grad_out, x, alpha, HeadParams(*head_tensors, ctx.eps), m, gram), None


def folded_head(x: torch.Tensor, alpha: torch.Tensor, params: HeadParams
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P, mean, var)``: the folded SAS head in training mode (batch statistics) over x
    (B, C, *S) and the gates' attention maps alpha (B, K, *S), P (B, C_out, *S), mean and var
    (K, C); see the module docstring."""
    params = params._replace(eps=float(params.eps))
    check_sas_head_inputs(x, alpha, params)
    if route(x) == "compiled":
        return _sas_head_op(x, alpha, *params)[:3]
    return DirectSasHead.apply(x, alpha, *params)


def sas_head(x: torch.Tensor, alpha: torch.Tensor, w: torch.Tensor, gamma: torch.Tensor,
             beta: torch.Tensor, merge: torch.Tensor, eps: float = 1e-5
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`folded_head` with the parameters spelled out as the op's schema takes them."""
    return folded_head(x, alpha, HeadParams(w, gamma, beta, merge, eps))


class DirectGatesAndHead(torch.autograd.Function):
    """The gates (alpha only) and the head as one autograd node, the "direct" route on CPU: in
    the backward the head's share of ``grad x`` goes into the gate kernel's one write of
    ``grad x`` (``grad_x_in``) instead of a separate sum by autograd.
    ``apply(x, g, *gate_params, *head_params)`` with the :class:`GateParams` and
    :class:`HeadParams` unpacked (autograd tracks only the tensors passed to ``apply``
    themselves); inputs checked and contiguous, in x's dtype (the head's parameters in any
    floating dtype)."""

    @staticmethod
    def forward(ctx, x, g, *rest):
        params = GateParams(*rest[:len(GateParams._fields)])
        head = HeadParams(*rest[len(GateParams._fields):])
        # the gates' activations that their backward would recompute are kept (saved_*)
        alpha, saved_h, saved_coarse = cpp_ops().attention_gates_alpha_saving_cpu(x, g, *params)
        out, mean, var, m, gram = _forward(x, alpha, head)
        ctx.save_for_backward(x, g, *params.weights, alpha, *head.tensors, m, gram, saved_h, saved_coarse)
        ctx.args = (params.subsample, params.focal, head.eps)
        ctx.mark_non_differentiable(mean, var)
        return out, alpha, mean, var

    @staticmethod
    def backward(ctx, grad_out, grad_alpha, _gm, _gv):
        x, g, *gate_weights, alpha, w, gamma, beta, merge, m, gram, saved_h, saved_coarse = ctx.saved_tensors
        subsample, focal, eps = ctx.args
        head = HeadParams(w, gamma, beta, merge, eps)
        gx_head, galpha, *head_grads = _backward_impl(grad_out, x, alpha, head, m, gram)
        if grad_alpha is not None:
            galpha = galpha + grad_alpha
        gate_grads = cpp_ops().attention_gates_alpha_backward_cpu(
            galpha.contiguous(), x, g, *gate_weights, subsample, focal, gx_head.contiguous(), saved_h,
            saved_coarse)
        return *gate_grads, None, None, *head_grads, None


def gates_and_head(x: torch.Tensor, g: torch.Tensor, params: GateParams, head_params: HeadParams
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P, alpha, mean, var)``: the gates' attention maps
    (:func:`~unimri_kernels.ops.attention_gates.gates_alpha`, ``params`` stacked along a gates
    dimension) and the folded head in training mode (:func:`folded_head`) on them. Under autocast
    the gates and the head's input run in the autocast dtype."""
    x, g, params = checked_gates(x, g, params)
    if route(x) == "direct":
        head_params = head_params._replace(eps=float(head_params.eps))
        check_head_parameters(x, params.num_gates, head_params)
        return DirectGatesAndHead.apply(x.contiguous(), g.contiguous(), *params.contiguous(), *head_params)
    alpha = run_gates_alpha(x, g, params)
    out, mean, var = folded_head(x, alpha, head_params)
    return out, alpha, mean, var


__all__ = ["DirectGatesAndHead", "DirectSasHead", "HeadParams", "apply_folded", "check_head_parameters",
           "check_sas_head_inputs", "compute_dtype", "gated", "folded_head", "gates_and_head", "no_autocast",
           "sas_head"]
