"""Small building blocks shared by the attention modules: N-d convs and named norms."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

NORM_NAMES = ("batch", "instance", "group")


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise ``ValueError``."""
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def check_channels(name: str, value: int) -> int:
    """Return ``value`` if it is a positive int, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state-dict keys) that runs in float32 under CPU bf16
    autocast when its input x (B, C, D, H, W) has depth D = 2, and returns bf16 as autocast
    would. There PyTorch's own CPU bf16 Conv3d weight gradient is wrong (relative errors up to
    1e36, and NaN; measured by ``benchmarks/conv3d_bf16.py``), and 3D networks reach D = 2 at
    their deepest levels on volumes with few slices. The grid is tiny, so float32 costs little."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dim() == 5 and x.shape[2] == 2
                and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float()).to(torch.bfloat16)
        return super().forward(x)


def conv_nd(spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 1,
            stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Module:
    """``nn.Conv2d`` or :class:`Conv3d` for ``spatial_dims`` 2 or 3."""
    conv = nn.Conv2d if check_spatial_dims(spatial_dims) == 2 else Conv3d
    return conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)


def create_norm(norm: str | None, channels: int, spatial_dims: int = 2) -> nn.Module:
    """Norm layer by name: "batch", "instance" (affine) or "group" (gcd(channels, 8) groups);
    ``None`` or "none" gives ``nn.Identity``."""
    check_spatial_dims(spatial_dims)
    if norm is None or norm == "none":
        return nn.Identity()
    if norm == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    raise ValueError(f"norm must be one of {NORM_NAMES} or None, got {norm!r}")


def check_input(name: str, t, spatial_dims: int, channels: int | None = None) -> None:
    """Raise if ``t`` is not a (B, C, *S) tensor with ``spatial_dims`` spatial axes and
    ``channels`` channels (when given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != spatial_dims + 2:
        layout = "(B, C, H, W)" if spatial_dims == 2 else "(B, C, D, H, W)"
        raise ValueError(f"{name} must be {layout} for spatial_dims={spatial_dims}, "
                         f"got shape {tuple(t.shape)}")
    if channels is not None and t.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got shape {tuple(t.shape)}")
