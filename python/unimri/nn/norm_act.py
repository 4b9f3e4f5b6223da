"""Batch norm followed by ReLU on the fused op (``unimri::batch_norm_relu``), for modules
that keep their ``nn.BatchNorm`` (parameters, buffers and state-dict keys unchanged).

:func:`norm_relu` equals ``relu(norm(x))`` for any norm module; for ``nn.BatchNorm2d`` /
``nn.BatchNorm3d`` on contiguous CPU tensors it runs the C++ kernel (fewer passes over the
activations, only x saved for backward) and updates the running statistics as the module
itself would. Everything else (CUDA, channels-last, other norms) runs the modules.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from unimri_kernels.dispatch import fused_route, route
from unimri_kernels.ops.batch_norm_relu import DirectBatchNormRelu, batch_norm_relu

_FUSED_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def update_running_stats(norms: list[_BatchNorm], mean: torch.Tensor, var: torch.Tensor,
                         n: int) -> None:
    """What ``nn.BatchNorm`` does in training, for K norms and their batch statistics
    ``mean``/``var`` (K, C) (biased variance) over ``n`` values per channel: count the batch and
    move the running statistics towards the batch mean and the unbiased batch variance."""
    unbiased = var * (n / (n - 1))
    for k, bn in enumerate(norms):
        bn.num_batches_tracked.add_(1)
        f = bn.momentum if bn.momentum is not None else \
            1.0 / bn.num_batches_tracked.to(bn.running_mean.dtype)
        bn.running_mean.lerp_(mean[k].to(bn.running_mean.dtype), f)
        bn.running_var.lerp_(unbiased[k].to(bn.running_var.dtype), f)


def fusable(x: torch.Tensor, norm: nn.Module) -> bool:
    """Whether :func:`norm_relu` runs the fused kernel for this input and norm."""
    if not (type(norm) in _FUSED_NORMS and x.device.type == "cpu" and x.dim() >= 3
            and x.is_contiguous() and x.shape[1] == norm.num_features):
        return False
    return fused_route(x)


def norm_relu(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``relu(norm(x))`` (B, C, *S), fused for batch norm on CPU (see the module docstring)."""
    if not fusable(x, norm):
        return F.relu(norm(x), inplace=True)
    batch_stats = norm.training or norm.running_mean is None
    n = x.numel() // x.shape[1]
    if norm.training and n < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                         f"{tuple(x.shape)}")
    track = norm.training and norm.track_running_stats
    if route(x) == "direct":
        # the C++ op directly, running statistics updated inside (less per-call overhead)
        factor = 0.0
        if track:
            norm.num_batches_tracked.add_(1)
            factor = norm.momentum if norm.momentum is not None else \
                1.0 / float(norm.num_batches_tracked)
        given = (norm.running_mean, norm.running_var) if track or not batch_stats else (None, None)
        return DirectBatchNormRelu.apply(x, norm.weight, norm.bias, *given, batch_stats, factor,
                                        float(norm.eps))
    given = (None, None) if batch_stats else (norm.running_mean, norm.running_var)
    out, mean, var = batch_norm_relu(x, norm.weight, norm.bias, *given, norm.eps)
    if track:
        update_running_stats([norm], mean[None], var[None], n)
    return out
