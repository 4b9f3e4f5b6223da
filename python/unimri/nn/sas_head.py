"""The output side of selective attention, folded: K gates' attention maps and x -> merged
pre-norm features.

Per gate ``k`` the official block is ``u_k = BN_k(W_k y_k)`` with ``y_k = alpha_k * x`` and a
1x1 convolution ``W_k``; the gates are merged by ``M [u_1; ...; u_K]`` (1x1 convolution),
then norm + ReLU. Batch norm is an affine map per channel, so the K convolutions, K norms and
the merge fold into one (C, C) matrix per gate, ``sum_k A_k y_k + c``, with the training
statistics from the moments of ``y_k``: the op :func:`unimri_kernels.ops.sas_head.sas_head`
(maths and backward there), which reads x and the attention maps and never forms the gated
inputs on CPU. In evaluation (running statistics) and without norms the folded matrices come
from the parameters alone and the gated inputs are formed with torch operations.

Same maths as the modules it replaces (tests check forward, gradients and running statistics
against them); the rounding differs (see the op's docstring).

A single :class:`~unimri.nn.AttentionGate` uses the same machinery with K = 1 and the identity
as merge (:func:`gate_output_folded`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from unimri.nn.norm_act import update_running_stats
from unimri_kernels.ops.sas_head import apply_folded, sas_head


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


def uses_batch_stats(gates: nn.ModuleList | list[nn.Module]) -> bool:
    """Whether the folded head of these gates normalises with batch statistics (training, or
    no running statistics): then it reads x and the attention maps (:func:`sas_head`); else
    (evaluation, no norm) it needs the gated inputs ``alpha_k * x``."""
    norm = gates[0].out_norm
    return isinstance(norm, _BatchNorm) and (norm.training or norm.running_mean is None)


def merge_folded(sas: nn.Module, x: torch.Tensor, alpha: torch.Tensor,
                 ys: torch.Tensor | None = None) -> torch.Tensor:
    """The merge convolution's output (before its norm and ReLU) of a SelectiveAttention for
    which :func:`foldable` holds: equal to
    ``merge[0](cat([gate.out_norm(gate.out_conv(alpha_k * x))]))`` for x (B, C, *S) and the
    gates' attention maps alpha (B, K, *S); ``ys`` (K, B, C, *S), the gated inputs from the
    gates' op, is needed unless :func:`uses_batch_stats`. Updates the gates' batch-norm
    running statistics in training as the norms would."""
    conv = sas.merge[0]
    m = conv.weight.reshape(conv.weight.shape[0], len(sas.gates), -1)            # (C_out, K, C)
    return _folded(list(sas.gates), m, conv.bias, x, alpha, ys)


def gate_output_folded(gate: nn.Module, x: torch.Tensor, alpha: torch.Tensor,
                       y: torch.Tensor | None = None) -> torch.Tensor:
    """``gate.out_norm(gate.out_conv(alpha * x))`` (B, C, *S) of an AttentionGate for which
    :func:`foldable_gate` holds, from x (B, C, *S) and its attention map alpha (B, 1, *S), or
    the gated input y (B, C, *S) unless :func:`uses_batch_stats` (running statistics updated
    in training as the norm itself would)."""
    c = x.shape[1]
    eye = torch.eye(c, dtype=gate.out_conv.weight.dtype, device=x.device).reshape(c, 1, c)
    return _folded([gate], eye, None, x, alpha, None if y is None else y.unsqueeze(0))


def _folded(gates: list[nn.Module], m: torch.Tensor, merge_bias: torch.Tensor | None,
            x: torch.Tensor, alpha: torch.Tensor, ys: torch.Tensor | None) -> torch.Tensor:
    """``sum_k m[:, k] norm_k(conv_k(alpha_k * x)) (+ merge_bias)`` (B, C_out, *S) for K gates,
    x (B, C, *S), alpha (B, K, *S) and the gated inputs ys (K, B, C, *S) (only read without
    batch statistics); ``merge_bias`` only with norm-free gates (see :func:`foldable`)."""
    bsz, c = x.shape[:2]
    spatial = x.shape[2:]
    if x.dtype != alpha.dtype:  # autocast ran the gates in its dtype
        x = x.to(alpha.dtype)
    w = torch.stack([gate.out_conv.weight.reshape(c, c) for gate in gates])      # (K, C, C)
    norms = [gate.out_norm for gate in gates]
    first = norms[0]
    if isinstance(first, nn.Identity):
        bias = torch.stack([gate.out_conv.bias for gate in gates])                # (K, C)
        a = torch.einsum("okc,kcd->kod", m, w)
        c0 = torch.einsum("okc,kc->o", m, bias)
        out = apply_folded(ys.flatten(3), a, c0 if merge_bias is None else c0 + merge_bias)
        return out.view(bsz, -1, *spatial)
    gamma = torch.stack([n.weight for n in norms])
    beta = torch.stack([n.bias for n in norms])
    n = x.numel() // c
    if first.training or first.running_mean is None:
        if first.training and n < 2:
            raise ValueError(f"Expected more than 1 value per channel when training, got input "
                             f"size {tuple(x.shape)}")
        out, mean, var = sas_head(x, alpha, w, gamma, beta, m, first.eps)
        if first.training and first.track_running_stats:
            update_running_stats(norms, mean, var, n)
        return out
    rm = torch.stack([n.running_mean for n in norms])
    rv = torch.stack([n.running_var for n in norms])
    s = gamma * torch.rsqrt(rv + first.eps)
    t = beta - rm * s
    a = torch.einsum("okc,kc,kcd->kod", m, s, w)
    return apply_folded(ys.flatten(3), a, torch.einsum("okc,kc->o", m, t)).view(bsz, -1, *spatial)
