"""DeepLabV3 (Chen et al. 2017): dilated residual encoder and atrous spatial pyramid pooling
(ASPP) with image-level pooling, output stride 8 or 16; optional attention inside the ASPP."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvNormAct, SegmentationModel, conv_cls, head_conv, init_weights, norm_layer


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1 projection shortcut), with dilation.
    (B, C_in, *S) -> (B, C_out, *S / stride)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, norm: str,
                 stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, spatial_dims, norm, stride=stride, dilation=dilation)
        self.conv2 = ConvNormAct(out_channels, out_channels, spatial_dims, norm, dilation=dilation, act=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvNormAct(in_channels, out_channels, spatial_dims, norm, kernel_size=1,
                                        stride=stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ImagePooling(nn.Module):
    """ASPP image-level branch: global average pool, 1x1 conv, ReLU, broadcast back.
    (B, C_in, *S) -> (B, C_out, *S). No norm layer: it would see one value per channel and
    case, which breaks batch norm at batch size 1 and makes instance norm zero."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.conv = conv_cls(spatial_dims)(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
        out = F.relu(self.conv(pooled))
        return out.expand(-1, -1, *x.shape[2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1 conv, three 3x3 atrous convs, image pooling,
    concatenated and projected (1x1 conv, norm, ReLU), then dropout. ``pyramid`` stops
    before the dropout so that a model can insert attention there.
    (B, C_in, *S) -> (B, C_out, *S)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, norm: str,
                 rates: Sequence[int], dropout: float = 0.1) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, spatial_dims, norm, kernel_size=1)]
        branches += [ConvNormAct(in_channels, out_channels, spatial_dims, norm, dilation=r) for r in rates]
        branches.append(ImagePooling(in_channels, out_channels, spatial_dims))
        self.branches = nn.ModuleList(branches)
        self.project = ConvNormAct(len(branches) * out_channels, out_channels, spatial_dims, norm, kernel_size=1)
        self.dropout = (nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d)(dropout)

    def pyramid(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.pyramid(x))


class DeepLabV3(SegmentationModel):
    """DeepLabV3 on a dilated ResNet (basic blocks; ResNet-18 layout by default).

    Args:
        spatial_dims, in_channels, num_classes, norm: as :class:`UNet`.
        features: stem width; the four residual layers use 1, 2, 4, 8 times it and the
            ASPP ``8·features`` (ResNet-18 + DeepLabV3: 64 and 256).
        attention: None, "sas", "spatial", "channel" or "cbam"; inside the ASPP on the
            projected pyramid (SAS gated by the backbone features).
        output_stride: 16 (layer4 dilated by 2, ASPP rates 6/12/18) or 8 (layers 3/4
            dilated by 2/4, rates 12/24/36).
        layers: residual blocks per layer.

    Logits are upsampled (bi/trilinear, align_corners=False) from the output stride back
    to the input size. Input padded to a multiple of ``output_stride`` (with SAS, at least
    twice it per axis: the gate subsamples the ASPP grid by 2).
    Shapes: (B, in_channels, *S) -> (B, num_classes, *S).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, features: int = 32,
                 norm: str = "batch", attention: str | None = None, output_stride: int = 16,
                 layers: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__(spatial_dims, in_channels, num_classes, features, norm, attention)
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
        if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"layers must be four positive ints (blocks per residual layer), got {layers!r}")
        self.stride = output_stride
        if attention == "sas":  # the gate subsamples the output-stride grid by 2 per axis
            self.min_coarse_cells = 2
        # (stride, dilation) of layers 1-4; the stem brings stride 4.
        plan = [(1, 1), (2, 1), (2, 1), (1, 2)] if output_stride == 16 else [(1, 1), (2, 1), (1, 2), (1, 4)]
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        self.stem = nn.Sequential(
            ConvNormAct(in_channels, features, spatial_dims, norm, stride=2),
            ConvNormAct(features, features, spatial_dims, norm),
            pool(kernel_size=3, stride=2, padding=1),
        )
        blocks, channels = [], features
        for layer, (n_blocks, (stride, dilation)) in enumerate(zip(layers, plan)):
            width = features * 2 ** layer
            for b in range(n_blocks):
                blocks.append(BasicBlock(channels, width, spatial_dims, norm, stride if b == 0 else 1, dilation))
                channels = width
        self.encoder = nn.Sequential(*blocks)
        aspp_ch = features * 8
        self.aspp = ASPP(channels, aspp_ch, spatial_dims, norm, rates)
        self.aspp_attention = self.add_attention(aspp_ch, gating_channels=channels, name="aspp")
        self.head = nn.Sequential(ConvNormAct(aspp_ch, aspp_ch, spatial_dims, norm),
                                  head_conv(spatial_dims, aspp_ch, num_classes))
        self._mode = "bilinear" if spatial_dims == 2 else "trilinear"
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        features = self.encoder(self.stem(x))
        pyramid = self.attend(self.aspp_attention, self.aspp.pyramid(features), features)
        logits = self.head(self.aspp.dropout(pyramid))
        return F.interpolate(logits, size=size, mode=self._mode, align_corners=False)
