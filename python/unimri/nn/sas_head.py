"""The output side of selective attention, folded: K gated inputs -> merged pre-norm features.

Per gate ``k`` the official block is ``u_k = BN_k(W_k y_k)`` with ``y_k = alpha_k * x`` and a
1x1 convolution ``W_k``; the gates are merged by ``M [u_1; ...; u_K]`` (1x1 convolution),
then norm + ReLU. Batch norm is an affine map per channel, ``BN_k(z) = s_k z + t_k``, with
``s_k = gamma_k / sqrt(var_k + eps)`` and ``t_k = beta_k - mean_k s_k``, so

    M [u_1; ...; u_K] = sum_k A_k y_k + c,   A_k = M_k diag(s_k) W_k,   c = sum_k M_k t_k

with ``M_k`` the columns of M that read gate k. ``A_k`` and ``c`` are (C, C) and (C,): the
K convolutions, K norms and the concatenation at full resolution become one batched
matrix product per gate. In training, the batch statistics of ``z_k = W_k y_k`` follow from
the first and second moments of ``y_k`` (``mean_k = W_k m_k``,
``E[z_k^2]_i = w_i^T G_k w_i`` with ``m_k = E[y_k]``, ``G_k = E[y_k y_k^T]``), so ``z_k`` is
never materialised either. The backward pass is written out (:class:`FoldedMergeFn`): the
small (C, C) chain rule in closed form, then ``grad y_k = A_k^T grad P + 2 dG_k y_k / n +
dm_k / n`` as two batched matrix products.

Same maths as the modules it replaces (tests check forward, gradients and running
statistics against them); the rounding differs: variances come from ``E[z^2] - E[z]^2``
accumulated in float32 (float64 for float64 inputs), whose relative error grows like
``eps * E[z]^2 / var(z)``: negligible unless a channel's mean is many standard deviations
from zero. Half/bf16 inputs get their moments and input gradients in float32.

A single :class:`~unimri.nn.AttentionGate` uses the same machinery with K = 1 and the
identity as merge (:func:`gate_output_folded`).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from unimri.nn.norm_act import update_running_stats
from unimri_kernels.dispatch import pooled_empty


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


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
    """Sum of t (B, C, N) over B and N: (C,). Reducing N first, then B: as fast as
    ``t.sum(dim=(0, 2))`` on an idle 2-core machine (0.22 ms at (8, 16, 128²)), and much
    faster when another job holds a core (0.5 against 4.6 ms, measured during a test run)."""
    return t.sum(2, dtype=dtype).sum(0)


def moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``m`` (C,) and second moment ``G = E[y y^T]`` (C, C) of y (B, C, N) over B and N,
    in float32 (float64 for float64 y). Half/bf16 y is converted piece by piece (the pieces'
    float32 copies stay in cache): a bf16 Gram product rounds each entry to bf16, and the
    variance ``w^T G w - mu^2`` then loses most of its digits when a channel's mean is large
    (measured: gradient errors several times those of the per-gate modules)."""
    dt = _compute_dtype(y)
    n = y.shape[0] * y.shape[2]
    if y.dtype == dt:
        return channel_sum(y) / n, torch.bmm(y, y.transpose(1, 2)).sum(0) / n
    m = y.new_zeros(y.shape[1], dtype=dt)
    gram = y.new_zeros(y.shape[1], y.shape[1], dtype=dt)
    for rows, cols in _chunks(y):
        piece = y[rows, :, cols].to(dt)
        m += channel_sum(piece)
        gram += torch.bmm(piece, piece.transpose(1, 2)).sum(0)
    return m / n, gram / n


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast off for ``device_type`` (a no-op where autocast does not exist, e.g. meta)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def fold_affine(w: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
                m_cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = M_k diag(s) W`` (C_out, C) and ``M_k t`` (C_out,)."""
    return (m_cols * s) @ w, m_cols @ t


class FoldedMergeFn(torch.autograd.Function):
    """``P = sum_k A_k y_k + c`` with batch-norm statistics from the moments of ``y_k``.

    Inputs: ``eps`` (float), ``w`` (K, C, C) the gates' 1x1 weights, ``gamma``/``beta``
    (K, C), ``merge`` (C_out, K, C), and the gated inputs ``ys`` stacked (K, B, C, N) (as
    ``unimri::attention_gates`` returns them; their gradient is returned stacked too).
    Returns ``P`` (B, C_out, N) in the dtype of ``y`` and the batch mean and biased variance
    of ``z_k = W_k y_k`` (K, C) (no gradient; for the running statistics).
    """

    @staticmethod
    def forward(ctx, eps: float, w: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                merge: torch.Tensor, ys: torch.Tensor):
        # explicit dtypes inside: autocast would run the moments' products in bf16
        with _no_autocast(ys[0].device.type):
            return FoldedMergeFn._forward(ctx, eps, w, gamma, beta, merge, ys)

    @staticmethod
    def _forward(ctx, eps, w, gamma, beta, merge, ys):
        cdt = _compute_dtype(ys[0])
        ctx.param_dtypes = [t.dtype for t in (w, gamma, beta, merge)]
        w, gamma, beta, merge = (t.to(cdt) for t in (w, gamma, beta, merge))
        n = ys[0].shape[0] * ys[0].shape[2]
        stats, saved, folded = [], [], []
        for k, y in enumerate(ys):
            m, gram = moments(y)
            mu = w[k] @ m
            var = (((w[k] @ gram) * w[k]).sum(1) - mu * mu).clamp_min(0)
            r = torch.rsqrt(var + eps)
            s = gamma[k] * r
            folded.append(fold_affine(w[k], s, beta[k] - mu * s, merge[:, k]))
            stats.append((mu, var))
            saved += [m, gram, r]
        c = sum(ct for _, ct in folded)
        out = _apply(ys, torch.stack([a for a, _ in folded], dim=1), c)
        ctx.save_for_backward(w, gamma, beta, merge, ys, *saved)
        ctx.k, ctx.n = len(ys), n
        mean = torch.stack([s[0] for s in stats])
        var = torch.stack([s[1] for s in stats])
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor, _gm, _gv):
        with _no_autocast(grad_p.device.type):
            return FoldedMergeFn._backward(ctx, grad_p)

    @staticmethod
    def _backward(ctx, grad_p):
        w, gamma, beta, merge, ys, *saved = ctx.saved_tensors
        n = ctx.n
        gp = grad_p.to(ys.dtype)
        dc = channel_sum(grad_p, w.dtype)
        gw, ggamma, gbeta, gmerge = [], [], [], []
        grad_ys = _baddbmm_buffer(tuple(ys.shape), ys, grad_p, w)
        gys = []
        for k, y in enumerate(ys):
            m, gram, r = saved[3 * k:3 * k + 3]
            wk, mk = w[k], merge[:, k]
            mu = wk @ m
            s = gamma[k] * r
            t = beta[k] - mu * s
            da = torch.bmm(gp, y.transpose(1, 2)).sum(0).to(w.dtype)  # d A_k = sum grad_P y_k^T
            ws = wk * s[:, None]                          # diag(s) W
            dmk = da @ ws.T + torch.outer(dc, t)          # A = M_k diag(s) W, c += M_k t
            mta = mk.T @ da
            ds = (mta * wk).sum(1)
            dtk = mk.T @ dc
            dwk = s[:, None] * mta
            ds = ds - mu * dtk
            dmu = -s * dtk
            dvar = -0.5 * r ** 3 * gamma[k] * ds
            dmu = dmu - 2 * mu * dvar
            dwk = dwk + dvar[:, None] * (wk @ (gram + gram.T)) + torch.outer(dmu, m)
            dgram = wk.T @ (dvar[:, None] * wk)
            dm = wk.T @ dmu
            gw.append(dwk)
            ggamma.append(r * ds)
            gbeta.append(dtk)
            gmerge.append(dmk)
            a = (mk * s) @ wk
            gys.append(_grad_y(a, dgram, dm, n, gp, y, None if grad_ys is None else grad_ys[k]))
        grads = (torch.stack(gw), torch.stack(ggamma), torch.stack(gbeta), torch.stack(gmerge, dim=1))
        grad_ys = torch.stack(gys) if grad_ys is None else grad_ys
        return (None, *(gr.to(d) for gr, d in zip(grads, ctx.param_dtypes)), grad_ys)


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
    written into ``out`` or else a recycled block where possible. The product first, then
    the bias added in place (``torch.baddbmm`` with a broadcast bias first copies the bias
    into the output): the same time on an idle machine (0.81 against 0.83 ms at
    (8, 16, 128²)), less when another job holds a core (1.5 against 2.6 ms)."""
    if out is None:
        out = _baddbmm_buffer((y.shape[0], a.shape[1], y.shape[2]), y, a, bias)
    product = torch.bmm(a, y) if out is None else torch.bmm(a, y, out=out)
    return product.add_(bias)


def _grad_y(a: torch.Tensor, dgram: torch.Tensor, dm: torch.Tensor, n: int, grad_p: torch.Tensor,
            y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a^T grad_P + 2 dG y / n + dm / n`` (B, C, N), written into ``out`` when given. The
    terms nearly cancel (the norm's projection), so half/bf16 inputs are combined in float32
    piece by piece and rounded once."""
    bias, at, dg = (dm / n)[:, None], a.T, (2.0 / n) * dgram
    if y.dtype == a.dtype:
        bsz = y.shape[0]
        gy = _baddbmm(bias, at.expand(bsz, -1, -1), grad_p, out)
        return gy.baddbmm_(dg.expand(bsz, -1, -1), y)
    if out is None:
        out = _baddbmm_buffer(tuple(y.shape), y, a, grad_p)
        out = torch.empty_like(y) if out is None else out
    for rows, cols in _chunks(y):
        gp, yc = grad_p[rows, :, cols].to(a.dtype), y[rows, :, cols].to(a.dtype)
        nb = gp.shape[0]
        piece = torch.bmm(at.expand(nb, -1, -1), gp).add_(bias).baddbmm_(dg.expand(nb, -1, -1), yc)
        out[rows, :, cols] = piece
    return out


def _foldable_norms(gates: list[nn.Module]) -> bool:
    """Every gate has batch norm (affine, the same eps/momentum/mode, no conv bias), or every
    gate has no norm and a conv bias."""
    norms = [gate.out_norm for gate in gates]
    if all(isinstance(n, nn.Identity) for n in norms):
        return all(gate.out_conv.bias is not None for gate in gates)
    first = norms[0]
    if not isinstance(first, _BatchNorm) or first.weight is None:
        return False
    same = all(type(n) is type(first) and n.weight is not None and n.eps == first.eps
               and n.momentum == first.momentum and n.training == first.training
               and n.track_running_stats == first.track_running_stats for n in norms)
    return same and all(gate.out_conv.bias is None for gate in gates)


def foldable(sas: nn.Module) -> bool:
    """Whether :func:`merge_folded` applies to a SelectiveAttention: every gate has batch
    norm (affine, the same eps/momentum/mode, no conv bias) or every gate has no norm."""
    gates = list(sas.gates)
    # the merge bias is folded into the no-norm form only (with norms it has none)
    if (sas.merge[0].bias is not None) != isinstance(gates[0].out_norm, nn.Identity):
        return False
    return _foldable_norms(gates)


def foldable_gate(gate: nn.Module) -> bool:
    """Whether :func:`gate_output_folded` applies to an AttentionGate (batch norm with affine
    parameters and no conv bias, or no norm and a conv bias)."""
    return _foldable_norms([gate])


def _apply(flat: torch.Tensor, a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``c + sum_k a[:, k] @ flat[k]``: (B, C_out, N) from flat (K, B, C, N), a (C_out, K, C)."""
    dtype, bsz = flat[0].dtype, flat[0].shape[0]
    a, c = a.to(dtype), c.to(dtype)
    out = _baddbmm(c[:, None], a[:, 0].expand(bsz, -1, -1), flat[0])
    for k in range(1, len(flat)):
        out = out.baddbmm_(a[:, k].expand(bsz, -1, -1), flat[k])
    return out


def merge_folded(sas: nn.Module, ys: torch.Tensor) -> torch.Tensor:
    """The merge convolution's output (before its norm and ReLU) from the gated inputs
    ``ys`` (K, B, C, *S) of a SelectiveAttention for which :func:`foldable` holds,
    equal to ``merge[0](cat([gate.out_norm(gate.out_conv(y)) for y in ys]))``; updates the
    gates' batch-norm running statistics in training as the norms themselves would."""
    conv = sas.merge[0]
    m = conv.weight.reshape(conv.weight.shape[0], len(sas.gates), -1)            # (C_out, K, C)
    return _folded(list(sas.gates), m, conv.bias, ys)


def gate_output_folded(gate: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``gate.out_norm(gate.out_conv(y))`` (B, C, *S) for an AttentionGate for which
    :func:`foldable_gate` holds, from the gated input ``y`` (B, C, *S): one (C, C) matrix
    product, batch-norm statistics from the moments of ``y`` (running statistics updated in
    training as the norm itself would)."""
    c = y.shape[1]
    eye = torch.eye(c, dtype=gate.out_conv.weight.dtype, device=y.device).reshape(c, 1, c)
    return _folded([gate], eye, None, y.unsqueeze(0))


def _folded(gates: list[nn.Module], m: torch.Tensor, merge_bias: torch.Tensor | None,
            ys: torch.Tensor) -> torch.Tensor:
    """``sum_k m[:, k] norm_k(conv_k(ys[k])) (+ merge_bias)`` (B, C_out, *S) for K gates and
    their gated inputs ``ys`` (K, B, C, *S); ``merge_bias`` only with norm-free gates (see
    :func:`foldable`)."""
    k, bsz, c = ys.shape[:3]
    spatial = ys.shape[3:]
    flat = ys.reshape(k, bsz, c, -1)
    w = torch.stack([gate.out_conv.weight.reshape(c, c) for gate in gates])      # (K, C, C)
    norms = [gate.out_norm for gate in gates]
    if isinstance(norms[0], nn.Identity):
        bias = torch.stack([gate.out_conv.bias for gate in gates])                # (K, C)
        a = torch.einsum("okc,kcd->okd", m, w)
        c0 = torch.einsum("okc,kc->o", m, bias)
        out = _apply(flat, a, c0 if merge_bias is None else c0 + merge_bias)
        return out.view(bsz, -1, *spatial)
    first = norms[0]
    gamma = torch.stack([n.weight for n in norms])
    beta = torch.stack([n.bias for n in norms])
    n = flat.shape[1] * flat.shape[3]
    if first.training or first.running_mean is None:
        if first.training and n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input "
                             f"size {tuple(ys.shape[1:])}")
        out, mean, var = FoldedMergeFn.apply(first.eps, w, gamma, beta, m, flat)
        if first.training and first.track_running_stats:
            update_running_stats(norms, mean, var, n)
        return out.view(bsz, -1, *spatial)
    rm = torch.stack([n.running_mean for n in norms])
    rv = torch.stack([n.running_var for n in norms])
    s = gamma * torch.rsqrt(rv + first.eps)
    t = beta - rm * s
    a = torch.einsum("okc,kc,kcd->okd", m, s, w)
    return _apply(flat, a, torch.einsum("okc,kc->o", m, t)).view(bsz, -1, *spatial)
