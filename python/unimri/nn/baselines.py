"""The attention baselines the paper compares against: spatial, channel (squeeze-excitation)
and CBAM (channel then spatial; Woo et al. 2018). 2D and 3D.

They attend from ``x`` alone: ``forward(x, g=None)`` accepts ``g`` for the calling
convention of :class:`unimri.nn.AttentionGate` and ignores it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from unimri.nn.layers import check_channels, check_input, check_spatial_dims, conv_nd

POOLS = ("avg", "max")


class SpatialAttention(nn.Module):
    """CBAM spatial attention: ``map = sigmoid(conv_k([mean_c x, max_c x]))``.

    ``forward(x (B, C, *S), g=None) -> (map * x, map (B, 1, *S))``.
    """

    def __init__(self, in_channels: int, spatial_dims: int = 2, kernel_size: int = 7):
        super().__init__()
        self.in_channels = check_channels("in_channels", in_channels)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if check_channels("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = conv_nd(spatial_dims, 2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("x", x, self.spatial_dims, self.in_channels)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        attn = torch.sigmoid(self.conv(pooled))
        return x * attn, attn


class ChannelAttention(nn.Module):
    """Squeeze-excitation channel attention (Hu et al. 2018); with ``pools=("avg", "max")``
    the shared-MLP channel gate of CBAM.

    ``forward(x (B, C, *S), g=None) -> (w * x, w (B, C, 1, ..., 1))``,
    ``w = sigmoid(sum over pools of MLP(pool(x)))``, MLP = C -> max(1, C // reduction) -> C.
    """

    def __init__(self, in_channels: int, spatial_dims: int = 2, reduction: int = 16,
                 pools: tuple[str, ...] = ("avg",)):
        super().__init__()
        self.in_channels = check_channels("in_channels", in_channels)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        check_channels("reduction", reduction)
        if not pools or any(p not in POOLS for p in pools):
            raise ValueError(f"pools must be a non-empty subset of {POOLS}, got {pools!r}")
        self.pools = tuple(pools)
        hidden = max(1, in_channels // reduction)
        self.mlp = nn.Sequential(
            conv_nd(spatial_dims, in_channels, hidden, 1),
            nn.ReLU(inplace=True),
            conv_nd(spatial_dims, hidden, in_channels, 1),
        )

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("x", x, self.spatial_dims, self.in_channels)
        axes = tuple(range(2, x.dim()))
        logits = None
        for pool in self.pools:
            pooled = x.mean(dim=axes, keepdim=True) if pool == "avg" else x.amax(dim=axes, keepdim=True)
            branch = self.mlp(pooled)
            logits = branch if logits is None else logits + branch
        attn = torch.sigmoid(logits)
        return x * attn, attn


class CBAM(nn.Module):
    """Convolutional block attention module: channel attention (avg + max pooled shared MLP)
    followed by spatial attention.

    ``forward(x (B, C, *S), g=None) -> (out (B, C, *S), spatial map (B, 1, *S))``.
    """

    def __init__(self, in_channels: int, spatial_dims: int = 2, reduction: int = 16,
                 kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelAttention(in_channels, spatial_dims, reduction, pools=POOLS)
        self.spatial = SpatialAttention(in_channels, spatial_dims, kernel_size)

    def forward(self, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.channel(x)
        return self.spatial(x)
