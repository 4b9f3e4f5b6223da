"""SegNet (Badrinarayanan et al. 2017): VGG-16 encoder, decoder upsampling by max-unpooling with
the encoder's pooling indices, optional attention on each decoder stage's output."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvNormAct, SegmentationModel, conv_cls, init_weights, max_pool
from .fcn import _VGG_STAGES, vgg_stage


class SegNet(SegmentationModel):
    """SegNet with five encoder stages (VGG-16 layout) and their mirrored decoder.

    Args:
        spatial_dims, in_channels, num_classes, norm: as :class:`UNet`.
        features: width of the first stage (SegNet: 64); stages use 1, 2, 4, 8, 8 times it.
        attention: None, "sas", "spatial", "channel" or "cbam"; applied to the output of
            each decoder stage, SAS gated by that stage's (coarser) input before unpooling.

    Decoder stage k unpools with stage k's indices, then applies as many 3x3 ConvNormAct
    as encoder stage k, the last one narrowing to stage k-1's width. Input padded to a
    multiple of 32. Shapes: (B, in_channels, *S) -> (B, num_classes, *S).
    """

    stride = 32

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, features: int = 32,
                 norm: str = "batch", attention: str | None = None) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, features, norm, attention)
        widths = [features * mult for _, mult in _VGG_STAGES]
        self.encoders = nn.ModuleList(
            vgg_stage(in_channels if k == 0 else widths[k - 1], widths[k], convs, spatial_dims, norm)
            for k, (convs, _) in enumerate(_VGG_STAGES)
        )
        self.pool = max_pool(spatial_dims, return_indices=True)
        decoders = []
        for k, (convs, _) in enumerate(_VGG_STAGES):
            out_ch = widths[k - 1] if k > 0 else widths[0]
            layers = [ConvNormAct(widths[k], widths[k], spatial_dims, norm) for _ in range(convs - 1)]
            layers.append(ConvNormAct(widths[k], out_ch, spatial_dims, norm))
            decoders.append(nn.Sequential(*layers))
        self.decoders = nn.ModuleList(decoders)
        self.decoder_attention = [
            self.add_attention(widths[k - 1] if k > 0 else widths[0], gating_channels=widths[k],
                               name=f"decoder_stage{k}")
            for k in range(len(_VGG_STAGES))
        ]
        self.head = conv_cls(spatial_dims)(widths[0], num_classes, 3, padding=1)
        init_weights(self)

    def _unpool(self, x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
        fn = F.max_unpool2d if self.spatial_dims == 2 else F.max_unpool3d
        return fn(x, indices, kernel_size=2, stride=2, output_size=size)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        indices: list[torch.Tensor] = []
        sizes: list[torch.Size] = []
        for encoder in self.encoders:
            x = encoder(x)
            sizes.append(x.shape[2:])
            x, idx = self.pool(x)
            indices.append(idx)
        for k in reversed(range(len(self.decoders))):
            coarse = x
            x = self.decoders[k](self._unpool(x, indices[k], sizes[k]))
            x = self.attend(self.decoder_attention[k], x, coarse)
        return self.head(x)
