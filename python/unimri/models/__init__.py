"""Segmentation backbones with optional selective attention: UNet, FCN, RCNN (R2U-Net),
SegNet and DeepLabV3, for 2D and 3D inputs of any size.

Every model takes ``(spatial_dims=2, in_channels=1, num_classes=2, features=<width>,
norm="batch", attention=None, ...)`` and maps (B, in_channels, *S) to logits
(B, num_classes, *S). ``create_model(name, **kwargs)`` builds one by name.
"""
from __future__ import annotations

from torch import nn

from .blocks import ATTENTION_OPTIONS, NORM_NAMES, SegmentationModel
from .deeplabv3 import DeepLabV3
from .fcn import FCN
from .rcnn import RCNN
from .segnet import SegNet
from .unet import UNet

_MODELS: dict[str, type[SegmentationModel]] = {
    "unet": UNet,
    "fcn": FCN,
    "rcnn": RCNN,
    "segnet": SegNet,
    "deeplabv3": DeepLabV3,
}
MODEL_NAMES: tuple[str, ...] = tuple(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a backbone by name (case-insensitive): one of ``MODEL_NAMES``.

    ``kwargs`` go to the model's constructor, e.g.
    ``create_model("unet", spatial_dims=3, num_classes=3, features=16, attention="sas")``.
    """
    if not isinstance(name, str) or name.lower() not in _MODELS:
        raise ValueError(f"model name must be one of {MODEL_NAMES}, got {name!r}")
    return _MODELS[name.lower()](**kwargs)


__all__ = ["ATTENTION_OPTIONS", "MODEL_NAMES", "NORM_NAMES", "DeepLabV3", "FCN", "RCNN", "SegNet",
           "SegmentationModel", "UNet", "create_model"]
