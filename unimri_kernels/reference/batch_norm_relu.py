"""Pure-PyTorch reference of ``unimri::batch_norm_relu``: ``relu(batch_norm(x))``.

With ``running_mean``/``running_var`` None the statistics are the batch's (training):
mean and biased variance over every axis but the channel axis 1; otherwise the given ones
(evaluation). Returns ``(out, mean, var)``; differentiable with plain autograd (through the
batch statistics too), float64-capable.
"""
from __future__ import annotations

import torch


def batch_norm_relu_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                              running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                              eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, C, *S); weight, bias, running_mean, running_var (C,) or None."""
    dims = [0, *range(2, x.dim())]
    if running_mean is None:
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    else:
        mean, var = running_mean.to(x.dtype), running_var.to(x.dtype)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.to(x.dtype).reshape(shape)
    if bias is not None:
        y = y + bias.to(x.dtype).reshape(shape)
    return torch.relu(y), mean, var
