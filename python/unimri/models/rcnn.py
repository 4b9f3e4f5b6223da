"""RCNN: the recurrent residual convolutional U-Net (R2U-Net, Alom et al. 2018), recurrence t = 2,
with optional attention in the feature extractor (each encoder level's output)."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvNormAct, SegmentationModel, check_positive_int, conv_cls, head_conv, init_weights, max_pool


class RecurrentConv(nn.Module):
    """Recurrent convolutional layer: one shared 3x3 ConvNormAct applied t + 1 times,
    ``h_0 = f(x)``, ``h_k = f(x + h_{k-1})``. (B, C, *S) -> (B, C, *S)."""

    def __init__(self, channels: int, spatial_dims: int, norm: str, t: int = 2) -> None:
        super().__init__()
        self.t = check_positive_int(t, "t")
        self.conv = ConvNormAct(channels, channels, spatial_dims, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        for _ in range(self.t):
            h = self.conv(x + h)
        return h


class RRCNNBlock(nn.Module):
    """Recurrent residual block: 1x1 conv to C_out, two RecurrentConv layers, residual sum.
    (B, C_in, *S) -> (B, C_out, *S)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, norm: str, t: int = 2) -> None:
        super().__init__()
        self.project = conv_cls(spatial_dims)(in_channels, out_channels, 1)
        self.recurrent = nn.Sequential(RecurrentConv(out_channels, spatial_dims, norm, t),
                                       RecurrentConv(out_channels, spatial_dims, norm, t))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(x)
        return x + self.recurrent(x)


class UpConv(nn.Sequential):
    """Nearest x2 upsampling then ConvNormAct (R2U-Net's up-convolution). (B, C_in, *S) -> (B, C_out, 2·S)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, norm: str) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"),
                         ConvNormAct(in_channels, out_channels, spatial_dims, norm))


class RCNN(SegmentationModel):
    """R2U-Net: a U-Net whose blocks are recurrent residual convolutional blocks.

    Args:
        spatial_dims, in_channels, num_classes, features, norm: as :class:`UNet`.
        attention: None, "sas", "spatial", "channel" or "cbam"; applied to the output of
            every encoder level but the deepest (the feature extractor), before it feeds
            the skip and the next level. SAS self-gates there (no coarser signal exists yet).
        depth: number of downsamplings.
        recurrence: recurrence steps t of each recurrent layer (paper: 2).

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, features: int = 16,
                 norm: str = "batch", attention: str | None = None, depth: int = 4, recurrence: int = 2) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, features, norm, attention)
        self.depth = check_positive_int(depth, "depth")
        self.recurrence = check_positive_int(recurrence, "recurrence")
        self.stride = 2 ** depth
        widths = [features * 2 ** level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            RRCNNBlock(in_channels if level == 0 else widths[level - 1], widths[level], spatial_dims, norm, recurrence)
            for level in range(depth + 1)
        )
        self.pool = max_pool(spatial_dims)
        self.ups = nn.ModuleList(UpConv(widths[level + 1], widths[level], spatial_dims, norm) for level in range(depth))
        self.decoders = nn.ModuleList(RRCNNBlock(2 * widths[level], widths[level], spatial_dims, norm, recurrence)
                                      for level in range(depth))
        self.feature_attention = [self.add_attention(widths[level], name=f"encoder_level{level}") for level in range(depth)]
        self.head = head_conv(spatial_dims, widths[0], num_classes)
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encode_levels(x, self.feature_attention)
        x = skips.pop()
        for level in reversed(range(self.depth)):
            x = self.decoders[level](torch.cat([skips[level], self.ups[level](x)], dim=1))
        return self.head(x)
