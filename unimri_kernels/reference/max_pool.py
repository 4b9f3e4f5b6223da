"""Pure-PyTorch reference of ``unimri::max_pool2x``: max pooling with kernel 2 and stride 2.

``F.max_pool2d(x, 2)`` for x (B, C, H, W), ``F.max_pool3d(x, 2)`` for x (B, C, D, H, W): each
output is the maximum of its window (NaN if the window holds one); trailing odd rows, columns
or slices are dropped. Its gradient goes to the element ``nn.MaxPool`` picks: the first
maximum in (d, h, w) order, or the last NaN. Differentiable with plain autograd,
float64-capable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def max_pool2x_reference(x: torch.Tensor) -> torch.Tensor:
    """x (B, C, *S) with 2 or 3 spatial dims -> (B, C, *(S // 2))."""
    return (F.max_pool2d if x.dim() == 4 else F.max_pool3d)(x, 2)
