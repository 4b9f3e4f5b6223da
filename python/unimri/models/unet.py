"""UNet (Ronneberger et al. 2015) with optional attention on the skip connections
(Oktay et al. 2018: each skip is gated by the coarser decoder level)."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import (DoubleConv, SegmentationModel, check_positive_int, conv_transpose_cls, head_conv,
                     init_weights, max_pool)


class UNet(SegmentationModel):
    """UNet: ``depth`` max-pool downsamplings, widths ``features · 2^level``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output channels (logits).
        features: width of the first level (the smp/MONAI "channels[0]").
        norm: "batch", "instance" or "group".
        attention: None, "sas", "spatial", "channel" or "cbam"; applied to each skip
            connection before concatenation, SAS gated by the decoder feature one level
            coarser (before its upsampling).
        depth: number of downsamplings (input padded to a multiple of ``2**depth``).

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, features: int = 32,
                 norm: str = "batch", attention: str | None = None, depth: int = 4) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, features, norm, attention)
        self.depth = check_positive_int(depth, "depth")
        self.stride = 2 ** depth
        widths = [features * 2 ** level for level in range(depth + 1)]
        self.encoders = nn.ModuleList(
            DoubleConv(in_channels if level == 0 else widths[level - 1], widths[level], spatial_dims, norm)
            for level in range(depth + 1)
        )
        self.pool = max_pool(spatial_dims)
        up = conv_transpose_cls(spatial_dims)
        self.ups = nn.ModuleList(up(widths[level + 1], widths[level], 2, stride=2) for level in range(depth))
        self.decoders = nn.ModuleList(DoubleConv(2 * widths[level], widths[level], spatial_dims, norm)
                                      for level in range(depth))
        self.skip_attention = [self.add_attention(widths[level], gating_channels=widths[level + 1],
                                                  name=f"skip_level{level}")
                               for level in range(depth)]
        self.head = head_conv(spatial_dims, widths[0], num_classes)
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encode_levels(x)
        x = skips.pop()
        for level in reversed(range(self.depth)):
            skip = self.attend(self.skip_attention[level], skips[level], x)
            x = self.decoders[level](torch.cat([skip, self.ups[level](x)], dim=1))
        return self.head(x)
