"""FCN-8s (Long et al. 2015): VGG-style encoder, class scores fused from stride 32, 16 and 8,
with optional attention in the decoder on the pool4 / pool3 features before they are scored."""
from __future__ import annotations

import torch
from torch import nn

from .blocks import (ConvNormAct, SegmentationModel, bilinear_kernel, conv_transpose_cls, head_conv,
                     init_weights, max_pool)

# Convolutions per VGG-16 stage and each stage's width as a multiple of ``features``.
_VGG_STAGES = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))


def vgg_stage(in_channels: int, out_channels: int, convs: int, spatial_dims: int, norm: str) -> nn.Sequential:
    """``convs`` 3x3 ConvNormAct layers. (B, C_in, *S) -> (B, C_out, *S)."""
    return nn.Sequential(*(ConvNormAct(in_channels if i == 0 else out_channels, out_channels, spatial_dims, norm)
                           for i in range(convs)))


class FCN(SegmentationModel):
    """FCN-8s with a (batch-normalised) VGG-16 encoder.

    Args:
        spatial_dims, in_channels, num_classes, norm: as :class:`UNet`.
        features: width of the first VGG stage (VGG-16: 64); stages use 1, 2, 4, 8, 8 times it
            and the fc6/fc7 convolutions 16 times it.
        attention: None, "sas", "spatial", "channel" or "cbam"; in the decoder, on the
            pool4 and pool3 features before they are scored (SAS gated by fc7 for pool4
            and by the pool4 features for pool3).
        dropout: dropout after fc6 and fc7 (FCN: 0.5).

    Decoder: score(fc7) x2 (+ score(pool4)) x2 (+ score(pool3)) x8, transposed convs
    initialised to bilinear upsampling (learnable). The input is padded to a multiple of 32.
    Shapes: (B, in_channels, *S) -> (B, num_classes, *S).
    """

    stride = 32

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, features: int = 32,
                 norm: str = "batch", attention: str | None = None, dropout: float = 0.5) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, features, norm, attention)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        up = conv_transpose_cls(spatial_dims)
        drop = nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d
        stages, channels = [], in_channels
        for convs, mult in _VGG_STAGES:
            stages.append(vgg_stage(channels, features * mult, convs, spatial_dims, norm))
            channels = features * mult
        self.stages = nn.ModuleList(stages)
        self.pool = max_pool(spatial_dims)
        pool3_ch, pool4_ch, fc_ch = features * 4, features * 8, features * 16
        self.fc = nn.Sequential(
            ConvNormAct(channels, fc_ch, spatial_dims, norm, kernel_size=3), drop(dropout),
            ConvNormAct(fc_ch, fc_ch, spatial_dims, norm, kernel_size=1), drop(dropout),
        )
        self.score_fr = head_conv(spatial_dims, fc_ch, num_classes)
        self.score_pool4 = head_conv(spatial_dims, pool4_ch, num_classes)
        self.score_pool3 = head_conv(spatial_dims, pool3_ch, num_classes)
        self.up2_fr = up(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
        self.up2_pool4 = up(num_classes, num_classes, 4, stride=2, padding=1, bias=False)
        self.up8 = up(num_classes, num_classes, 16, stride=8, padding=4, bias=False)
        self.pool4_attention = self.add_attention(pool4_ch, gating_channels=fc_ch, name="pool4")
        self.pool3_attention = self.add_attention(pool3_ch, gating_channels=pool4_ch, name="pool3")
        init_weights(self)
        with torch.no_grad():
            for layer, k in ((self.up2_fr, 4), (self.up2_pool4, 4), (self.up8, 16)):
                layer.weight.copy_(bilinear_kernel(num_classes, k, spatial_dims))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        pooled: list[torch.Tensor] = []
        for stage in self.stages:
            x = self.pool(stage(x))
            pooled.append(x)
        pool3, pool4 = pooled[2], pooled[3]
        fc7 = self.fc(x)
        pool4 = self.attend(self.pool4_attention, pool4, fc7)
        pool3 = self.attend(self.pool3_attention, pool3, pool4)
        score = self.up2_fr(self.score_fr(fc7)) + self.score_pool4(pool4)
        score = self.up2_pool4(score) + self.score_pool3(pool3)
        return self.up8(score)
