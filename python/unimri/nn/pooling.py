"""Max pooling with kernel 2 and stride 2 on the fused op (``unimri::max_pool2x``), for modules
that stay ``nn.MaxPool2d`` / ``nn.MaxPool3d`` (no state: checkpoints unchanged).

:class:`MaxPool2x2d` and :class:`MaxPool2x3d` (subclasses, same settings) equal ``nn.MaxPool2d(2)`` / ``nn.MaxPool3d(2)``;
on contiguous CPU tensors they run the C++ kernel (vectorised; only x saved for backward).
Everything else (CUDA, channels-last, ``fuse = False``) runs the module's own forward.
"""
from __future__ import annotations

import torch
from torch import nn

from unimri_kernels.dispatch import fused_route, run_op
from unimri_kernels.ops.max_pool import DirectMaxPool2x, max_pool2x


def fusable_pool(x: torch.Tensor, spatial_dims: int) -> bool:
    """Whether the fused kernel applies to ``x`` for 2x pooling over ``spatial_dims`` dims."""
    if not (x.device.type == "cpu" and x.dim() == spatial_dims + 2 and x.is_floating_point()
            and x.is_contiguous() and x.shape[0] * x.shape[1] > 0 and min(x.shape[2:]) >= 2):
        return False
    return fused_route(x)


def fused_pool2x(x: torch.Tensor) -> torch.Tensor:
    """The fused 2x max pooling of x (B, C, *S) (see :func:`fusable_pool`): the C++ op through a
    small autograd Function on the direct route, the custom op when compiled
    (:func:`unimri_kernels.dispatch.route`)."""
    return run_op(x, DirectMaxPool2x, max_pool2x, x)


class _FusedPool2x:
    """``forward`` of the 2x max-pool modules below: fused where :func:`fusable_pool` holds and
    ``fuse`` (attribute, settable) is on, else the ``nn.MaxPool`` forward."""

    spatial_dims: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse and fusable_pool(x, self.spatial_dims):
            return fused_pool2x(x)
        return super().forward(x)


class MaxPool2x2d(_FusedPool2x, nn.MaxPool2d):
    """``nn.MaxPool2d(kernel_size=2, stride=2)``, fused on CPU."""

    spatial_dims = 2

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)
        self.fuse = True


class MaxPool2x3d(_FusedPool2x, nn.MaxPool3d):
    """``nn.MaxPool3d(kernel_size=2, stride=2)``, fused on CPU."""

    spatial_dims = 3

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)
        self.fuse = True
