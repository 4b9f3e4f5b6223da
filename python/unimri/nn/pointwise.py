"""1x1 convolutions with few output channels (segmentation heads) on the fused op
(``unimri::pointwise_conv``), for modules that stay ``nn.Conv2d`` / ``nn.Conv3d`` (same
parameters and state-dict keys).

:class:`PointwiseConv2d` and :class:`PointwiseConv3d` equal ``nn.Conv2d/3d(in, out, 1)``;
on contiguous CPU tensors with at most :data:`MAX_FUSED_OUT_CHANNELS` output channels they
run the C++ kernel. Under autocast the operands are cast to the autocast dtype first, as
``nn.Conv`` is. Everything else (CUDA, channels-last, wide outputs, ``fuse = False``) runs the
module's own forward.
"""
from __future__ import annotations

import torch
from torch import nn

from unimri_kernels.dispatch import fused_route, run_op
from unimri_kernels.ops.pointwise_conv import DirectPointwiseConv, pointwise_conv

# Beyond this many output channels a GEMM (oneDNN) does better than the kernel's row-by-row FMAs.
MAX_FUSED_OUT_CHANNELS = 16


def fusable_pointwise(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether the fused kernel applies to the 1x1 convolution ``conv`` of ``x``."""
    if not (conv.out_channels <= MAX_FUSED_OUT_CHANNELS and x.device.type == "cpu"
            and x.dim() == conv.spatial_dims + 2 and x.is_floating_point() and x.is_contiguous()
            and x.shape[0] > 0 and x.shape[1] == conv.in_channels):
        return False
    return fused_route(x)


def fused_pointwise(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` (B, C_out, *S) on the fused op: through a small autograd Function on the
    direct route, the custom op when compiled (:func:`unimri_kernels.dispatch.route`)."""
    weight = conv.weight.reshape(conv.out_channels, conv.in_channels)
    bias = conv.bias
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    return run_op(x, DirectPointwiseConv, pointwise_conv, x, weight, bias)


class _FusedPointwise:
    """``forward`` of the modules below: fused where :func:`fusable_pointwise` holds and
    ``fuse`` (attribute, settable) is on, else the ``nn.Conv`` forward."""

    spatial_dims: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse and fusable_pointwise(self, x):
            return fused_pointwise(self, x)
        return super().forward(x)


class PointwiseConv2d(_FusedPointwise, nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1, bias=bias)``, fused on CPU."""

    spatial_dims = 2

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)
        self.fuse = True


class PointwiseConv3d(_FusedPointwise, nn.Conv3d):
    """``nn.Conv3d(in_channels, out_channels, 1, bias=bias)``, fused on CPU."""

    spatial_dims = 3

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)
        self.fuse = True
