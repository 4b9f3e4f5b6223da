"""Building blocks shared by the backbones: layer factories, conv-norm-ReLU, padding,
input checks, attention insertion and weight initialisation."""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unimri.nn.layers import Conv3d
from unimri.nn.norm_act import norm_relu
from unimri.nn.pointwise import PointwiseConv2d, PointwiseConv3d
from unimri.nn.pooling import MaxPool2x2d, MaxPool2x3d

NORM_NAMES = ("batch", "instance", "group")
ATTENTION_OPTIONS = (None, "sas", "spatial", "channel", "cbam")


def check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_norm(norm: str) -> str:
    if norm not in NORM_NAMES:
        raise ValueError(f"norm must be one of {NORM_NAMES}, got {norm!r}")
    return norm


def check_attention(attention: str | None) -> str | None:
    if attention not in ATTENTION_OPTIONS:
        raise ValueError(f"attention must be one of {ATTENTION_OPTIONS}, got {attention!r}")
    return attention


def conv_cls(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d``, or unimri's :class:`~unimri.nn.layers.Conv3d` (see there)."""
    return nn.Conv2d if spatial_dims == 2 else Conv3d


def conv_transpose_cls(spatial_dims: int) -> type[nn.Module]:
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


def head_conv(spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
    """The 1x1 convolution to class scores (with bias); fused on CPU (unimri.nn.pointwise)."""
    return (PointwiseConv2d if spatial_dims == 2 else PointwiseConv3d)(in_channels, num_classes)


def max_pool(spatial_dims: int, return_indices: bool = False) -> nn.Module:
    """2x max pooling (kernel 2, stride 2); fused on CPU unless the indices are wanted."""
    if not return_indices:
        return MaxPool2x2d() if spatial_dims == 2 else MaxPool2x3d()
    cls = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
    return cls(kernel_size=2, stride=2, return_indices=True)


def norm_layer(norm: str, channels: int, spatial_dims: int) -> nn.Module:
    """BatchNorm / InstanceNorm (affine) / GroupNorm (8 groups, fewer if C is not divisible)."""
    check_norm(norm)
    if norm == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if norm == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ConvNormAct(nn.Sequential):
    """conv (no bias) -> norm -> ReLU; 'same' padding for odd kernels. (B, C_in, *S) -> (B, C_out, *S / stride)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, norm: str,
                 kernel_size: int = 3, stride: int = 1, dilation: int = 1, act: bool = True) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            conv_cls(spatial_dims)(in_channels, out_channels, kernel_size, stride=stride,
                                   padding=padding, dilation=dilation, bias=False),
            norm_layer(norm, out_channels, spatial_dims),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.fuse_norm_relu = True  # batch norm + ReLU as one op on CPU (unimri.nn.norm_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fuse_norm_relu and len(self) == 3:
            return norm_relu(self[0](x), self[1])
        return super().forward(x)


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvNormAct layers (the UNet block). (B, C_in, *S) -> (B, C_out, *S)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int, norm: str) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, spatial_dims, norm),
            ConvNormAct(out_channels, out_channels, spatial_dims, norm),
        )


def pad_to_multiple(x: torch.Tensor, multiple: int, min_cells: int = 1) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the spatial dims of (B, C, *S) at the far end up to a multiple of ``multiple``
    of at least ``min_cells * multiple``.

    If that leaves a single cell in all at the coarsest level (every padded dim equal to
    ``multiple``), the last dim is padded to ``2 * multiple``: normalisation at that level
    needs more than one value per channel (instance norm always, batch norm at batch 1).
    Returns the padded tensor and the original spatial shape (for :func:`crop_to`).
    """
    spatial = tuple(x.shape[2:])
    target = [max(s + (-s) % multiple, min_cells * multiple) for s in spatial]
    if all(t == multiple for t in target):
        target[-1] = 2 * multiple
    extra = [t - s for t, s in zip(target, spatial)]
    if not any(extra):
        return x, spatial
    pad: list[int] = []
    for e in reversed(extra):  # F.pad lists the last dim first
        pad += [0, e]
    return F.pad(x, pad), spatial


def crop_to(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Crop (B, C, *S') to (B, C, *spatial), keeping the start of each axis."""
    index = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
    return x[index]


def check_input(x: torch.Tensor, in_channels: int, spatial_dims: int, model: str) -> None:
    """Clear errors for a wrong type, rank or channel count of a model input (B, C, *S)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            f"{model}: input must be (B, {in_channels}, " + ", ".join("DHW"[3 - spatial_dims:])
            + f") for spatial_dims={spatial_dims}, got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(f"{model}: input must have in_channels={in_channels} channels (dim 1), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{model}: input must be a floating-point tensor, got dtype {x.dtype}")


def make_attention(kind: str | None, channels: int, spatial_dims: int, norm: str,
                   gating_channels: int | None = None) -> nn.Module | None:
    """An attention module from :mod:`unimri.nn` (None when ``kind`` is None).

    Only SAS is a gate (it takes a gating signal and a norm); the others are self-attention.
    """
    if kind is None:
        return None
    from unimri.nn import create_attention

    if kind == "sas":
        return create_attention(kind, channels, gating_channels=gating_channels,
                                spatial_dims=spatial_dims, norm=norm)
    return create_attention(kind, channels, spatial_dims=spatial_dims)


def apply_attention(module: nn.Module | None, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
    """Run an attention module on ``x`` (gated by ``g`` when given) and keep its output."""
    if module is None:
        return x
    out, _ = module(x, g)
    return out


def bilinear_kernel(channels: int, kernel_size: int, spatial_dims: int) -> torch.Tensor:
    """Weight (C, C, k, ..., k) of a transposed conv that upsamples each channel bilinearly/trilinearly."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    k1 = 1 - (og - center).abs() / factor
    kernel = k1
    for _ in range(spatial_dims - 1):
        kernel = kernel[..., None] * k1
    weight = torch.zeros((channels, channels) + (kernel_size,) * spatial_dims, dtype=torch.float64)
    for c in range(channels):
        weight[c, c] = kernel
    return weight.float()


def init_weights(model: nn.Module, skip_prefix: str = "attentions") -> None:
    """He (Kaiming normal, fan_out, ReLU) init for convs, unit/zero for norms, small normal for
    linear layers. Submodules under ``skip_prefix`` (the attention modules) keep their own init."""
    for name, module in model.named_modules():
        if name == skip_prefix or name.startswith(skip_prefix + "."):
            continue
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


class AttentionModules(nn.ModuleDict):
    """The attention modules of a model by position name; iterating yields the modules
    (as the earlier ``nn.ModuleList`` did), an int index the i-th module created."""

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, key: str | int) -> nn.Module:
        if isinstance(key, int):
            return list(self._modules.values())[key]
        return super().__getitem__(key)


class SegmentationModel(nn.Module):
    """Shared frame: argument checks, pad to the network's stride, crop the logits back.

    Each spatial dim is zero-padded to a multiple of the stride (see :func:`pad_to_multiple`).

    Subclasses set ``self.stride`` (the product of their downsamplings) and implement
    ``forward_padded(x (B, C_in, *S padded)) -> logits (B, num_classes, *S padded)``.
    Attention modules live in ``self.attentions``, named by where they sit (e.g.
    ``attentions.skip_level2`` in a UNet, ``attentions.aspp`` in DeepLabV3), so checkpoint
    keys say which gate a weight belongs to; empty without attention. State dicts from
    before the naming (``attentions.0``, ``attentions.1``, ... in creation order) still load.
    """

    stride: int = 1
    #: cells per axis the coarsest level needs (2 where an attention gate subsamples it)
    min_coarse_cells: int = 1

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, features: int,
                 norm: str, attention: str | None) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.features = check_positive_int(features, "features")
        self.norm = check_norm(norm)
        self.attention = check_attention(attention)
        self.attentions = AttentionModules()
        self._register_load_state_dict_pre_hook(self._rename_legacy_attention_keys)

    def add_attention(self, channels: int, gating_channels: int | None = None, *, name: str) -> str | None:
        """Create one attention module (if enabled) named ``name`` (its position in the
        network); returns the name, or None without attention."""
        module = make_attention(self.attention, channels, self.spatial_dims, self.norm, gating_channels)
        if module is None:
            return None
        if name in self.attentions:
            raise ValueError(f"attention name {name!r} is used twice in {type(self).__name__}")
        self.attentions[name] = module
        return name

    def attend(self, name: str | None, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        if name is None:
            return x
        return apply_attention(self.attentions[name], x, g if self.attention == "sas" else None)

    def encode_levels(self, x: torch.Tensor, attention: Sequence[str | None] = ()) -> list[torch.Tensor]:
        """The outputs of ``self.encoders`` (``self.pool`` between levels) of an encoder-decoder
        model, coarsest last; ``attention[level]`` re-weights that level's output first."""
        levels: list[torch.Tensor] = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))
            if level < len(attention):
                x = self.attend(attention[level], x)
            levels.append(x)
        return levels

    def upgrade_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """``state_dict`` with legacy keys ``attentions.<i>.`` renamed to ``attentions.<name>.``."""
        names = list(self.attentions.keys())
        legacy = re.compile(re.escape(prefix) + r"attentions\.(\d+)\.")
        out = {}
        for key, value in state_dict.items():
            match = legacy.match(key)
            if match and int(match.group(1)) < len(names):
                key = f"{prefix}attentions.{names[int(match.group(1))]}." + key[match.end():]
            out[key] = value
        return out

    def _rename_legacy_attention_keys(self, state_dict, prefix, *args) -> None:
        upgraded = self.upgrade_state_dict(state_dict, prefix)
        if list(upgraded) != list(state_dict):
            state_dict.clear()
            state_dict.update(upgraded)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_channels, *S) -> logits (B, num_classes, *S) for any spatial size S."""
        check_input(x, self.in_channels, self.spatial_dims, type(self).__name__)
        padded, spatial = pad_to_multiple(x, self.stride, self.min_coarse_cells)
        return crop_to(self.forward_padded(padded), spatial)
