"""Loss functions for class-imbalanced segmentation, all on one fused op.

``UnifiedFocalLoss`` (asymmetric by default, ``symmetric=True`` for the symmetric
variant), its parts ``AsymmetricFocalLoss`` and ``AsymmetricFocalTverskyLoss``, and the
losses the paper compares: ``CrossEntropyLoss``, ``FocalLoss``, ``DiceLoss``,
``TverskyLoss``, ``FocalTverskyLoss``, ``ComboLoss``, ``DiceFocalLoss``. All take logits
(B, C, *S) and targets as indices or one-hot/soft maps; see :mod:`unimri.losses._base`.
"""
from __future__ import annotations

from torch import nn

from unimri.losses._base import FusedSegmentationLoss
from unimri.losses.classic import (ComboLoss, CrossEntropyLoss, DiceFocalLoss, DiceLoss, FocalLoss,
                                   FocalTverskyLoss, TverskyLoss)
from unimri.losses.unified import AsymmetricFocalLoss, AsymmetricFocalTverskyLoss, UnifiedFocalLoss

_REGISTRY: dict[str, type[FusedSegmentationLoss]] = {
    "ce": CrossEntropyLoss,
    "focal": FocalLoss,
    "dice": DiceLoss,
    "tversky": TverskyLoss,
    "focal_tversky": FocalTverskyLoss,
    "combo": ComboLoss,
    "dice_focal": DiceFocalLoss,
    "asymmetric_focal": AsymmetricFocalLoss,
    "asymmetric_focal_tversky": AsymmetricFocalTverskyLoss,
    "unified": UnifiedFocalLoss,
}
_ALIASES = {"cross_entropy": "ce", "crossentropy": "ce", "unified_focal": "unified",
            "focaltversky": "focal_tversky", "dicefocal": "dice_focal"}
LOSS_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def create_loss(name: str, **kwargs) -> nn.Module:
    """Build a loss by name (one of :data:`LOSS_NAMES`; '-' and '_' are interchangeable)."""
    if not isinstance(name, str):
        raise TypeError(f"loss name must be a str, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    return _REGISTRY[key](**kwargs)


__all__ = ["AsymmetricFocalLoss", "AsymmetricFocalTverskyLoss", "ComboLoss", "CrossEntropyLoss",
           "DiceFocalLoss", "DiceLoss", "FocalLoss", "FocalTverskyLoss", "FusedSegmentationLoss",
           "LOSS_NAMES", "TverskyLoss", "UnifiedFocalLoss", "create_loss"]
