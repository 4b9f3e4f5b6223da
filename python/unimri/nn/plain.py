"""The plain-PyTorch baseline: Oktay et al.'s attention blocks written in plain PyTorch
modules, as in their official code (``GridAttentionBlockND`` and ``MultiAttentionBlock``), and
models rebuilt from such modules: what a user would run without unimri. The benchmarks'
baseline, and a cross-check of the fused modules' maths.

``OktayAttentionGate``: ``theta`` (conv, kernel = stride = s, no bias), ``phi`` (1x1 conv),
``psi`` (1x1 conv to one channel), ``alpha = sigmoid(psi(relu(theta x + up(phi g)))) ** f``
upsampled to x's grid, ``W(alpha * x)`` with ``W`` = 1x1 conv + norm.
``OktaySelectiveAttention``: gates in parallel, merged by 1x1 conv + norm + ReLU.
Both return ``(out, alpha)`` like :class:`unimri.nn.AttentionGate` / ``SelectiveAttention``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from unimri.nn.layers import conv_nd
from unimri.nn.pointwise import PointwiseConv2d, PointwiseConv3d
from unimri.nn.pooling import MaxPool2x2d, MaxPool2x3d


class OktayAttentionGate(nn.Module):
    """One grid attention gate of plain PyTorch modules; ``forward(x, g) -> (out, alpha)``,
    x (B, Cx, *S), g (B, Cg, *Sg), out (B, Cx, *S), alpha (B, 1, *S)."""

    def __init__(self, gate: nn.Module):
        """Copies the weights of ``gate`` (a :class:`unimri.nn.AttentionGate`)."""
        super().__init__()
        d, s = gate.spatial_dims, gate.subsample
        ci, cx, cg = gate.inter_channels, gate.in_channels, gate.gating_channels
        self.mode = "bilinear" if d == 2 else "trilinear"
        self.focal = gate.focal
        self.theta = conv_nd(d, cx, ci, s, stride=s, bias=False)
        self.phi = conv_nd(d, cg, ci, 1)
        self.psi = conv_nd(d, ci, 1, 1)
        self.W = nn.Sequential(copy.deepcopy(gate.out_conv), copy.deepcopy(gate.out_norm))
        self.to(gate.theta_weight.dtype)  # before copying, so that no weight is rounded
        ones = (1,) * d
        with torch.no_grad():
            self.theta.weight.copy_(gate.theta_weight)
            self.phi.weight.copy_(gate.phi_weight.reshape(ci, cg, *ones))
            self.phi.bias.copy_(gate.phi_bias)
            self.psi.weight.copy_(gate.psi_weight.reshape(1, ci, *ones))
            self.psi.bias.copy_(gate.psi_bias.reshape(1))

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        g = x if g is None else g
        theta_x = self.theta(x)
        phi_g = F.interpolate(self.phi(g), size=theta_x.shape[2:], mode=self.mode, align_corners=False)
        a = torch.sigmoid(self.psi(F.relu(theta_x + phi_g)))
        if self.focal != 1.0:
            a = a.pow(self.focal)
        alpha = F.interpolate(a, size=x.shape[2:], mode=self.mode, align_corners=False)
        return self.W(alpha.expand_as(x) * x), alpha


class OktaySelectiveAttention(nn.Module):
    """Parallel :class:`OktayAttentionGate` s merged by 1x1 conv + norm + ReLU (Oktay's
    ``MultiAttentionBlock``); ``forward(x, g) -> (out (B, Cx, *S), alphas (B, K, *S))``."""

    def __init__(self, gates: list[OktayAttentionGate], merge: nn.Module):
        super().__init__()
        self.gates = nn.ModuleList(gates)
        self.merge = merge

    @classmethod
    def from_module(cls, sas: nn.Module) -> "OktaySelectiveAttention":
        """The same block with the weights of ``sas`` (a :class:`unimri.nn.SelectiveAttention`)."""
        return cls([OktayAttentionGate(gate) for gate in sas.gates], copy.deepcopy(sas.merge))

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        outs, alphas = zip(*(gate(x, g) for gate in self.gates))
        return self.merge(torch.cat(outs, dim=1)), torch.cat(alphas, dim=1)


def with_plain_modules(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose :class:`unimri.nn.SelectiveAttention` modules are
    replaced by :class:`OktaySelectiveAttention` with the same weights and whose conv blocks
    run batch norm and ReLU, 2x max pooling and 1x1 heads as their modules (a model as a user would build it from plain
    PyTorch modules)."""
    from unimri.nn.attention_gate import SelectiveAttention

    model = copy.deepcopy(model)
    for name, child in list(model.named_modules()):
        if hasattr(child, "fuse_norm_relu"):
            child.fuse_norm_relu = False
        if isinstance(child, (MaxPool2x2d, MaxPool2x3d, PointwiseConv2d, PointwiseConv3d)):
            child.fuse = False
        for attr, sub in list(child.named_children()):
            if isinstance(sub, SelectiveAttention):
                setattr(child, attr, OktaySelectiveAttention.from_module(sub))
    return model
