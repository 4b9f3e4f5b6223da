"""The output side of selective attention, folded: K gates' attention maps and x -> merged
pre-norm features.

Per gate ``k`` the official block is ``u_k = BN_k(W_k y_k)`` with ``y_k = alpha_k * x`` and a
1x1 convolution ``W_k``; the gates are merged by ``M [u_1; ...; u_K]`` (1x1 convolution),
then norm + ReLU. Batch norm is an affine map per channel, so the K convolutions, K norms and
the merge fold into one (C, C) matrix per gate, ``sum_k A_k y_k + c``, with the training
statistics from the moments of ``y_k``: the op :func:`unimri_kernels.ops.sas_head.sas_head`
(maths and backward there), run with the gates' alpha-only op by
:func:`~unimri_kernels.ops.sas_head.gates_and_head` (:func:`merge_with_gates`), which reads x
and the attention maps and never forms the gated inputs on CPU. In evaluation (running
statistics) and without norms the folded matrices come from the parameters alone and apply
to the gated inputs from the gates' op (:func:`merge_folded`).

Same maths as the modules it replaces (tests check forward, gradients and running statistics
against them); the rounding differs (see the op's docstring).

A single :class:`~unimri.nn.AttentionGate` uses the same machinery with K = 1 and the identity
as merge (:func:`gate_output_with_gate`, :func:`gate_output_folded`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from unimri.nn.norm_act import update_running_stats
from unimri_kernels.ops.attention_gate import GateParams
from unimri_kernels.ops.sas_head import HeadParams, apply_folded, gates_and_head


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
    no running statistics): then it runs from x and the attention maps
    (:func:`merge_with_gates`, :func:`gate_output_with_gate`); else (evaluation, no norm) from
    the gated inputs ``alpha_k * x`` (:func:`merge_folded`, :func:`gate_output_folded`)."""
    norm = gates[0].out_norm
    return isinstance(norm, _BatchNorm) and (norm.training or norm.running_mean is None)


def _merge_matrix(sas: nn.Module) -> torch.Tensor:
    conv = sas.merge[0]
    return conv.weight.reshape(conv.weight.shape[0], len(sas.gates), -1)          # (C_out, K, C)


def _identity_merge(gate: nn.Module, c: int, device: torch.device) -> torch.Tensor:
    return torch.eye(c, dtype=gate.out_conv.weight.dtype, device=device).reshape(c, 1, c)


def merge_with_gates(sas: nn.Module, x: torch.Tensor, g: torch.Tensor,
                     params: GateParams) -> tuple[torch.Tensor, torch.Tensor]:
    """``(merge output before its norm and ReLU, alpha)`` of a SelectiveAttention for which
    :func:`foldable` and :func:`uses_batch_stats` hold: the gates' attention maps (parameters
    ``params`` stacked) and the folded head on x (B, C, *S) and them
    (:func:`~unimri_kernels.ops.sas_head.gates_and_head`); updates the gates' running
    statistics as their norms would."""
    return _gates_and_folded(list(sas.gates), _merge_matrix(sas), x, g, params)


def gate_output_with_gate(gate: nn.Module, x: torch.Tensor,
                          g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gate.out_norm(gate.out_conv(alpha * x)), alpha)`` of an AttentionGate for which
    :func:`foldable_gate` and :func:`uses_batch_stats` hold (running statistics updated as the
    norm itself would)."""
    one = gate.params
    stacked = one.with_weights(*(t[None] for t in one.weights[:4]), one.psi_bias)
    return _gates_and_folded([gate], _identity_merge(gate, x.shape[1], x.device), x, g, stacked)


def _head_params(gates: list[nn.Module], c: int, merge: torch.Tensor) -> HeadParams:
    """The head of K gates on C channels: their output convolutions w (K, C, C) and norms'
    affine parameters (K, C), stacked, with the merge matrix (C_out, K, C) and the norms' eps."""
    norms = [gate.out_norm for gate in gates]
    return HeadParams(torch.stack([gate.out_conv.weight.reshape(c, c) for gate in gates]),
                      torch.stack([n.weight for n in norms]), torch.stack([n.bias for n in norms]),
                      merge, norms[0].eps)


def _gates_and_folded(gates: list[nn.Module], m: torch.Tensor, x: torch.Tensor, g: torch.Tensor,
                      params: GateParams) -> tuple[torch.Tensor, torch.Tensor]:
    first = gates[0].out_norm
    n = x.numel() // x.shape[1]
    if first.training and n < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {tuple(x.shape)}")
    out, alpha, mean, var = gates_and_head(x, g, params, _head_params(gates, x.shape[1], m))
    if first.training and first.track_running_stats:
        update_running_stats([gate.out_norm for gate in gates], mean, var, n)
    return out, alpha


def merge_folded(sas: nn.Module, ys: torch.Tensor) -> torch.Tensor:
    """The merge convolution's output (before its norm and ReLU) of a SelectiveAttention for
    which :func:`foldable` holds and not :func:`uses_batch_stats` (evaluation, or no norms),
    from the gated inputs ys (K, B, C, *S): equal to
    ``merge[0](cat([gate.out_norm(gate.out_conv(y)) for y in ys]))``."""
    return _folded(list(sas.gates), _merge_matrix(sas), sas.merge[0].bias, ys)


def gate_output_folded(gate: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """``gate.out_norm(gate.out_conv(y))`` (B, C, *S) of an AttentionGate for which
    :func:`foldable_gate` holds and not :func:`uses_batch_stats`, from the gated input y."""
    return _folded([gate], _identity_merge(gate, y.shape[1], y.device), None, y.unsqueeze(0))


def _folded(gates: list[nn.Module], m: torch.Tensor, merge_bias: torch.Tensor | None,
            ys: torch.Tensor) -> torch.Tensor:
    """``sum_k m[:, k] norm_k(conv_k(ys[k])) (+ merge_bias)`` (B, C_out, *S) with the norms'
    running statistics (or none) for K gates and their gated inputs ys (K, B, C, *S);
    ``merge_bias`` only with norm-free gates (see :func:`foldable`)."""
    bsz, c = ys.shape[1:3]
    spatial = ys.shape[3:]
    flat = ys.flatten(3)
    first = gates[0].out_norm
    if isinstance(first, nn.Identity):
        w = torch.stack([gate.out_conv.weight.reshape(c, c) for gate in gates])  # (K, C, C)
        bias = torch.stack([gate.out_conv.bias for gate in gates])                # (K, C)
        a = torch.einsum("okc,kcd->kod", m, w)
        c0 = torch.einsum("okc,kc->o", m, bias)
        out = apply_folded(flat, a, c0 if merge_bias is None else c0 + merge_bias)
        return out.view(bsz, -1, *spatial)
    head = _head_params(gates, c, m)
    rm = torch.stack([gate.out_norm.running_mean for gate in gates])
    rv = torch.stack([gate.out_norm.running_var for gate in gates])
    s = head.gamma * torch.rsqrt(rv + head.eps)
    t = head.beta - rm * s
    a = torch.einsum("okc,kc,kcd->kod", m, s, head.w)
    return apply_folded(flat, a, torch.einsum("okc,kc->o", m, t)).view(bsz, -1, *spatial)
