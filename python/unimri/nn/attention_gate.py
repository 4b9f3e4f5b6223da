"""Grid attention gate (Oktay et al. 2018) and selective attention (SAS), on the fused op.

``AttentionGate`` computes ``alpha = sigmoid(psi . relu(theta x + phi g) + b) ** focal`` on a
grid ``subsample`` times coarser than ``x``, resamples it to ``x``'s grid and returns
``norm(conv1x1(alpha * x))`` with ``alpha``. All of that up to ``alpha * x`` is the fused
``unimri::attention_gate`` op (Triton on CUDA, C++ on CPU). With batch norm (the default) or
no norm, the output convolution and norm are evaluated folded into one (Cx, Cx) matrix
product with the norm's statistics from the moments of ``alpha * x``
(:mod:`unimri.nn.sas_head`), from x and alpha (``alpha * x`` itself is never formed on CPU);
``fold=False`` runs them as modules.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from unimri.nn.layers import check_channels, check_input, check_spatial_dims, conv_nd, create_norm
from unimri.nn.norm_act import norm_relu
from unimri.nn.sas_head import (
    foldable,
    foldable_gate,
    gate_output_folded,
    gate_output_with_gate,
    merge_folded,
    merge_with_gates,
    uses_batch_stats,
)
from unimri_kernels.ops.attention_gate import GateParams
from unimri_kernels.ops.attention_gate import gate as fused_gate
from unimri_kernels.ops.attention_gates import gates as fused_gates


def _uniform_(t: torch.Tensor, fan_in: int) -> None:
    """``nn.Conv``'s default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(t, -bound, bound)


class AttentionGate(nn.Module):
    """Additive grid attention gate; ``forward(x, g=None) -> (out, alpha)``.

    Args:
        in_channels: channels Cx of the gated input ``x`` (B, Cx, *S).
        gating_channels: channels Cg of the gating signal ``g`` (B, Cg, *Sg); default Cx
            (``g=None`` gates ``x`` with itself). ``g`` may be on any grid.
        inter_channels: channels Ci of ``theta x`` and ``phi g``; default max(1, Cx // 2).
        spatial_dims: 2 (bilinear resampling) or 3 (trilinear).
        subsample: s, kernel and stride of ``theta`` (alpha is computed on floor(S / s)).
        focal: exponent f of ``alpha = sigmoid(.) ** f``; f > 1 suppresses background harder.
        norm: "batch", "instance", "group" or None, after the output 1x1 conv.

    Returns ``out`` (B, Cx, *S) and ``alpha`` (B, 1, *S) in [0, 1].

    With batch norm or no norm the output conv and norm run folded
    (:func:`unimri.nn.sas_head.gate_output_with_gate` in training,
    :func:`~unimri.nn.sas_head.gate_output_folded` otherwise): the same maths and parameters
    (state-dict keys unchanged) as ``out_norm(out_conv(y))``, without their full-resolution
    intermediates (in training not even ``y``). ``fold=False`` (attribute, settable) runs
    the modules.
    """

    def __init__(self, in_channels: int, gating_channels: int | None = None,
                 inter_channels: int | None = None, spatial_dims: int = 2, subsample: int = 2,
                 focal: float = 1.0, norm: str | None = "batch"):
        super().__init__()
        self.in_channels = check_channels("in_channels", in_channels)
        self.gating_channels = check_channels(
            "gating_channels", in_channels if gating_channels is None else gating_channels)
        self.inter_channels = check_channels(
            "inter_channels", max(1, in_channels // 2) if inter_channels is None else inter_channels)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
            raise ValueError(f"subsample must be an int >= 1, got {subsample!r}")
        if not isinstance(focal, (int, float)) or not math.isfinite(focal) or focal <= 0:
            raise ValueError(f"focal must be a finite number > 0, got {focal!r}")
        self.subsample = subsample
        self.focal = float(focal)
        ci, cx, cg = self.inter_channels, self.in_channels, self.gating_channels
        self.theta_weight = nn.Parameter(torch.empty(ci, cx, *(subsample,) * spatial_dims))
        self.phi_weight = nn.Parameter(torch.empty(ci, cg))
        self.phi_bias = nn.Parameter(torch.empty(ci))
        self.psi_weight = nn.Parameter(torch.empty(ci))
        self.psi_bias = nn.Parameter(torch.empty(1))
        self.out_conv = conv_nd(spatial_dims, cx, cx, 1, bias=norm is None)
        self.out_norm = create_norm(norm, cx, spatial_dims)
        self.fold = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_theta = self.in_channels * self.subsample ** self.spatial_dims
        _uniform_(self.theta_weight, fan_theta)
        _uniform_(self.phi_weight, self.gating_channels)
        _uniform_(self.phi_bias, self.gating_channels)
        _uniform_(self.psi_weight, self.inter_channels)
        _uniform_(self.psi_bias, self.inter_channels)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, gating_channels={self.gating_channels}, "
                f"inter_channels={self.inter_channels}, spatial_dims={self.spatial_dims}, "
                f"subsample={self.subsample}, focal={self.focal}")

    @property
    def params(self) -> GateParams:
        """This gate's parameters as the fused op takes them."""
        return GateParams(self.theta_weight, self.phi_weight, self.phi_bias, self.psi_weight,
                          self.psi_bias, self.subsample, self.focal)

    def checked_inputs(self, x: torch.Tensor, g: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, g)`` validated against this gate's channels and rank; ``g=None`` is x itself."""
        check_input("x", x, self.spatial_dims, self.in_channels)
        if g is None:
            if self.gating_channels != self.in_channels:
                raise ValueError(
                    f"g is required: gating_channels={self.gating_channels} differs from "
                    f"in_channels={self.in_channels}, so x cannot gate itself")
            g = x
        check_input("g", g, self.spatial_dims, self.gating_channels)
        return x, g

    def gate(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused op alone: ``(alpha * x, alpha)`` without the output conv and norm."""
        return fused_gate(*self.checked_inputs(x, g), self.params)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fold and foldable_gate(self) and uses_batch_stats([self]):
            return gate_output_with_gate(self, *self.checked_inputs(x, g))
        y, alpha = self.gate(x, g)
        if self.fold and foldable_gate(self):
            return gate_output_folded(self, y), alpha
        return self.out_norm(self.out_conv(y)), alpha


class SelectiveAttention(nn.Module):
    """Selective attention (SAS): ``num_gates`` attention gates in parallel on the same
    ``(x, g)``, their outputs concatenated and merged by 1x1 conv + norm + ReLU.

    ``forward(x, g=None) -> (out (B, Cx, *S), alphas (B, num_gates, *S))``; the other
    arguments are those of :class:`AttentionGate`.

    With batch norm (the default) or no norm, the gates' output convolutions and norms and
    the merge convolution are evaluated folded into one (Cx, Cx) matrix per gate
    (:mod:`unimri.nn.sas_head`): the same maths and parameters (state-dict keys unchanged),
    without the full-resolution intermediates. ``fold=False`` (attribute, settable) runs the
    modules one by one; instance and group norm always do.
    """

    def __init__(self, in_channels: int, gating_channels: int | None = None,
                 inter_channels: int | None = None, spatial_dims: int = 2, num_gates: int = 2,
                 subsample: int = 2, focal: float = 1.0, norm: str | None = "batch"):
        super().__init__()
        check_channels("num_gates", num_gates)
        self.in_channels = in_channels
        self.gates = nn.ModuleList(
            AttentionGate(in_channels, gating_channels, inter_channels, spatial_dims, subsample,
                          focal, norm) for _ in range(num_gates))
        self.merge = nn.Sequential(
            conv_nd(spatial_dims, num_gates * in_channels, in_channels, 1, bias=norm is None),
            create_norm(norm, in_channels, spatial_dims),
            nn.ReLU(inplace=True),
        )
        self.fold = True

    @property
    def num_gates(self) -> int:
        return len(self.gates)

    @property
    def params(self) -> GateParams:
        """The gates' parameters stacked along a gates dimension, as
        ``unimri::attention_gates`` takes them."""
        names = ("theta_weight", "phi_weight", "phi_bias", "psi_weight")
        stacked = [torch.stack([getattr(gate, name) for gate in self.gates]) for name in names]
        first = self.gates[0]
        return GateParams(*stacked, torch.cat([gate.psi_bias for gate in self.gates]),
                          first.subsample, first.focal)

    def gate(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every gate's fused op at once (``unimri::attention_gates``): ``(ys, alpha)`` with
        ys (K, B, Cx, *S), ``ys[k] = alpha[:, k:k+1] * x``, and alpha (B, K, *S)."""
        return fused_gates(*self.gates[0].checked_inputs(x, g), self.params)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        fold = self.fold and foldable(self)
        if fold and uses_batch_stats(self.gates):
            x, g = self.gates[0].checked_inputs(x, g)
            merged, alpha = merge_with_gates(self, x, g, self.params)
            return norm_relu(merged, self.merge[1]), alpha
        ys, alpha = self.gate(x, g)
        if fold:
            return norm_relu(merge_folded(self, ys), self.merge[1]), alpha
        outs = [gate.out_norm(gate.out_conv(y)) for gate, y in zip(self.gates, ys.unbind(0))]
        return self.merge(torch.cat(outs, dim=1)), alpha
