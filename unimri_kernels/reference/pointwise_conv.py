"""Pure-PyTorch reference of ``unimri::pointwise_conv``: a 1x1 convolution.

``out[b, o, ...] = sum_i weight[o, i] x[b, i, ...] + bias[o]`` for x (B, C_in, *S), weight
(C_out, C_in), bias (C_out,) or None: ``F.conv2d(x, weight[..., None, None], bias)`` in 2D.
Differentiable with plain autograd, float64-capable.
"""
from __future__ import annotations

import torch


def pointwise_conv_reference(x: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor | None) -> torch.Tensor:
    """x (B, C_in, *S) -> (B, C_out, *S)."""
    out = torch.einsum("oi,bi...->bo...", weight.to(x.dtype), x)
    if bias is not None:
        out = out + bias.to(x.dtype).reshape(1, -1, *(1,) * (x.dim() - 2))
    return out
