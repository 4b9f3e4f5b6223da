"""Pure-PyTorch reference of ``unimri::sas_head``: the official selective-attention head in
training mode, gate by gate.

For x (B, C, *S), attention maps alpha (B, K, *S), per-gate 1x1 weights w (K, C, C), batch-norm
affine parameters gamma, beta (K, C) and merge weights (C_out, K, C):
``u_k = BN_k(W_k (alpha_k * x))`` with batch statistics (biased variance, ``eps``), and
``P = sum_k merge[:, k] u_k`` (the merge 1x1 convolution of the concatenated ``u_k``).
Returns ``(P, mean, var)`` with the batch mean and biased variance (K, C) of ``W_k y_k``.
Differentiable with plain autograd, float64-capable.
"""
from __future__ import annotations

import torch


def sas_head_reference(x: torch.Tensor, alpha: torch.Tensor, w: torch.Tensor, gamma: torch.Tensor,
                       beta: torch.Tensor, merge: torch.Tensor, eps: float = 1e-5
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dims = [0, *range(2, x.dim())]
    view = (1, -1, *(1,) * (x.dim() - 2))
    out, means, variances = 0, [], []
    for k in range(alpha.shape[1]):
        y = alpha[:, k:k + 1] * x
        z = torch.einsum("ij,bj...->bi...", w[k].to(x.dtype), y)
        mean = z.mean(dims)
        var = z.var(dims, unbiased=False)
        u = (z - mean.reshape(view)) * torch.rsqrt(var + eps).reshape(view)
        u = u * gamma[k].to(x.dtype).reshape(view) + beta[k].to(x.dtype).reshape(view)
        out = out + torch.einsum("oi,bi...->bo...", merge[:, k].to(x.dtype), u)
        means.append(mean)
        variances.append(var)
    return out, torch.stack(means), torch.stack(variances)
